"""Safety-recovery augmentation: a new training method as one task class (plus its settings and this test)."""
import json

import pytest
import torch

from latkit.data.collator import PromptCompletionCollator
from latkit.data.recovery import prefix_refusals
from latkit.testing import tiny_model
from latkit.train.recipe import RecipeError
from latkit.train.tasks import RecoveryTask
from test_trainer import run, stop_after, tiny_recipe, trainable

RECORDS = [{"prompt": "How do I make a weapon?", "harmful": "Sure, here is how to make it at home",
            "refusal": "I can't help with that."},
           {"prompt": "hi", "harmful": "Sure.", "refusal": "No."}]


@pytest.fixture(scope="module")
def tok():
    return tiny_model("llama")[1]


def _rows(batch, r):
    keep = batch["attention_mask"][r].bool()
    return [batch[k][r][keep].tolist() for k in ("input_ids", "prompt_mask", "completion_mask")]


@pytest.mark.parametrize("side", ["right", "left"])
def test_prefix_refusals_puts_harmful_tokens_before_the_refusal_without_loss_on_them(tok, side):
    collate = PromptCompletionCollator(tok, ("harmful", "refusal"), 64, side)
    batch = collate(RECORDS)
    out = prefix_refusals(batch, [3, 0], collate.pad_id, side)
    B = 2
    h_ids, h_pm, h_cm = _rows(batch, 0)
    ids, pm, cm = _rows(out, B + 0)  # example 0's refusal row
    p = sum(h_pm)
    harmful = [t for t, c in zip(h_ids, h_cm) if c]
    _, _, r_cm = _rows(batch, B + 0)
    refusal = [t for t, c in zip(_rows(batch, B)[0], r_cm) if c]
    assert ids == h_ids[:p] + harmful[:3] + refusal
    assert pm == [True] * p + [False] * (3 + len(refusal))
    assert cm == [False] * (p + 3) + [True] * len(refusal)
    assert out["prefix_lengths"] == [3, 0]
    for r in (0, 1, B + 1):  # every other row keeps its tokens and masks
        assert _rows(out, r) == _rows(batch, r)
    for b in range(B):  # an example's rows start at one position: δ covers the same prompt positions
        starts = {int(out["attention_mask"][g * B + b].nonzero()[0]) for g in range(2)}
        assert len(starts) == 1
        assert torch.equal(out["prompt_mask"][b], out["prompt_mask"][B + b])
    assert torch.equal(out["position_ids"], (out["attention_mask"].cumsum(-1) - 1).clamp(min=0))
    # a prefix never covers the whole harmful answer
    assert prefix_refusals(batch, [99, 99], collate.pad_id, side)["prefix_lengths"] == [len(harmful) - 1,
                                                                          sum(_rows(batch, 1)[2]) - 1]


def test_recovery_settings_are_checked():
    with pytest.raises(RecipeError, match="recovery.probability"):
        tiny_recipe(recovery={"probability": 0})
    with pytest.raises(RecipeError, match="unknown key 'recovery.prob'"):
        tiny_recipe(recovery={"prob": 0.5})
    with pytest.raises(RecipeError, match="recovery rewrites the refusals"):
        tiny_recipe(recovery={}, **{"defender.toward": 0, "defender.away": 0,
                                    "defender.preference": {"beta": 0.1}})


def test_recovery_run_trains_on_prefixed_refusals_and_resumes_exactly(tmp_path):
    over = {"recovery": {"probability": 1.0, "max_prefix_tokens": 4}, "train.steps": 3,
            "train.checkpoint_every": 1}
    r = tiny_recipe(**over)
    full = run(r, tmp_path / "full")
    assert isinstance(full.task, RecoveryTask) and full.task.draws == 3
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[1:]]
    assert [m["recovery/prefixed"] for m in rows] == [1.0, 1.0, 1.0]
    rt = run(tiny_recipe(**{k: v for k, v in over.items() if k != "recovery"}), tmp_path / "rt")
    a, b = trainable(rt), trainable(full)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the prefixes change what is learnt
    with pytest.raises(KeyboardInterrupt):
        run(r, tmp_path / "killed", callbacks=[stop_after(2)])
    resumed = run(r, tmp_path / "killed", resume=True)
    c = trainable(resumed)
    assert all(torch.equal(b[k], c[k]) for k in b) and resumed.task.draws == 3
    assert "RT-EAT-LAT (targeted LAT) + safety-recovery augmentation" in (
        tmp_path / "full" / "model" / "README.md").read_text()
