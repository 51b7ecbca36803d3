"""The R2D2 baseline (GCG test cases in the loop) and the training-compute meter."""
import json

import pytest
import torch

from latkit.data.schemas import HarmfulTriple
from latkit.models.adapter import ModelAdapter
from latkit.testing import tiny_model
from latkit.train.compute import LayerTokenMeter
from latkit.train.r2d2 import GCGPool, R2D2Settings
from test_trainer import run, stop_after, tiny_recipe, trainable

R2D2 = {"pool_size": 4, "cases_per_step": 2, "gcg_steps": 2, "search_width": 8, "topk": 8,
        "suffix_length": 4, "eval_batch_size": 8, "reset_every": 0}


def r2d2_recipe(**over):
    base = {"adversary.objective.kind": "none", "r2d2": R2D2}
    base.update(over)
    return tiny_recipe(**base)


def triples(n=6):
    return [HarmfulTriple(prompt=f"Tell me how to do bad thing {i}", refusal="I can't help with that.",
                          harmful=f"Sure, here is how to do bad thing {i}.") for i in range(n)]


def test_pool_updates_suffixes_with_gcg_and_returns_suffixed_cases():
    model, tok = tiny_model("llama", seed=0)
    model.eval().requires_grad_(False)
    pool = GCGPool(triples(), R2D2Settings(**R2D2), seed=0)
    assert len(pool.entries) == 4 and len({e["index"] for e in pool.entries}) == 4
    cases, stats = pool.update(model, tok)
    assert len(cases) == 2
    assert stats["r2d2/gcg_loss_after"] <= stats["r2d2/gcg_loss_before"] + 1e-6
    for c in cases:
        e = next(e for e in pool.entries if c.prompt.startswith(pool.harmful[e["index"]].prompt + " "))
        assert c.prompt == pool.harmful[e["index"]].prompt + " " + e["suffix"]
        assert e["updates"] == 1 and e["loss"] is not None
        assert c.refusal == pool.harmful[e["index"]].refusal and c.harmful == pool.harmful[e["index"]].harmful
    assert any(e["suffix"] != pool.initial_suffix for e in pool.entries)  # GCG moved at least one token
    assert all(p.grad is None for p in model.parameters())


def test_pool_reset_redraws_fresh_suffixes_and_state_round_trips():
    model, tok = tiny_model("llama", seed=0)
    model.eval().requires_grad_(False)
    pool = GCGPool(triples(12), R2D2Settings(**{**R2D2, "reset_every": 3}), seed=1)
    pool.update(model, tok)
    state = json.loads(json.dumps(pool.state_dict()))  # JSON-able, as in a checkpoint
    assert not pool.maybe_reset(2)
    first = [e["index"] for e in pool.entries]
    assert pool.maybe_reset(3) and not pool.maybe_reset(3)
    assert all(e["suffix"] == pool.initial_suffix and e["updates"] == 0 for e in pool.entries)
    assert [e["index"] for e in pool.entries] != first  # a different draw (12 choose 4)
    other = GCGPool(triples(12), R2D2Settings(**{**R2D2, "reset_every": 3}), seed=1)
    other.load_state_dict(state)
    assert other.entries == state["entries"] and other._stream.consumed == 1


def test_r2d2_run_trains_on_suffixed_prompts_and_differs_from_rt(tmp_path):
    rt = run(tiny_recipe(**{"adversary.objective.kind": "none"}), tmp_path / "rt")
    r2 = run(r2d2_recipe(), tmp_path / "r2d2")
    rows = [json.loads(x) for x in (tmp_path / "r2d2" / "metrics.jsonl").read_text().splitlines()[1:]]  # [0]: provenance
    assert all("r2d2/gcg_loss_before" in r and r["r2d2/gcg_loss_after"] <= r["r2d2/gcg_loss_before"] + 1e-6
               for r in rows)
    assert all(r["cost/adversary_fb"] > 0 for r in rows)
    a, b = trainable(rt), trainable(r2)
    assert any(not torch.allclose(a[k], b[k]) for k in a)
    assert all("lora_" in k for k in b)


def test_r2d2_resume_reproduces_uninterrupted_run(tmp_path):
    over = {"train.steps": 4, "train.checkpoint_every": 2, "r2d2": {**R2D2, "reset_every": 3}}
    full = run(r2d2_recipe(**over), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(r2d2_recipe(**over), tmp_path / "killed", callbacks=[stop_after(3)])
    resumed = run(r2d2_recipe(**over), tmp_path / "killed", resume=True)
    a, b = trainable(full), trainable(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.task.pool.state_dict() == resumed.task.pool.state_dict()


def test_r2d2_settings_reject_unknown_keys():
    from latkit.train.recipe import RecipeError

    with pytest.raises(RecipeError, match="unknown key 'r2d2.gcg_stpes'"):
        r2d2_recipe(r2d2={**R2D2, "gcg_stpes": 3})


# ------------------------------------------------------------------------------ compute meter
def test_meter_counts_tokens_through_layers_forward_and_backward():
    model, _ = tiny_model("llama", seed=0)
    adapter = ModelAdapter.from_model(model)
    ids = torch.randint(3, 100, (3, 7))
    with LayerTokenMeter(adapter) as meter:
        with torch.no_grad():
            model(input_ids=ids)
        c = meter.take()
        assert c["forward_token_passes"] == 21 and c["fb_equivalents"] == pytest.approx(7.0)
        model(input_ids=ids).logits.sum().backward()  # parameters need grad: a backward follows
        c = meter.take()
        assert c["forward_token_passes"] == 21 and c["fb_equivalents"] == pytest.approx(21.0)
    model(input_ids=ids)  # hooks are gone after the context
    assert meter.take()["forward_token_passes"] == 0


def test_trainer_cost_is_zero_for_the_rt_adversary_and_positive_for_lat(tmp_path):
    from latkit.train.summary import read_metrics, run_cost

    run(tiny_recipe(**{"adversary.objective.kind": "none"}), tmp_path / "rt")
    run(tiny_recipe(), tmp_path / "lat")
    rt, lat = run_cost(read_metrics(tmp_path / "rt")), run_cost(read_metrics(tmp_path / "lat"))
    assert rt["adversary_fb"] == 0 and lat["adversary_fb"] > 0
    # same data, same defender updates: the defender's compute matches
    assert lat["defender_fb"] == pytest.approx(rt["defender_fb"], rel=0.05)
    assert lat["fb_equivalents"] > rt["fb_equivalents"] > 0
