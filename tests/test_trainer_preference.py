"""DPO / DPO-LAT and SFT-only runs through the one trainer loop."""
import json

import pytest
import torch

from latkit.objectives.preference import PreferenceLoss
from latkit.train.recipe import RecipeError
from test_trainer import run, tiny_recipe, trainable

DPO = {"defender.toward": 0, "defender.away": 0, "defender.preference": {"beta": 0.5}}


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()[1:]]  # [0]: provenance


def test_dpo_defender_starts_at_log2_and_prefers_refusals(tmp_path):
    t = run(tiny_recipe(**DPO, **{"adversary.objective.kind": "none", "train.steps": 6, "train.lr": 5e-3}),
            tmp_path / "dpo")
    rows = metrics(tmp_path / "dpo")
    # step 1: the policy equals the reference (LoRA B = 0), so DPO = log 2 exactly
    assert rows[0]["loss/dpo"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert rows[-1]["loss/dpo"] < rows[0]["loss/dpo"]
    assert rows[-1]["loss/margins"] > 0
    assert "loss/toward" not in rows[0] and "adv/loss_before" not in rows[0]
    # the reference forward is the defender's compute: no adversary, no adversary cost
    assert all(r["cost/adversary_fb"] == 0 and r["cost/defender_fb"] > 0 for r in rows)
    assert t.task.preference.chosen_group == "refusal" and t.task.preference.rejected_group == "harmful"


def test_dpo_lat_adversary_lowers_the_swapped_loss_and_changes_training(tmp_path):
    dpo = run(tiny_recipe(**DPO, **{"adversary.objective.kind": "none"}), tmp_path / "dpo")
    lat = run(tiny_recipe(**DPO, **{"adversary.objective.kind": "dpo"}), tmp_path / "dpo_lat")
    rows = metrics(tmp_path / "dpo_lat")
    for r in rows:  # the adversary minimises DPO with chosen/rejected swapped
        assert r["adv/loss_after"] < r["adv/loss_before"]
    assert rows[0]["adv/loss_before"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    # under δ the defender's DPO loss is worse than clean DPO's at the same (initial) weights
    assert rows[0]["loss/dpo"] > metrics(tmp_path / "dpo")[0]["loss/dpo"]
    a, b = trainable(dpo), trainable(lat)
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_dpo_recipe_errors():
    with pytest.raises(RecipeError, match="preference replaces toward/away"):
        tiny_recipe(**{"defender.preference": {"beta": 0.1}})
    with pytest.raises(RecipeError, match="kind: dpo takes its β"):
        tiny_recipe(**{"adversary.objective.kind": "dpo"})
    with pytest.raises(RecipeError, match="unknown key 'defender.preference.bta'"):
        tiny_recipe(**{**DPO, "defender.preference": {"bta": 0.1}})


def test_sft_only_run_trains_on_benign_pairs_without_harmful_data(tmp_path):
    over = {"data.harmful": None, "defender.toward": 0, "defender.away": 0, "defender.kl": 0,
            "adversary.objective.kind": "none", "train.checkpoint_every": 1}
    t = run(tiny_recipe(**over), tmp_path / "sft")
    rows = metrics(tmp_path / "sft")
    assert all(set(k for k in r if k.startswith("loss/")) == {"loss/sft", "loss/total"} for r in rows)
    assert t.task.harmful == [] and not (tmp_path / "sft" / "data" / "harmful.jsonl").exists()
    assert any(p.abs().sum() > 0 for k, p in trainable(t).items() if "lora_B" in k)
    with pytest.raises(RecipeError, match="SFT-only run"):
        tiny_recipe(**{**over, "adversary.objective.kind": "targeted"})


def test_preference_loss_config_is_exported_with_the_recipe(tmp_path):
    r = tiny_recipe(**DPO)
    assert isinstance(r.defender.preference, PreferenceLoss) and r.defender.preference.beta == 0.5
    assert "preference:" in r.to_yaml()
