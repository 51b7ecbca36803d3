"""The defender's losses: robust refusal under δ, utility without δ."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from latkit.objectives.forward import forward_logits, group_rows, run_under
from latkit.objectives.losses import cross_entropy, kl_to_reference, unlikelihood
from latkit.objectives.preference import PreferenceLoss


class DefenderLosses(BaseModel):
    """Coefficients of the defender's loss, used exactly as given (no normalisation).

    total = toward · CE(refusal | δ) + away · UL(harmful | δ) + sft · CE(benign response)
            + kl · KL(P_base ‖ P_θ) on benign responses

    ``toward``/``away`` are computed under the adversary's δ (or clean for RT);
    ``sft``/``kl`` on benign data without δ. The base model for ``kl`` is the same
    model with LoRA adapters disabled (or a frozen copy under full fine-tuning).

    ``preference`` (DPO / DPO-LAT) replaces ``toward``/``away`` (set them to 0): on
    harmful triples the preference is refusal ≻ harmful, scored against the same
    reference model, under δ when there is an adversary.
    """

    model_config = ConfigDict(extra="forbid")

    toward: float = Field(1.0, ge=0)
    away: float = Field(0.0, ge=0)
    sft: float = Field(1.0, ge=0)
    kl: float = Field(0.0, ge=0)
    preference: PreferenceLoss | None = None

    @model_validator(mode="after")
    def _preference_replaces_toward_away(self):
        if self.preference is not None and (self.toward or self.away):
            raise ValueError("defender.preference replaces toward/away: set defender.toward: 0 and "
                             "defender.away: 0 (use preference.sft for an SFT term on the refusal)")
        return self

    def harmful_preference(self) -> PreferenceLoss | None:
        """``preference`` reading harmful triples: chosen = the refusal, rejected = the harmful answer."""
        if self.preference is None:
            return None
        return self.preference.model_copy(update={"chosen_group": "refusal", "rejected_group": "harmful"})

    @property
    def uses_harmful(self) -> bool:
        return bool(self.toward or self.away or self.preference is not None)


def harmful_losses(model, batch: dict, coefs: DefenderLosses, perturbation=nullcontext,
                   harmful_group="harmful", refusal_group="refusal"):
    """Defender losses on harmful triples under ``perturbation(rows)`` (a context manager factory, or an
    :class:`~latkit.adversary.latent.Under` that runs the forward itself: see :func:`run_under`).

    Only the rows a non-zero coefficient needs are run (one batched forward).
    Returns ``(total, parts, logits, rows)``; ``logits`` (detached) let the caller
    read the adversary's loss after PGD without another forward.
    """
    parts = {}
    if not (coefs.toward or coefs.away):
        return torch.zeros((), device=batch["input_ids"].device), parts, None, None
    r, h = group_rows(batch, refusal_group), group_rows(batch, harmful_group)
    if coefs.toward and coefs.away:
        rows = slice(min(r.start, h.start), max(r.stop, h.stop))
    else:
        rows = r if coefs.toward else h
    logits, off = run_under(perturbation, model, batch, rows)
    ids, mask = batch["input_ids"][rows], batch["completion_mask"][rows]
    base = rows.start
    total = 0.0
    if coefs.toward:
        s = slice(r.start - base, r.stop - base)
        parts["toward"] = cross_entropy(logits[s], ids[s], mask[s], off)
        total = total + coefs.toward * parts["toward"]
    if coefs.away:
        s = slice(h.start - base, h.stop - base)
        parts["away"] = unlikelihood(logits[s], ids[s], mask[s], off)
        total = total + coefs.away * parts["away"]
    return total, {k: v.detach() for k, v in parts.items()}, logits.detach(), rows


def benign_losses(model, batch: dict, coefs: DefenderLosses, reference=None):
    """SFT and KL-to-base on benign (prompt, response) batches, without δ.

    ``reference``: a callable returning a context manager under which ``model``
    behaves as the base model (e.g. PEFT's ``disable_adapter``), or a separate
    frozen model.
    """
    parts = {}
    if not (coefs.sft or coefs.kl):
        return torch.zeros((), device=batch["input_ids"].device), parts
    logits, off = forward_logits(model, batch)
    ids, mask = batch["input_ids"], batch["completion_mask"]
    total = 0.0
    if coefs.sft:
        parts["sft"] = cross_entropy(logits, ids, mask, off)
        total = total + coefs.sft * parts["sft"]
    if coefs.kl:
        if reference is None:
            raise ValueError("the kl loss needs a reference (base) model")
        with torch.no_grad():
            if isinstance(reference, torch.nn.Module):
                ref_logits, _ = forward_logits(reference, batch)
            else:
                with reference():
                    ref_logits, _ = forward_logits(model, batch)
        parts["kl"] = kl_to_reference(logits, ref_logits, ids, mask, off)
        total = total + coefs.kl * parts["kl"]
    return total, {k: v.detach() for k, v in parts.items()}
