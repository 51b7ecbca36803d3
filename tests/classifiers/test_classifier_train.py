"""Classifier runs end to end on a 2-block CNN: recipe, run layout, resume bit-exact, init_from, backdoor,
factory models, evaluation (results.json schema) and the CLI."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from latkit.classifiers.modality import ClassifierError
from latkit.classifiers.recipe import recipe_from_dict
from latkit.classifiers.trainer import batch_indices, train
from latkit.cli import main

HERE = Path(__file__).resolve().parent


def recipe_dict(**sections):
    base = {"kind": "classifier", "modality": "image", "name": "t", "model": {"widths": [4, 8]},
            "data": {"train_size": 48, "test_size": 24, "classes": 3, "image_size": 16},
            "method": {"kind": "lat", "norm": "l2", "epsilon": 0.3, "relative": True, "steps": 2},
            "train": {"steps": 4, "batch_size": 8, "lr": 0.05},
            "eval": {"pgd_steps": 2, "attacks": ["blur", "jpeg"], "batch_size": 16}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and k != "method" else v
    return base


def test_batch_order_is_a_function_of_the_step():
    a = [batch_indices(20, 6, s, seed=1) for s in range(7)]
    assert torch.equal(a[4], batch_indices(20, 6, 4, seed=1))
    assert len(torch.cat(a[:3]).unique()) == 18  # an epoch of 3 full batches without repeats
    assert not torch.equal(a[0], batch_indices(20, 6, 0, seed=2))


@pytest.mark.parametrize("method", [{"kind": "at", "norm": "linf", "epsilon": 0.03, "steps": 2},
                                    {"kind": "lat", "norm": "l2", "epsilon": 0.3, "relative": True, "steps": 2},
                                    {"kind": "rlp", "norm": "linf", "epsilon": 0.1}])
def test_resume_reproduces_weights_and_buffers_bit_exactly(tmp_path, method):
    data = recipe_dict(method=method, train={"steps": 6, "checkpoint_every": 3, "optimizer": "adam", "lr": 0.01})
    full = train(recipe_from_dict(data), tmp_path / "full", progress=False)
    # a run killed after its step-3 checkpoint: its later checkpoint, model and metrics rows are gone
    import shutil

    train(recipe_from_dict(data), tmp_path / "cut", progress=False)
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-000006")
    shutil.rmtree(tmp_path / "cut" / "model")
    resumed = train(recipe_from_dict(data), tmp_path / "cut", resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert "step-000006" in [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    full_rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss/task"] for r in rows[1:]] == [r["loss/task"] for r in full_rows[1:]]


def test_run_layout_and_guards(tmp_path):
    out = tmp_path / "run"
    model_dir = train(recipe_from_dict(recipe_dict()), out, progress=False)
    assert (out / "recipe.yaml").is_file() and (out / "checkpoints" / "step-000004" / "manifest.json").is_file()
    assert json.loads((model_dir / "classes.json").read_text()) == ["disc", "square", "triangle"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["kind"] == "classifier"
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert "provenance" in json.loads(rows[0]) and json.loads(rows[-1])["step"] == 4
    with pytest.raises(ClassifierError, match="already holds a run"):
        train(recipe_from_dict(recipe_dict()), out, progress=False)
    with pytest.raises(ClassifierError, match="recipe differs"):
        train(recipe_from_dict(recipe_dict(train={"lr": 0.1})), out, resume=True, progress=False)
    with pytest.raises(ClassifierError, match="no recipe.yaml"):
        train(recipe_from_dict(recipe_dict()), tmp_path / "empty", resume=True, progress=False)


@pytest.mark.parametrize("bad, match", [
    ({"method": {"kind": "lat", "epsilon": -1}}, "method.epsilon"),
    ({"method": {"kind": "dpo"}}, "method"),
    ({"train": {"stepz": 3}}, "unknown key 'train.stepz'"),
    ({"model": {"widths": []}}, "model.widths"),
    ({"backdoor": {"trigger": "phrase"}}, "not a image trigger"),
    ({"backdoor": {"trigger": "patch", "params": {"colour": 1}}}, "unknown key"),
    ({"eval": {"attacks": ["rain"]}}, "unknown image attack"),
    ({"modality": "audio"}, "unknown modality"),
    ({"method": {"kind": "at", "epsilon": float("nan")}}, "method.epsilon"),
    ({"train": {"lr": float("inf")}}, "train.lr: must be a finite number"),
])
def test_bad_recipes_name_the_key(bad, match):
    data = recipe_dict(**bad)
    with pytest.raises(ClassifierError, match=match):
        recipe_from_dict(data)


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(train={"lr": -1})))
    assert main(["train", str(path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latkit: error: invalid recipe: train.lr") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_cli_train_then_eval(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(backdoor={"trigger": "patch", "target": 1, "poison_fraction": 0.25,
                                                         "params": {"size": 3}})))
    run = tmp_path / "run"
    assert main(["train", str(path), "--output", str(run), "--no-progress"]) == 0
    assert json.loads((run / "checkpoints" / "step-000004" / "state.json").read_text())["poisoned"] == 12
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(run), "--output", str(out), "--no-progress"]) == 0
    assert "backdoor success" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "latkit.classifier-eval/1" and res["kind"] == "classifier"
    m = res["models"][0]
    assert m["method"] == "lat" and m["summary"]["n"] == 24 and m["backdoor"]["target"] == 1
    assert m["backdoor"]["n"] == 16  # the non-target test images (8 per class)
    attacks = [(r["attack"], r["family"], r["severity"]) for r in res["results"]]
    assert attacks[:3] == [("clean", "clean", None), ("pgd-linf", "seen", None), ("pgd-linf", "seen", None)]
    assert [a for a in attacks if a[1] == "novel"] == [(n, "novel", s) for n in ("blur", "jpeg") for s in (1, 2, 3, 4)]
    for r in res["results"]:
        assert set(r) == {"model", "attack", "family", "severity", "epsilon", "accuracy", "ci95", "k", "n"}
        assert r["n"] == 24 and r["accuracy"] == r["k"] / 24 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    s = m["summary"]
    lo, hi = s["novel_mean_ci95"]
    assert lo <= s["novel_mean_accuracy"] <= hi
    assert set(s["seen"]) == {"pgd-linf@0.01569", "pgd-linf@0.03137"}  # the modality's defaults (a LAT run)
    report = (out / "report.md").read_text()
    assert "| run | lat | 24 |" in report and "## Accuracy by attack" in report
    # a non-empty output is refused without --overwrite; a bad run dir is one line, exit 2
    assert main(["eval", "--model", str(run), "--output", str(out), "--no-progress"]) == 2
    assert main(["eval", "--model", str(run), "--model", "smollm2-135m", "--output", str(tmp_path / "x")]) == 2
    assert "mixes" in capsys.readouterr().err


def test_fine_tune_from_a_poisoned_run_measures_its_trigger(tmp_path):
    from latkit.classifiers.evaluate import evaluate_runs

    poisoned = tmp_path / "implant"
    train(recipe_from_dict(recipe_dict(method={"kind": "plain"}, backdoor={"trigger": "blend", "target": 0,
                                                                         "poison_fraction": 0.2})),
          poisoned, progress=False)
    ft = recipe_from_dict(recipe_dict(method={"kind": "at", "norm": "l2", "epsilon": 0.2, "steps": 2},
                                      train={"init_from": str(poisoned), "steps": 2}))
    train(ft, tmp_path / "ft", progress=False)
    start = load_file(str(poisoned / "model" / "model.safetensors"))
    end = load_file(str(tmp_path / "ft" / "model" / "model.safetensors"))
    assert not torch.equal(start["fc.weight"], end["fc.weight"])
    res = evaluate_runs([poisoned, tmp_path / "ft"], tmp_path / "ev", progress=False)
    assert [m["backdoor"]["trigger"] for m in res["models"]] == ["blend", "blend"]
    assert res["models"][1]["summary"]["seen"].keys() == {"pgd-l2@0.2", "pgd-l2@0.4"}  # AT: [ε, 2ε]


def test_factory_model_by_import_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    data = recipe_dict(model={"factory": "fake_factory:tiny_resnetish", "kwargs": {"width": 3},
                              "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                       train={"steps": 2})
    out = train(recipe_from_dict(data), tmp_path / "run", progress=False)
    assert "layer1.1.running_var" in load_file(str(out / "model.safetensors"))
    from latkit.classifiers.trainer import load_run_model

    _, mod, model, _ = load_run_model(tmp_path / "run")
    assert mod.default_latent_site(model) == "layer1"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():  # the normaliser runs inside the model, the input δ before it (pixel space)
        d = torch.full_like(x, 0.1)
        manual = model((x + d).clamp(0, 1))
        with mod.perturb_input(model, d):
            torch.testing.assert_close(model(x), manual)
    for spec, match in (("fake_factory:not_a_module", "not an nn.Module"), ("nowhere_pkg:fn", "cannot import"),
                        ("fake_factory", "package.module:function")):
        with pytest.raises(ClassifierError, match=match):
            train(recipe_from_dict(recipe_dict(model={"factory": spec})), tmp_path / spec.replace(":", "_"),
                  progress=False)


def test_shipped_image_recipes_chain(tmp_path, monkeypatch):
    """implant → each method fine-tunes it (tiny overrides: the shipped sizes are the benchmark's)."""
    from latkit.classifiers.recipe import load_recipe
    from latkit.train.catalog import list_recipes

    names = [n for n in list_recipes() if n.startswith("classifier-image-")]
    assert set(names) == {f"classifier-image-{m}" for m in ("implant", "plain", "at", "lat", "rlp")}
    small = ["train.steps=2", "data.train_size=32", "data.test_size=12", "model.widths=[4]", "train.batch_size=8",
             "train.checkpoint_every=0"]
    monkeypatch.chdir(tmp_path)
    implant = load_recipe("classifier-image-implant", small)
    assert implant.backdoor.poison_fraction > 0 and implant.method.kind == "plain"
    train(implant, tmp_path / "runs" / "classifier-image-implant", progress=False)
    for m in ("plain", "at", "lat", "rlp"):
        r = load_recipe(f"classifier-image-{m}", small)
        assert r.method.kind == m and r.train.init_from == "runs/classifier-image-implant"
        assert train(r, tmp_path / m, progress=False).is_dir()
