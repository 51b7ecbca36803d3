"""The protocol of a training task (see :mod:`latkit.train.tasks`): :class:`Task` and the
:class:`TaskContext` it reads. Imports nothing of the trainer, so a task module can sit anywhere
below it."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

Batch = dict
MicroBatch = tuple  # (attacked batch | None, clean batch | None): δ applies to the first one only


@dataclass
class TaskContext:
    """What a task may read of the run: the recipe, the tokenizer, the process layout, the run dir."""

    recipe: Any  # latkit.train.recipe.Recipe
    tokenizer: Any
    accelerator: Any  # accelerate.Accelerator (its device, process index / count, barrier, autocast)
    out: Path
    resume: bool = False
    log: Callable[[str], None] = print

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self):
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


class Task(ABC):
    """The protocol (with its no-op defaults). ``losses`` returns ``(total, parts, logits, rows)``:
    ``logits`` (detached) of the attacked rows ``rows`` under δ, when one forward covered them, lets
    the trainer read the adversary's final loss without another forward (``None``: it runs one)."""

    #: whether the defender's losses need the reference (the starting model: adapters off, or a frozen copy)
    needs_reference: bool = False

    def load_data(self, ctx: TaskContext, model) -> None:
        """Load / generate the data (before LoRA is applied: generation uses the starting model)."""

    def prepare_model(self, model, adapter, finetune_method: str) -> None:
        """Restrict or mark the trainable parameters (after LoRA / full fine-tuning is set up)."""

    def start(self, ctx: TaskContext) -> None:
        """Samplers and pools, once the model is ready (before a resume loads their state)."""

    @abstractmethod
    def micro_batches(self, ctx: TaskContext, model, step: int, stats: dict) -> list[MicroBatch]:
        """``recipe.train.grad_accum`` micro-batches on ``ctx.device``; ``stats`` collects metrics
        of the batch making (e.g. R2D2's GCG losses). ``model``: the unwrapped model, in eval mode."""

    def before_attack(self, model, micro: list[MicroBatch], reference, autocast) -> None:
        """Per-batch quantities the objective and the losses share (computed once, without δ)."""

    def objective(self, base, batch: Batch):
        """What the adversary minimises on ``batch``, given the recipe's ``adversary.objective``."""
        return base

    @abstractmethod
    def losses(self, model, inner, adapter, hb: Batch | None, bb: Batch | None, under, reference):
        """The defender's loss on one micro-batch: ``model`` (wrapped for DDP/FSDP) runs the forwards,
        ``under(rows)`` applies the attack's δ to those rows of ``hb``; ``inner`` / ``adapter`` are the
        unwrapped model and its block adapter; ``reference`` the starting model (see ``needs_reference``)."""

    def end_step(self) -> None:
        """After the defender's updates of an outer step."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (missing keys: a checkpoint from before that state existed)."""
