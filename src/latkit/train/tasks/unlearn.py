"""The unlearning task: GA, RMU and generic-label training on forget / retain text, with or without
LAT (the method and its recipe section are described in :mod:`latkit.train.unlearn`)."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from latkit.data.sampler import IndexStream
from latkit.data.schemas import DataError
from latkit.objectives.adversary import TargetedObjective
from latkit.objectives.forward import forward_logits, group_rows, to_device
from latkit.objectives.losses import cross_entropy
from latkit.train.tasks.base import MicroBatch, Task, TaskContext
from latkit.train.unlearn import TextSource, UnlearnSection


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


class UnlearnTask(Task):
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
        self.needs_reference = self.cfg.method == "rmu"  # RMU's retain loss: the frozen model's activations

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
    def micro_batches(self, ctx: TaskContext, model, step: int, stats: dict) -> list[MicroBatch]:
        return [self.micro_batch(ctx.device) for _ in range(ctx.recipe.train.grad_accum)]

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

    def objective(self, base, batch=None):
        """The adversary's objective on forget batches: toward the forget text, away from the paired
        retain text (when ``base.away`` > 0)."""
        if not base.optimised:  # a random δ has no target
            return base
        if not isinstance(base, TargetedObjective):
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
        return {"unlearn": state}

    def load_state_dict(self, state: dict) -> None:
        state = state.get("unlearn")
        if not state:
            return
        self.turn = int(state["turn"])
        for s, st in zip(self.forget_streams, state["forget"]):
            s.load_state_dict(st)
        self.retain_stream.load_state_dict(state["retain"])
        if self.pair_stream is not None and "pairs" in state:
            self.pair_stream.load_state_dict(state["pairs"])
