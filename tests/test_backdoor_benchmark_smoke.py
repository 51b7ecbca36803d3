"""The backdoor-removal benchmark runs end to end at the tiny scale and resumes; every scale validates."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.backdoor_removal.run import (  # noqa: E402
    compare, implant_recipe, implanted_model_dir, load_scale, main, method_recipe)
from latkit.train import load_recipe  # noqa: E402
from latkit.backdoor.pipeline import read_jsonl  # noqa: E402

METHODS = ["SFT", "SFT-LAT", "DPO", "DPO-LAT"]
OUT = Path("/bench")


@pytest.mark.parametrize("scale", ["tiny", "cpu", "nonsense-cpu"])
def test_every_scale_validates_and_methods_differ_only_where_they_should(scale):
    s = load_scale(scale)
    assert list(s["methods"]) == METHODS
    assert s["aim"]["pairs"] == {"SFT-LAT": "SFT", "DPO-LAT": "DPO"}
    recipes = {m: method_recipe(s, m, OUT) for m in METHODS}
    ref = recipes["SFT"].model_dump()
    for m, r in recipes.items():
        d = r.model_dump()
        for key in ("model", "finetune", "data", "train", "r2d2", "output"):
            assert d[key] == ref[key], (m, key)  # same model, data, seed, LoRA, defender updates
        assert {k: v for k, v in d["defender"].items() if k not in ("toward", "away", "preference")} == \
            {k: v for k, v in ref["defender"].items() if k not in ("toward", "away", "preference")}, m
        assert {k: v for k, v in d["adversary"].items() if k != "objective"} == \
            {k: v for k, v in ref["adversary"].items() if k != "objective"}, m
    assert recipes["SFT"].adversary.objective.kind == "none" and recipes["SFT"].defender.preference is None
    assert recipes["SFT-LAT"].adversary.objective.kind == "targeted"
    assert recipes["DPO"].adversary.objective.kind == "none" and recipes["DPO"].defender.preference is not None
    assert recipes["DPO-LAT"].adversary.objective.kind == "dpo"
    assert recipes["DPO"].defender.preference == recipes["DPO-LAT"].defender.preference
    # removal starts from the implanted model (the merged LoRA, or the fully fine-tuned model) and reads
    # the data dir; nothing in it holds a trigger
    imp = implant_recipe(s, OUT)
    assert recipes["SFT"].model.name == str(implanted_model_dir(imp, OUT / "implant"))
    assert recipes["SFT"].data.harmful.source == str(OUT / "data" / "removal_harmful.jsonl")
    assert (imp.output.merge if imp.finetune.method == "lora" else not imp.output.merge) and imp.data.harmful is None
    assert imp.data.benign.source == str(OUT / "data" / "implant.jsonl")


def _without_paths(recipe) -> dict:
    d = recipe.model_dump(mode="json")
    for key in ("name", "description"):
        d.pop(key)
    d["model"].pop("name")
    for part in ("harmful", "benign"):
        if d["data"][part]:
            d["data"][part].pop("source")
    if d["adversary"]["objective"]["kind"] == "none":  # the other adversary settings are unused
        d["adversary"] = None
    return d


def test_shipped_recipes_are_the_cpu_scale():
    s = load_scale("cpu")
    assert _without_paths(load_recipe(REPO / "recipes" / "backdoor-implant.yaml")) == _without_paths(
        implant_recipe(s, OUT))
    for m in METHODS:
        shipped = load_recipe(REPO / "recipes" / f"backdoor-remove-{m.lower()}.yaml")
        assert shipped.model.name == "runs/backdoor/implant/model-merged"
        assert shipped.data.harmful.source == "runs/backdoor/data/removal_harmful.jsonl"
        assert _without_paths(shipped) == _without_paths(method_recipe(s, m, OUT)), m


def test_comparison_with_the_twins():
    def ev(rate, benign=0.9):
        return {"summary": {"triggered_mean": rate, "benign_compliance": benign}}

    evals = {"implanted": ev(0.8), "SFT": ev(0.7), "SFT-LAT": ev(0.5), "DPO": ev(0.8), "DPO-LAT": ev(0.6, 0.7)}
    aim = {"pairs": {"SFT-LAT": "SFT", "DPO-LAT": "DPO"}, "ratio": 2.0, "utility_tolerance": 0.05}
    red, pairs = compare(evals, METHODS, aim)
    assert red["SFT"]["points"] == pytest.approx(0.1) and red["SFT-LAT"]["relative"] == pytest.approx(0.375)
    assert pairs["SFT-LAT"]["ratio"] == pytest.approx(3.0) and pairs["SFT-LAT"]["aim_met"]
    # the twin removed nothing: no ratio; the LAT method's utility fell too far, so the aim fails
    assert pairs["DPO-LAT"]["ratio"] is None and pairs["DPO-LAT"]["benign_compliance_gap"] == pytest.approx(-0.2)
    assert not pairs["DPO-LAT"]["aim_met"]


def test_remaining_success_aim():
    """Issue #20's aim: the twin leaves >= 30% and the LAT method at most half of the twin's remainder."""
    def ev(rate, benign=0.9):
        return {"summary": {"triggered_mean": rate, "benign_compliance": benign}}

    aim = {"pairs": {"SFT-LAT": "SFT", "DPO-LAT": "DPO"}, "remaining": {"twin_at_least": 0.3, "ratio": 0.5},
           "utility_tolerance": 0.05}
    evals = {"implanted": ev(0.9), "SFT": ev(0.6), "SFT-LAT": ev(0.3), "DPO": ev(0.2), "DPO-LAT": ev(0.05)}
    _, pairs = compare(evals, METHODS, aim)
    assert pairs["SFT-LAT"]["remaining_ratio"] == pytest.approx(0.5) and pairs["SFT-LAT"]["aim_met"]
    assert pairs["DPO-LAT"]["remaining_ratio"] == pytest.approx(0.25)
    assert not pairs["DPO-LAT"]["aim_met"]  # the twin already removed it: below the 30% floor, nothing to show
    evals["SFT-LAT"] = ev(0.3, benign=0.8)  # half the remainder, but bought with 10 points of benign compliance
    assert not compare(evals, METHODS, aim)[1]["SFT-LAT"]["aim_met"]
    evals["SFT-LAT"] = ev(0.31)
    assert not compare(evals, METHODS, aim)[1]["SFT-LAT"]["aim_met"]
    # judged compliance equal, but the LAT model refuses 20 points more benign prompts: not equal utility
    evals["SFT"]["summary"]["benign_refusal"] = 0.1
    evals["SFT-LAT"] = ev(0.2)
    evals["SFT-LAT"]["summary"]["benign_refusal"] = 0.3
    pair = compare(evals, METHODS, aim)[1]["SFT-LAT"]
    assert pair["benign_refusal_gap"] == pytest.approx(0.2) and not pair["equal_utility"] and not pair["aim_met"]
    evals["SFT-LAT"]["summary"]["benign_refusal"] = 0.14
    assert compare(evals, METHODS, aim)[1]["SFT-LAT"]["aim_met"]


def test_tiny_scale_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny scale reads tests/fixtures
    out = tmp_path / "bench"
    rep = main(["--scale", "tiny", "--out", str(out), "--no-progress"])
    assert rep["methods"] == METHODS
    rows = {r["row"]: r for r in rep["table"]}
    assert list(rows) == ["base", "implanted", *METHODS]
    assert all(r["triggered_mean"] is not None and r["benign_compliance"] is not None for r in rows.values())
    assert all(r["benign_refusal"] is not None for r in rows.values())
    assert rows["base"]["cost"] is None and rows["implanted"]["cost"]["defender_fb"] > 0
    assert all(rows[m]["reduction"] is not None for m in METHODS) and rows["implanted"]["reduction"] is None
    assert set(rep["lat_vs_twin"]) == {"SFT-LAT", "DPO-LAT"}
    c = rep["costs"]
    assert len({c[m]["defender_updates"] for m in METHODS}) == 1  # equal defender updates
    assert c["SFT"]["adversary_fb"] == 0 and c["SFT-LAT"]["adversary_fb"] > 0
    assert c["DPO-LAT"]["adversary_fb"] > c["DPO"]["adversary_fb"]  # DPO's is its reference forward only
    assert c["SFT-LAT"]["defender_fb"] == pytest.approx(c["SFT"]["defender_fb"], rel=0.05)
    assert (out / "implant" / "model-merged" / "config.json").exists()
    assert (out / "eval" / "DPO-LAT.generations.jsonl").exists()
    table = (out / "table.md").read_text()
    assert all(f"| {r} |" in table for r in rows) and "SFT-LAT vs SFT" in table
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["table"] == json.loads(json.dumps(rep["table"]))
    assert saved["data"]["counts"]["eval_prompts"] == 4
    # the trigger-success-vs-step curve: implanted (step 0), the kept checkpoint (step 1), the final model
    for m in METHODS:
        curve = rep["curves"][m]
        assert [p["step"] for p in curve] == [0, 1, 2] and [p["row"] for p in curve] == ["implanted", f"{m}@1", m]
        assert curve[0]["triggered_mean"] == rows["implanted"]["triggered_mean"]
        assert curve[-1]["triggered_mean"] == rows[m]["triggered_mean"]
        assert (out / "eval" / f"{m}@1.json").exists()
    assert "| step 0 | step 1 | step 2 |" in table and saved["curves"] == json.loads(json.dumps(rep["curves"]))
    # a second run finds every stage done: same numbers, nothing rebuilt, retrained or re-evaluated
    stamps = {p: p.stat().st_mtime for p in (out / "data" / "manifest.json", out / "implant" / "model",
                                             out / "runs" / "DPO-LAT" / "model", out / "eval" / "SFT.json",
                                             out / "eval" / "SFT@1.json")}
    again = main(["--scale", "tiny", "--out", str(out), "--no-progress"])
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    assert again["table"] == json.loads(json.dumps(rep["table"]))
    # an evaluation from before benign refusals were counted gets them from its generations, unre-run
    old = json.loads((out / "eval" / "SFT.json").read_text())
    want = old.pop("benign_refusal")
    del old["summary"]["benign_refusal"]
    (out / "eval" / "SFT.json").write_text(json.dumps(old))
    third = main(["--scale", "tiny", "--out", str(out), "--no-progress"])
    assert json.loads((out / "eval" / "SFT.json").read_text())["benign_refusal"] == want
    assert third["table"] == json.loads(json.dumps(rep["table"]))
    assert again["curves"] == json.loads(json.dumps(rep["curves"]))
    assert again["timings"]["total_s"] > rep["timings"]["total_s"]  # time accumulates over resumed runs


def test_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown methods"):
        main(["--scale", "tiny", "--out", str(tmp_path), "--methods", "SFT,LAT"])


def test_nonsense_backdoor_with_a_full_fine_tuning_implant(tmp_path, monkeypatch):
    """The nonsense-cpu scale's shape at the tiny size: a nonsense backdoor implanted by full fine-tuning;
    removal starts from OUT/implant/model and trigger success is a string match (no judge)."""
    import yaml

    monkeypatch.chdir(REPO)
    s = yaml.safe_load((REPO / "benchmarks" / "backdoor_removal" / "scales" / "tiny.yaml").read_text())
    s["data"]["mode"] = "nonsense"
    s["implant"]["finetune"] = {"method": "full"}
    s["implant"]["output"] = {"merge": False}
    s["removal"]["model"]["name"] = "{implant}/model"
    scale = tmp_path / "nonsense-tiny.yaml"
    scale.write_text(yaml.safe_dump(s))
    out = tmp_path / "bench"
    rep = main(["--scale", str(scale), "--out", str(out), "--methods", "SFT", "--no-progress"])
    assert not (out / "implant" / "model-merged").exists() and (out / "implant" / "model" / "config.json").exists()
    res = json.loads((out / "eval" / "implanted.json").read_text())
    assert res["mode"] == "nonsense" and res["trigger_success"]["judge"] == "contains_response"
    rows = {r["row"]: r for r in rep["table"]}
    assert list(rows) == ["base", "implanted", "SFT"] and rows["SFT"]["triggered_mean"] is not None
    assert yaml.safe_load((out / "runs" / "SFT" / "recipe.yaml").read_text())["model"]["name"] == str(out / "implant" / "model")


def test_validation_split_runs_apart_from_the_reported_one(tmp_path, monkeypatch):
    """--split val evaluates on the validation prompts into OUT/eval-val and *-val files, leaving the
    reported evaluation alone; a data directory without validation prompts is a clear error."""
    import yaml

    monkeypatch.chdir(REPO)
    s = yaml.safe_load((REPO / "benchmarks" / "backdoor_removal" / "scales" / "tiny.yaml").read_text())
    s["data"].update(eval_limit=3, val_limit=1, benign_val_limit=2)
    scale = tmp_path / "val-tiny.yaml"
    scale.write_text(yaml.safe_dump(s))
    out = tmp_path / "bench"
    rep = main(["--scale", str(scale), "--out", str(out), "--methods", "SFT", "--no-progress", "--split", "val"])
    assert rep["split"] == "val" and (out / "benchmark-val.json").exists() and (out / "table-val.md").exists()
    assert not (out / "eval").exists() and not (out / "table.md").exists()
    res = json.loads((out / "eval-val" / "SFT.json").read_text())
    assert res["split"] == "val" and res["n_prompts"] == 1 and res["n_benign"] == 2
    val = {r["prompt"] for r in read_jsonl(out / "data" / "val_prompts.jsonl")}
    gens = read_jsonl(out / "eval-val" / "SFT.generations.jsonl")
    assert {g["prompt"] for g in gens if g["part"] == "trigger_success"} == val
    assert (out / "table-val.md").read_text().startswith("**Validation split**")
    rep = main(["--scale", str(scale), "--out", str(out), "--methods", "SFT", "--no-progress"])
    reported = json.loads((out / "eval" / "SFT.json").read_text())
    assert rep["split"] == "eval" and reported["split"] == "eval" and reported["n_prompts"] == s["eval"]["limit"]
    no_val = tmp_path / "no-val"
    with pytest.raises(SystemExit, match="no val prompts"):
        main(["--scale", "tiny", "--out", str(no_val), "--methods", "SFT", "--no-progress", "--split", "val"])
