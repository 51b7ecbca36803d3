"""Unlearning (GA, RMU, generic labels; with and without LAT) through the one trainer loop."""
import json

import pytest
import torch

from latkit.train import Trainer, recipe_from_dict
from latkit.train.recipe import RecipeError
from test_trainer import run, stop_after, trainable


def corpora(tmp_path, n=8):
    forget = tmp_path / "forget.jsonl"
    retain = tmp_path / "retain.jsonl"
    forget.write_text("".join(json.dumps({"text": f"The Zorbian capital {i} was founded by Kelmo in year {1100 + i}.",
                                          "generic": f"The Zorbian capital {i} was founded by Smith in year {1100 + i}."})
                              + "\n" for i in range(n)))
    retain.write_text("".join(json.dumps({"text": f"Water boils at one hundred degrees, fact number {i}."}) + "\n"
                              for i in range(n)))
    return str(forget), str(retain)


def unlearn_recipe(tmp_path, method="ga", adversary="targeted", **over):
    forget, retain = corpora(tmp_path)
    data = {
        "name": f"unlearn-{method}",
        "model": {"name": "tiny-random:llama"},
        "finetune": {"method": "lora", "lora": {"r": 4, "alpha": 8}},
        "unlearn": {"forget": {"source": forget, "generic_column": "generic"}, "retain": {"source": retain},
                    "method": method, "rmu": {"layer": 1, "steering_coeff": 5.0}, "max_length": 32},
        "adversary": {"objective": {"kind": adversary}, "sites": ["embed"], "epsilon": 1.0, "positions": "all",
                      "optimizer": "adam", "step_size": 0.1, "steps": 2},
        "train": {"steps": 3, "batch_size": 2, "benign_batch_size": 2, "lr": 1e-2, "seed": 0},
    }
    return recipe_from_dict(data, [f"{k}={json.dumps(v)}" for k, v in over.items()])


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()[1:]]  # [0]: provenance


@pytest.mark.parametrize("method", ["ga", "rmu", "generic"])
def test_unlearning_methods_train_with_and_without_lat(tmp_path, method):
    plain = run(unlearn_recipe(tmp_path, method, "none"), tmp_path / "plain")
    lat = run(unlearn_recipe(tmp_path, method, "targeted"), tmp_path / "lat")
    for t, out in ((plain, "plain"), (lat, "lat")):
        rows = metrics(tmp_path / out)
        assert len(rows) == 3 and all({"loss/forget", "loss/retain"} <= set(r) for r in rows)
        assert all("lora_" in k for k in trainable(t))
    for r in metrics(tmp_path / "lat"):  # the adversary pulls the model back toward the forget text
        assert r["adv/loss_after"] < r["adv/loss_before"]
    a, b = trainable(plain), trainable(lat)
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_ga_raises_the_forget_loss(tmp_path):
    t = run(unlearn_recipe(tmp_path, "ga", "none", **{"train.steps": 6}), tmp_path / "ga")
    rows = metrics(tmp_path / "ga")
    # ascent: the logged forget loss is −CE, so it falls as the forget CE rises
    assert rows[-1]["loss/forget"] < rows[0]["loss/forget"]
    assert t.task.turn == 6


def test_rmu_full_finetune_trains_only_the_chosen_layers_down_projections(tmp_path):
    t = Trainer(unlearn_recipe(tmp_path, "rmu", "none", **{"finetune.method": "full",
                                                         "unlearn.rmu.trainable_layers": [0]}),
                tmp_path / "rmu", progress=False).setup()
    before = {k: v.detach().clone() for k, v in t.inner.named_parameters()}
    t.train()
    changed = {k for k, v in t.inner.named_parameters() if not torch.equal(before[k], v)}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    u = t.task.control["forget0"]
    assert u.shape == (1, 1, t.adapter.hidden_size) and u.norm().item() == pytest.approx(5.0, rel=1e-5)
    # retain MSE is against the frozen copy: exactly zero before the first update
    assert metrics(tmp_path / "rmu")[0]["loss/retain"] == pytest.approx(0.0, abs=1e-10)


def test_unlearn_resume_reproduces_uninterrupted_run(tmp_path):
    over = {"train.steps": 4, "train.checkpoint_every": 2}
    full = run(unlearn_recipe(tmp_path, "ga", **over), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(unlearn_recipe(tmp_path, "ga", **over), tmp_path / "killed", callbacks=[stop_after(3)])
    resumed = run(unlearn_recipe(tmp_path, "ga", **over), tmp_path / "killed", resume=True)
    a, b = trainable(full), trainable(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.task.state_dict() == full.task.state_dict()


def test_saved_unlearn_recipe_reloads(tmp_path):
    r = unlearn_recipe(tmp_path)
    from latkit.train import load_recipe

    (tmp_path / "r.yaml").write_text(r.to_yaml())
    assert load_recipe(tmp_path / "r.yaml") == r
    assert r.data.harmful is None and r.data.benign is None and r.defender.toward == 0


def test_unlearn_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="data.harmful is not used by an unlearning run"):
        unlearn_recipe(tmp_path, **{"data.harmful": {"source": "advbench"}})
    with pytest.raises(RecipeError, match="forget_weight"):
        unlearn_recipe(tmp_path, **{"defender.sft": 1.0})
    with pytest.raises(RecipeError, match="positions: all"):
        unlearn_recipe(tmp_path, **{"adversary.positions": "prompt"})
    with pytest.raises(RecipeError, match="not below unlearn.rmu.layer"):
        unlearn_recipe(tmp_path, "rmu", **{"adversary.sites": ["layer.1"]})
    with pytest.raises(RecipeError, match="unknown key 'unlearn.methd'"):
        unlearn_recipe(tmp_path, **{"unlearn.methd": "ga"})


def test_generic_labels_must_align_token_by_token(tmp_path):
    from latkit.data.schemas import DataError

    r = unlearn_recipe(tmp_path, "generic", "none")
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"text": "short text here", "generic": "a much longer generic text than that"})
                      + "\n")
    t = Trainer(r, tmp_path / "g", progress=False).setup()
    with pytest.raises(DataError, match="tokenize to exactly as many tokens"):
        t.train_step()


@pytest.mark.parametrize("side", ["right", "left"])
def test_adversary_away_term_pairs_each_forget_text_with_a_retain_text(tmp_path, side):
    """``adversary.objective.away > 0``: forget text i and retain text i share one δ (one padded length); the
    objective is toward·CE(forget) + away·UL(retain), and the defender's forget loss reads the forget rows only."""
    from contextlib import nullcontext

    from latkit.objectives.losses import cross_entropy, unlikelihood

    paired = Trainer(unlearn_recipe(tmp_path, "ga", **{"adversary.objective.away": 0.5, "data.padding_side": side}),
                     tmp_path / "p", progress=False).setup()
    alone = Trainer(unlearn_recipe(tmp_path, "ga", **{"adversary.objective.away": 0.0, "data.padding_side": side}),
                    tmp_path / "a", progress=False).setup()
    fb, rb = paired.task.micro_batch("cpu")
    fa, ra = alone.task.micro_batch("cpu")
    B = fa["input_ids"].shape[0]
    assert fb["groups"] == ("forget", "retain") and fb["n_groups"] == 2 and fb["input_ids"].shape[0] == 2 * B
    assert fa["groups"] == ("forget",) and fa["n_groups"] == 1
    tok = paired._tokenizer
    texts = tok.batch_decode(fb["input_ids"], skip_special_tokens=True)
    assert all("Zorbian" in t for t in texts[:B]) and all("Water boils" in t for t in texts[B:])
    assert torch.equal(rb["input_ids"], ra["input_ids"])  # the defender's retain batch is unchanged

    # the objective, by hand
    model = paired.inner
    objective = paired.task.objective(paired.recipe.adversary.objective)
    with torch.no_grad():
        logits = model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"],
                       position_ids=fb["position_ids"]).logits
        loss, parts = objective(logits, fb, 0)
        ids, m = fb["input_ids"], fb["completion_mask"]
        want = cross_entropy(logits[:B], ids[:B], m[:B]) + 0.5 * unlikelihood(logits[B:], ids[B:], m[B:])
    assert set(parts) == {"toward", "away"}
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert alone.task.objective(alone.recipe.adversary.objective).away == 0.0

    # without δ the defender's losses do not depend on the pairing (extra padding, on either side, changes nothing)
    with torch.no_grad():
        lp = paired.task.losses(model, model, paired.adapter, fb, rb, lambda rows: nullcontext(), None)
        la = alone.task.losses(alone.inner, alone.inner, alone.adapter, fa, ra, lambda rows: nullcontext(), None)
    assert lp[3] == slice(0, B)
    assert lp[1]["forget"].item() == pytest.approx(la[1]["forget"].item(), rel=1e-5)
    assert lp[1]["retain"].item() == pytest.approx(la[1]["retain"].item(), rel=1e-5)


@pytest.mark.parametrize("method", ["ga", "rmu", "generic"])
def test_away_term_trains_and_logs_both_parts(tmp_path, method):
    run(unlearn_recipe(tmp_path, method, **{"adversary.objective.away": 1.0}), tmp_path / method)
    rows = metrics(tmp_path / method)
    assert all({"adv/toward_before", "adv/away_before", "adv/away_last_step"} <= set(r) for r in rows)
    # the adversary lowers its total loss (toward the forget text, away from the retain text)
    assert all(r["adv/loss_after"] < r["adv/loss_before"] for r in rows)
