"""Unlearning in the one trainer loop: GA, RMU and generic-label (WHP-style) training, with or without LAT.

A recipe with an ``unlearn:`` section trains on forget / retain *text* corpora
instead of harmful triples and benign pairs. Per micro-batch:

- the adversary (if any) attacks the forget batch with the targeted objective
  *toward* the forget text (it tries to bring the knowledge back through δ) and,
  when ``adversary.objective.away`` > 0, *away from* retain text: as in the
  reference's targeted WMDP collator, forget text ``i`` is paired with retain text
  ``i`` (padded to one length) and the pair shares one δ, which is pushed to make
  the forget text likely and the retain text unlikely (``away · −log(1 − p)``), so
  δ has to recall the forgotten knowledge rather than raise the likelihood of all text;
- the defender unlearns on the forget batch **under δ**:
  ``ga``: gradient ascent (−CE or unlikelihood) on the forget tokens;
  ``rmu``: MSE between the activations at ``rmu.layer`` and the corpus' random
  control vector (Li et al. 2024, WMDP); ``generic``: CE toward the user's generic
  labels (Eldan & Russinovich 2023);
- and keeps the retain corpus clean (no δ): CE on the retain text (``ga``,
  ``generic``) or, for ``rmu``, MSE to the frozen model's activations at the same layer.

``total = forget_weight · L_forget(δ) + retain_weight · L_retain``. Several forget
corpora take turns (one per outer step), each with its own RMU control vector.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from latkit.data.schemas import DataError
from latkit.objectives.forward import forward_logits, group_rows, to_device
from latkit.objectives.losses import cross_entropy
from latkit.data.sampler import IndexStream


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSource(_Strict):
    """A text corpus: ``.txt`` (one text per line) or CSV/JSONL/JSON with a ``column``.
    ``generic_column``: the generic-label version of each text (for ``method: generic``)."""

    source: str
    column: str = "text"
    generic_column: str | None = None
    limit: int | None = Field(None, ge=1)
    name: str | None = None


class RMUSettings(_Strict):
    """RMU as in the WMDP code: activations at ``layer`` (the output of that decoder block);
    the control vector ``u = rand(H)/‖·‖ · steering_coeff`` per forget corpus; under full
    fine-tuning only ``param_patterns`` of ``trainable_layers`` (default: ``layer-2 .. layer``)
    train (WMDP: layers 5-7, the MLP down-projection; alpha 1200, steering 6.5 on Zephyr-7B)."""

    layer: int = Field(7, ge=0)
    steering_coeff: float = Field(20.0, gt=0)
    trainable_layers: list[int] | None = None
    param_patterns: list[str] | None = None


class UnlearnSection(_Strict):
    forget: list[TextSource]
    retain: TextSource
    method: Literal["ga", "rmu", "generic"] = "ga"
    ga_kind: Literal["ascent", "unlikelihood"] = "ascent"
    forget_weight: float = Field(1.0, ge=0)
    retain_weight: float = Field(1.0, ge=0)
    rmu: RMUSettings = Field(default_factory=RMUSettings)
    max_length: int = Field(128, ge=4)
    seed: int = 0

    @field_validator("forget", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, dict) else v

    @field_validator("forget")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("unlearn.forget needs at least one corpus")
        names = [s.name or f"forget{i}" for i, s in enumerate(v)]
        if len(set(names)) != len(names):
            raise ValueError(f"unlearn.forget corpus names must be distinct, got {names}")
        return v

    def forget_names(self) -> list[str]:
        return [s.name or f"forget{i}" for i, s in enumerate(self.forget)]


def _load(src: TextSource, what: str) -> tuple[list[str], list[str] | None]:
    from latkit.data.loaders import load_records
    from latkit.data.sources import resolve_source
    from latkit.data.text import load_texts

    path = resolve_source(src.source)
    if src.generic_column is None:
        return load_texts(path, column=src.column, limit=src.limit), None
    rows = load_records(path, columns={"text": src.column, "generic": src.generic_column}, limit=src.limit)
    if not rows:
        raise DataError(f"unlearn.{what}: no rows in {src.source}")
    return [r["text"] for r in rows], [r["generic"] for r in rows]


class UnlearnTask:
    """Data, batches, adversary objective and defender losses of an unlearning run (see module doc)."""

    def __init__(self, recipe, tokenizer, *, rank: int = 0, world: int = 1):
        from latkit.data.text import TextCollator

        self.cfg: UnlearnSection = recipe.unlearn
        self.names = self.cfg.forget_names()
        self.forget, self.generic = [], []
        for i, src in enumerate(self.cfg.forget):
            texts, generic = _load(src, f"forget[{i}]")
            if self.cfg.method == "generic" and generic is None:
                raise DataError(f"unlearn.method: generic needs unlearn.forget[{i}].generic_column "
                                "(the generic-label version of each text)")
            self.forget.append(texts)
            self.generic.append(generic)
        self.retain, _ = _load(self.cfg.retain, "retain")
        t = recipe.train
        self.collate = TextCollator(tokenizer, self.cfg.max_length, recipe.data.padding_side)
        seed = recipe.train.seed
        self.forget_streams = [IndexStream(len(f), t.batch_size, seed + 11 * i, rank, world)
                               for i, f in enumerate(self.forget)]
        self.retain_stream = IndexStream(len(self.retain), t.benign_batch_size, seed + 1, rank, world)
        objective = recipe.adversary.objective
        # retain texts paired with the forget rows for the adversary's away term (see the module doc)
        self.pair_stream = (IndexStream(len(self.retain), t.batch_size, seed + 2, rank, world)
                            if objective.kind == "targeted" and objective.away > 0 else None)
        self.control: dict[str, torch.Tensor] = {}
        self.turn = 0

    # ------------------------------------------------------------------ setup helpers
    def prepare_model(self, model, adapter, finetune_method: str) -> list[str] | None:
        """RMU under full fine-tuning trains only the chosen layers' chosen parameters (WMDP)."""
        if self.cfg.method == "rmu":
            from latkit.objectives.unlearning import rmu_control_vectors

            rmu = self.cfg.rmu
            if rmu.layer >= adapter.num_layers:
                raise DataError(f"unlearn.rmu.layer {rmu.layer} is out of range: the model has "
                                f"{adapter.num_layers} layers")
            self.control = rmu_control_vectors(self.names, adapter.hidden_size, seed=self.cfg.seed,
                                               steering_coeff=rmu.steering_coeff)
            if finetune_method == "full":
                from latkit.objectives.unlearning import DOWN_PROJ_PATTERNS, rmu_trainable

                layers = rmu.trainable_layers or list(range(max(rmu.layer - 2, 0), rmu.layer + 1))
                return rmu_trainable(model, layers, rmu.param_patterns or DOWN_PROJ_PATTERNS)
        return None

    # ------------------------------------------------------------------ batches
    def micro_batch(self, device) -> tuple[dict, dict]:
        """The forget batch of this turn's corpus (with ``corpus`` and, for generic labels,
        ``generic_ids``) and a retain batch.

        With the adversary's away term the forget batch also holds one paired retain text
        per forget text: rows ``[0, B)`` are group ``forget``, rows ``[B, 2B)`` group
        ``retain`` (one padded length, so the pair shares δ); the defender's forget loss
        reads the ``forget`` rows only."""
        c = self.turn % len(self.forget)
        idx = self.forget_streams[c].next()
        texts = [self.forget[c][i] for i in idx]
        paired = [self.retain[i] for i in self.pair_stream.next()] if self.pair_stream is not None else []
        fb = self.collate(texts + paired)
        fb["groups"] = ("forget", "retain") if paired else ("forget",)
        fb["n_groups"] = len(fb["groups"])
        fb["corpus"] = self.names[c]
        if self.cfg.method == "generic":
            gb = self.collate([self.generic[c][i] for i in idx] + paired)
            if gb["input_ids"].shape != fb["input_ids"].shape or not torch.equal(
                    gb["attention_mask"], fb["attention_mask"]):
                raise DataError("unlearn.method: generic needs each generic text to tokenize to exactly as many "
                                "tokens as its original text (one generic label per position)")
            fb["generic_ids"] = gb["input_ids"]
        rb = self.collate([self.retain[i] for i in self.retain_stream.next()])
        rb["groups"] = ("retain",)
        return to_device(fb, device), to_device(rb, device)

    def end_step(self) -> None:
        self.turn += 1

    def objective(self, base):
        """The adversary's objective on forget batches: toward the forget text, away from the paired
        retain text (when ``base.away`` > 0)."""
        if base.kind != "targeted":
            raise ValueError(f"unlearning adversaries are targeted (toward the forget text); got {base.kind!r}")
        return base.model_copy(update={"harmful_group": "forget", "refusal_group": "retain"})

    # ------------------------------------------------------------------ losses
    def losses(self, model, inner, adapter, fb: dict, rb: dict, under, reference):
        """``(total, parts, logits, rows)``; ``logits`` are the forget batch's (under δ), when computed."""
        from latkit.objectives import unlearning as U

        cfg = self.cfg
        rows = group_rows(fb, "forget")
        parts: dict[str, torch.Tensor] = {}
        logits = None
        if cfg.method == "rmu":
            site = f"layer.{cfg.rmu.layer}"
            forget_b = {k: fb[k][rows] for k in ("input_ids", "attention_mask", "position_ids")}
            with under(rows):
                acts = U.layer_activations(model, forget_b, site, adapter=adapter)
            forget = U.rmu_forget_loss(acts, self.control[fb["corpus"]], forget_b["attention_mask"])
            acts_r = U.layer_activations(model, rb, site, adapter=adapter)
            with torch.no_grad():
                if isinstance(reference, torch.nn.Module):
                    frozen = U.layer_activations(reference, rb, site, grad=False)
                else:
                    with reference() if reference is not None else nullcontext():
                        frozen = U.layer_activations(model, rb, site, grad=False, adapter=adapter)
            retain = U.rmu_retain_loss(acts_r, frozen, rb["attention_mask"])
        else:
            with under(rows):
                logits, off = forward_logits(model, fb, rows)
            ids, mask = fb["input_ids"][rows], fb["completion_mask"][rows]
            if cfg.method == "ga":
                forget = U.gradient_ascent_loss(logits, ids, mask, off, cfg.ga_kind)
            else:
                forget = U.generic_label_loss(logits, fb["generic_ids"][rows], mask, off)
            rl, roff = forward_logits(model, rb)
            retain = cross_entropy(rl, rb["input_ids"], rb["completion_mask"], roff)
        parts["forget"], parts["retain"] = forget.detach(), retain.detach()
        total = cfg.forget_weight * forget + cfg.retain_weight * retain
        return total, parts, None if logits is None else logits.detach(), rows

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {"turn": self.turn, "forget": [s.state_dict() for s in self.forget_streams],
                 "retain": self.retain_stream.state_dict()}
        if self.pair_stream is not None:
            state["pairs"] = self.pair_stream.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.turn = int(state["turn"])
        for s, st in zip(self.forget_streams, state["forget"]):
            s.load_state_dict(st)
        self.retain_stream.load_state_dict(state["retain"])
        if self.pair_stream is not None and "pairs" in state:
            self.pair_stream.load_state_dict(state["pairs"])
