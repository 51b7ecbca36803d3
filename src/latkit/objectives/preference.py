"""Preference optimisation: DPO / IPO on (prompt, chosen, rejected) batches, and DPO-LAT.

Batch convention: preference records ``{"prompt", "chosen", "rejected"}`` are collated with
``PromptCompletionCollator(tok, ("chosen", "rejected"), ...)``, so the two answers share the
prompt as two completion groups (rows ``[0:B]`` chosen, ``[B:2B]`` rejected, or in the order of
``batch["groups"]``) and one per-example δ covers both, as for harmful triples.

Definitions (as TRL's ``DPOTrainer``), with ``h = (π_c − π_r) − (ref_c − ref_r)`` the difference
of the policy's and the reference's log-ratios of the sequence log-probabilities:

- ``sigmoid`` (DPO, Rafailov et al. 2023; conservative DPO with label smoothing ε):
  ``−(1 − ε)·log σ(β·h) − ε·log σ(−β·h)``;
- ``ipo`` (Azar et al. 2023, eq. 17): ``(h − 1/(2β))²`` on *length-averaged* log-probs (TRL's
  choice; see :attr:`PreferenceLoss.average`).

Rewards are ``β·(π − ref)`` per answer (detached). The reference model is the same model with
its LoRA adapters disabled and no δ (or a frozen copy under full fine-tuning); its log-probs are
computed once per batch without gradients (:func:`reference_logps`).

DPO-LAT (Sheshadri et al. 2024, backdoor removal): the adversary minimises the DPO loss with
chosen and rejected *swapped* (it pushes the model to prefer the rejected, harmful answer), the
defender minimises the ordinary DPO loss under the adversary's δ (:func:`preference_losses`).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from latkit.objectives.forward import forward_logits, group_rows, run_under
from latkit.objectives.losses import cross_entropy, token_logprobs

LOSS_TYPES = ("sigmoid", "ipo")


def sequence_logps(logits, input_ids, completion_mask, offset: int = 0, average: bool = False) -> torch.Tensor:
    """Per-row log-probability of the completion tokens: ``(rows,)`` float32.

    The sum of ``log p(token)`` over the counted tokens of each row (``average=True``: their
    mean; a row without counted tokens gives 0). Same conventions as :mod:`latkit.objectives.losses`:
    logits at ``t`` predict token ``t + 1`` and ``offset`` is the first position whose logits were
    computed (:func:`latkit.objectives.forward.completion_offset`). Only counted tokens enter, so the
    result does not depend on the padding side.
    """
    lp = token_logprobs(logits, input_ids, completion_mask, offset)
    m = completion_mask[:, offset + 1 :]
    rows = m.nonzero()[:, 0]  # row of each counted token, in the order token_logprobs returns them
    out = torch.zeros(m.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)
    if average:
        out = out / m.sum(1).clamp(min=1).to(out.dtype)
    return out


def preference_logps(logits, batch: dict, offset: int = 0, *, average: bool = False,
                     chosen: str = "chosen", rejected: str = "rejected") -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` sequence log-probs, each ``(B,)``, from a collated preference batch.

    ``logits`` are those of the whole batch (all groups), e.g. from
    :func:`latkit.objectives.forward.forward_logits`.
    """
    lp = sequence_logps(logits, batch["input_ids"], batch["completion_mask"], offset, average)
    return lp[group_rows(batch, chosen)], lp[group_rows(batch, rejected)]


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """The DPO (``sigmoid``) or IPO (``ipo``) loss of per-example sequence log-probs.

    Returns ``(loss, parts)``: ``loss`` the mean over examples; ``parts`` (detached means, for
    logging) ``rewards_chosen`` = mean β(π_c − ref_c), ``rewards_rejected``, ``reward_accuracy``
    (share of examples whose chosen reward is strictly larger) and ``margins`` (mean reward gap).
    ``label_smoothing`` (conservative DPO) applies to ``sigmoid`` only.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing applies to loss_type='sigmoid' only (IPO has none)")
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    rc = beta * (pi_chosen - ref_chosen).detach()
    rr = beta * (pi_rejected - ref_rejected).detach()
    parts = {
        "rewards_chosen": rc.mean(),
        "rewards_rejected": rr.mean(),
        "reward_accuracy": (rc > rr).float().mean(),
        "margins": (rc - rr).mean(),
    }
    return losses.mean(), parts


class PreferenceLoss(BaseModel):
    """DPO/IPO on a collated preference batch, plus an optional SFT term on the chosen answer.

    total = DPO(π, ref; β, loss_type, label_smoothing) + sft · CE(chosen)

    ``sft`` is the mean token cross-entropy of the chosen answer (RPO / TRL's ``rpo_alpha``
    up to its normalisation; 0 = plain DPO). ``average``: use length-averaged sequence log-probs;
    ``None`` = TRL's default (averaged for ``ipo``, summed for ``sigmoid``).

    ``swap=True`` (the DPO-LAT adversary) exchanges the roles of chosen and rejected everywhere:
    the loss prefers the rejected answer and ``sft`` applies to it; the parts then describe the
    swapped preference (``reward_accuracy`` = share of examples where *rejected* wins).
    """

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    sft: float = Field(0.0, ge=0)
    average: bool | None = None
    chosen_group: str = "chosen"
    rejected_group: str = "rejected"

    @model_validator(mode="after")
    def _smoothing_needs_sigmoid(self):
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("label_smoothing applies to loss_type='sigmoid' only")
        return self

    @property
    def averaged(self) -> bool:
        """Whether sequence log-probs are length-averaged (resolves ``average=None``)."""
        return self.loss_type == "ipo" if self.average is None else self.average

    def logps(self, logits, batch: dict, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen, rejected)`` sequence log-probs as this loss reads them."""
        return preference_logps(logits, batch, offset, average=self.averaged,
                                chosen=self.chosen_group, rejected=self.rejected_group)

    def __call__(self, logits, batch: dict, offset: int = 0, *, reference: tuple[torch.Tensor, torch.Tensor],
                 swap: bool = False):
        """``(loss, parts)`` given the batch's logits and the reference's ``(chosen, rejected)`` log-probs."""
        pc, pr = self.logps(logits, batch, offset)
        rc, rr = reference
        if swap:
            pc, pr, rc, rr = pr, pc, rr, rc
        loss, parts = dpo_loss(pc, pr, rc, rr, self.beta, self.loss_type, self.label_smoothing)
        parts = {"dpo": loss.detach(), **parts}
        if self.sft:
            g = group_rows(batch, self.rejected_group if swap else self.chosen_group)
            ce = cross_entropy(logits[g], batch["input_ids"][g], batch["completion_mask"][g], offset)
            parts["sft"] = ce.detach()
            loss = loss + self.sft * ce
        return loss, parts

    def objective(self, reference: tuple[torch.Tensor, torch.Tensor], swap: bool = True):
        """This loss as a ``LatentAdversary.attack`` objective, ``(logits, batch, offset) -> (loss, parts)``.

        ``swap=True`` (default) is the DPO-LAT adversary: it minimises DPO with chosen and rejected
        swapped. ``reference`` comes from :func:`reference_logps` on the same batch.
        """

        def adversary_objective(logits, batch, offset=0):
            return self(logits, batch, offset, reference=reference, swap=swap)

        return adversary_objective


@torch.no_grad()
def reference_logps(model, batch: dict, loss: PreferenceLoss, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference model's ``(chosen, rejected)`` log-probs on ``batch`` (no δ, no gradients).

    ``reference``: a callable returning a context manager under which ``model`` is the reference
    (PEFT's ``disable_adapter``), a separate frozen model, or ``None`` for ``model`` itself.
    """
    if isinstance(reference, torch.nn.Module):
        model, reference = reference, None
    with reference() if reference is not None else nullcontext():
        logits, off = forward_logits(model, batch)
    return loss.logps(logits, batch, off)


def preference_losses(model, batch: dict, loss: PreferenceLoss, reference: tuple[torch.Tensor, torch.Tensor],
                      perturbation=nullcontext):
    """The defender's preference loss on ``batch`` under ``perturbation(rows)`` (DPO-LAT; clean for DPO).

    ``perturbation`` is a context-manager factory taking the row slice (as in
    :func:`latkit.objectives.defender.harmful_losses`). Returns ``(total, parts, logits, rows)``
    with detached ``logits`` of all rows, e.g. to read the adversary's loss after PGD.
    """
    rows = slice(0, batch["input_ids"].shape[0])
    logits, off = run_under(perturbation, model, batch, rows)
    total, parts = loss(logits, batch, off, reference=reference)
    return total, parts, logits.detach(), rows
