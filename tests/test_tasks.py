"""The training-task protocol: the recipe picks a task; a new task is a class the Trainer runs unchanged."""
import json

import pytest
import torch

from latkit.data.text import TextCollator
from latkit.objectives.forward import forward_logits, to_device
from latkit.objectives.losses import cross_entropy
from latkit.train import Trainer
from latkit.train.tasks import (JailbreakTask, PreferenceTask, R2D2PreferenceTask, R2D2Task, RecoveryTask, Task,
                                TaskContext, build_task)
from test_trainer import tiny_recipe

R2D2 = {"pool_size": 2, "cases_per_step": 1, "gcg_steps": 1, "search_width": 4, "topk": 4, "suffix_length": 2}
DPO = {"defender.toward": 0, "defender.away": 0, "defender.preference": {"beta": 0.1}}


@pytest.mark.parametrize("over, cls", [
    ({}, JailbreakTask), (DPO, PreferenceTask), ({"r2d2": R2D2}, R2D2Task),
    ({**DPO, "r2d2": R2D2}, R2D2PreferenceTask), ({"recovery": {}}, RecoveryTask),
])
def test_the_recipe_picks_the_task(over, cls):
    r = tiny_recipe(**over)
    task = build_task(r, TaskContext(recipe=r, tokenizer=None, accelerator=None, out=None))
    assert type(task) is cls
    assert task.needs_reference == (cls in (PreferenceTask, R2D2PreferenceTask) or bool(r.defender.kl))


def test_a_task_must_make_batches_and_losses():
    with pytest.raises(TypeError):
        Task()


class TextTask(Task):
    """A new method in a dozen lines: language modelling on fixed texts, no adversary."""

    def __init__(self, recipe, ctx):
        self.texts = ["the quick brown fox jumps", "over the lazy dog again", "bread needs flour and water"]
        self.turn = 0

    def start(self, ctx):
        self.collate = TextCollator(ctx.tokenizer, max_length=16)

    def micro_batches(self, ctx, model, step, stats):
        stats["text/turn"] = float(self.turn)
        return [(None, to_device(self.collate(self.texts), ctx.device))]

    def losses(self, model, inner, adapter, hb, bb, under, reference):
        logits, off = forward_logits(model, bb)
        ce = cross_entropy(logits, bb["input_ids"], bb["completion_mask"], off)
        return ce, {"lm": ce.detach()}, None, None

    def end_step(self):
        self.turn += 1

    def state_dict(self):
        return {"text_turn": self.turn}

    def load_state_dict(self, state):
        self.turn = state.get("text_turn", 0)


def test_the_trainer_runs_a_new_task_with_checkpoints_and_resume(tmp_path):
    r = tiny_recipe(**{"adversary.objective.kind": "none", "train.steps": 3, "train.checkpoint_every": 1,
                       "train.lr": 1e-2})
    t = Trainer(r, tmp_path / "run", progress=False, task=TextTask)
    t.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1:]]
    assert [m["text/turn"] for m in rows] == [0.0, 1.0, 2.0]
    assert rows[-1]["loss/lm"] < rows[0]["loss/lm"] and rows[0]["loss/total"] == pytest.approx(rows[0]["loss/lm"])
    assert not (tmp_path / "run" / "data" / "harmful.jsonl").exists()  # the jailbreak task's data was never made
    longer = tiny_recipe(**{"adversary.objective.kind": "none", "train.steps": 4, "train.checkpoint_every": 1,
                            "train.lr": 1e-2})
    resumed = Trainer(longer, tmp_path / "run", progress=False, resume=True, task=TextTask)
    resumed.setup()
    assert resumed.step == 3 and resumed.task.turn == 3
    assert all(torch.equal(a, b) for a, b in zip(
        [p for p in t.inner.parameters() if p.requires_grad], [p for p in resumed.inner.parameters() if p.requires_grad]))
