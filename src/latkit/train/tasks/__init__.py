"""Training tasks: what a run trains on and against, behind one small protocol.

The :class:`~latkit.train.trainer.Trainer` owns the loop (the adversary's attack, the defender's
optimisation, checkpoints, logging); a task owns everything that differs between methods: its data
set-up, its micro-batches, the adversary's objective on them, the defender's losses and its own
resumable state. A new method is a new :class:`Task` subclass (and a line in :func:`build_task`):

- :class:`JailbreakTask`: harmful triples (refusal under δ, toward / away) and benign pairs (SFT / KL);
- :class:`PreferenceTask`: the same data scored as refusal ≻ harmful with DPO / IPO against the
  reference model (DPO, and DPO-LAT with the ``dpo`` adversary objective);
- :class:`R2D2Task`: the harmful rows are GCG test cases from a pool updated against the current model;
- :class:`~latkit.train.tasks.recovery.RecoveryTask`: refusals trained after a harmful prefix (safety recovery);
- :class:`~latkit.train.tasks.unlearn.UnlearnTask`: forget / retain text (GA, RMU, generic labels).

The call order per outer step: :meth:`Task.micro_batches` (adversary compute), :meth:`Task.before_attack`
(defender compute, no δ), :meth:`Task.objective` for each attack, :meth:`Task.losses` for each
defender forward, :meth:`Task.end_step`.
"""
from __future__ import annotations

from latkit.train.tasks.base import MicroBatch, Task, TaskContext
from latkit.train.tasks.jailbreak import JailbreakTask, PreferenceTask, R2D2PreferenceTask, R2D2Task
from latkit.train.tasks.recovery import RecoveryTask
from latkit.train.tasks.unlearn import UnlearnTask

__all__ = ["JailbreakTask", "MicroBatch", "PreferenceTask", "R2D2PreferenceTask", "R2D2Task", "RecoveryTask", "Task",
           "TaskContext", "UnlearnTask", "build_task"]


def build_task(recipe, ctx: TaskContext) -> Task:
    """The task a recipe describes (``unlearn:`` → unlearning; else jailbreak, with DPO / R2D2 variants)."""
    if recipe.unlearn is not None:
        return UnlearnTask(recipe, ctx.tokenizer, rank=ctx.rank, world=ctx.world)
    if recipe.recovery is not None:
        return RecoveryTask(recipe)
    preference, r2d2 = recipe.defender.preference is not None, recipe.r2d2 is not None
    cls = {(False, False): JailbreakTask, (True, False): PreferenceTask,
           (False, True): R2D2Task, (True, True): R2D2PreferenceTask}[preference, r2d2]
    return cls(recipe)
