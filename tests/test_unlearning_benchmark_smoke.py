"""The unlearning benchmark runs end to end at the tiny scale (seconds) and resumes; every scale is fair."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.unlearning.run import load_scale, main, method_recipe, twins  # noqa: E402
from latkit.train import load_recipe  # noqa: E402

METHODS = ["GA", "GA-LAT", "RMU", "RMU-LAT"]
# relearn-cpu adds the unlikelihood pair (the reference's away loss, log(1 - p)), twins again
SCALE_METHODS = {"relearn-cpu": [*METHODS, "GA-UL", "GA-UL-LAT"]}
# what a method may set besides the adversary: the unlearning method and its own weights
UNLEARN_KEYS = {"method", "ga_kind", "forget_weight", "retain_weight"}


def _recipes(scale):
    return {m: method_recipe(scale, m, Path("data"), Path("model")).model_dump() for m in scale.methods}


@pytest.mark.parametrize("name", ["tiny", "cpu", "relearn-cpu"])
def test_every_scale_validates_and_methods_differ_only_in_method_and_adversary(name):
    scale = load_scale(name)
    methods = SCALE_METHODS.get(name, METHODS)
    expected_twins = {m: m.removesuffix("-LAT") for m in methods if m.endswith("-LAT")}
    assert list(scale.methods) == methods and twins(methods) == expected_twins
    recipes = _recipes(scale)
    ref = recipes["GA"]
    for m, r in recipes.items():
        for key in ("model", "finetune", "data", "defender", "r2d2", "output"):
            assert r[key] == ref[key], (m, key)  # equal data and LoRA
        # GA and RMU may have their own learning rate and number of steps, nothing else of train differs;
        # twins share all of it (checked below)
        differing = {k for k in r["train"] if r["train"][k] != ref["train"][k]}
        assert differing <= {"lr", "steps"}, (m, differing)
        differing = {k for k in r["unlearn"] if r["unlearn"][k] != ref["unlearn"][k]}
        assert differing <= UNLEARN_KEYS, (m, differing)
    for lat, plain in twins(methods).items():  # a LAT method is its twin plus the adversary, nothing else
        a, b = recipes[lat], recipes[plain]
        assert {k for k in a if a[k] != b[k]} == {"name", "adversary"}
        assert a["adversary"]["objective"]["kind"] == "targeted" and a["adversary"]["positions"] == "all"
        assert b["adversary"]["objective"]["kind"] == "none"
    assert recipes["GA"]["unlearn"]["method"] == "ga" and recipes["RMU"]["unlearn"]["method"] == "rmu"
    assert all(recipes[m]["unlearn"]["ga_kind"] == ("unlikelihood" if "-UL" in m else "ascent")
               for m in methods if m.startswith("GA"))
    layer = recipes["RMU-LAT"]["unlearn"]["rmu"]["layer"]
    assert all(s == "embed" or int(s.split(".")[1]) < layer for s in recipes["RMU-LAT"]["adversary"]["sites"])
    assert scale.relearn.steps == {"cpu": (0, 5, 10, 25, 50), "relearn-cpu": (0, 10, 25, 50, 100)}.get(name, (0, 1, 2))


def test_relearn_cpu_scale_is_the_cpu_scale_with_a_stronger_attack_and_more_questions():
    """relearn-cpu changes the facts, the implant length and the attacks, never a method it shares with cpu."""
    cpu, big = load_scale("cpu"), load_scale("relearn-cpu")
    a, b = _recipes(cpu), _recipes(big)
    for m in METHODS:
        a[m].pop("name"), b[m].pop("name")
        assert a[m] == b[m], m
    assert big.relearn.learning_rate > cpu.relearn.learning_rate and max(big.relearn.steps) > max(cpu.relearn.steps)
    from latkit.unlearning.facts import fictional_facts, split_forget_retain
    split = split_forget_retain(fictional_facts(big.facts.n_per_topic, big.facts.seed, big.facts.topics),
                                big.facts.forget_topic, big.facts.relearn_fraction, big.facts.seed)
    assert len(split.forget_eval) == 51 and len(split.relearn) == 13
    assert 100 / len(split.forget_eval) <= 2.0  # the issue: one held-out question is at most 2 points


def _effective(recipe) -> dict:
    """What a recipe does: without its name, the adversary's settings when there is none, RMU's for GA."""
    d = recipe.model_dump()
    del d["name"], d["description"]
    if d["adversary"]["objective"]["kind"] == "none":
        d["adversary"] = None
    if d["unlearn"]["method"] != "rmu":
        del d["unlearn"]["rmu"]
    return d


def test_the_unlearn_recipes_are_the_cpu_scales_methods():
    scale = load_scale("cpu")
    for method, file in {"GA": "unlearn-ga", "GA-LAT": "unlearn-ga-lat", "RMU": "unlearn-rmu",
                         "RMU-LAT": "unlearn-rmu-lat"}.items():
        bench = method_recipe(scale, method, Path("runs/unlearn/data"), Path("runs/unlearn/implanted"))
        assert _effective(bench) == _effective(load_recipe(REPO / "recipes" / f"{file}.yaml")), method


def test_tiny_scale_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench"
    rep = main(["--scale", "tiny", "--out", str(out), "--no-progress"])
    assert rep["methods"] == METHODS and rep["split"] == {"forget": 4, "retain": 4, "relearn": 2, "forget_eval": 2}
    rows = {r["method"]: r for r in rep["table"]}
    assert list(rows) == ["base", "implanted", *METHODS]
    assert rows["base"]["relearn"] is None and rows["base"]["forget"] is not None
    for name in ["implanted", *METHODS]:
        r = rows[name]
        assert all(r[p] is not None for p in ("forget", "retain", "forget_eval"))
        assert list(r["relearn"]) == [0, 1, 2] and r["relearn"][0] == r["forget_eval"]
        assert r["distance_to_chance_after_relearn"] == pytest.approx(100 * abs(r["relearn"][2] - 0.25))
        un = r["attacks"]["unrelated"]  # the extra attack: 3 retain texts, its own curve from the same start
        assert un["texts"] == "retain" and un["n_texts"] == 3 and un["steps"] == [0, 1, 2]
        assert un["accuracy"][0] == r["forget_eval"]
        removed = rows["implanted"]["forget_eval"] - r["forget_eval"]
        if removed >= 0.05:
            assert r["recovered_share"] == pytest.approx((r["relearn"][2] - r["forget_eval"]) / removed)
        else:
            assert r["recovered_share"] is None
    assert rows["base"]["attacks"] == {} and rep["attacks"]["unrelated"]["max_texts"] == 3
    # the collapse guard: perplexity of every row, the base model's included, on text no stage trains on
    assert all(r["perplexity"] > 1 for r in rows.values())
    fl = json.loads((out / "eval" / "GA.json").read_text())["fluency"]
    assert fl["n_texts"] == 64 and fl["tokens"] > 64
    assert (out / "implanted" / "model.safetensors").exists() and rep["implant"]["steps"] == 3
    c = rep["costs"]
    assert c["GA"]["adversary_fb"] == 0 and c["RMU"]["adversary_fb"] == 0
    assert c["GA-LAT"]["adversary_fb"] > 0 and c["RMU-LAT"]["adversary_fb"] > 0
    assert len({c[m]["defender_updates"] for m in METHODS}) == 1  # equal defender updates
    assert set(rep["comparison"]) == {"GA-LAT", "RMU-LAT"}
    assert rep["comparison"]["GA-LAT"]["twin"] == "GA"
    table = (out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in ["base", "implanted", *METHODS]) and "forget_eval @2" in table
    assert "unrelated @2" in table and "unrelated recovered" in table and "3 retain texts" in table
    assert "GA-LAT vs GA" in table and "| ppl |" in table and "steps to ½" in table
    assert "steps to recover half" in table
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["table"] == json.loads(json.dumps(rep["table"]))
    # a second run finds every stage done: same numbers, nothing re-implanted, retrained or re-evaluated
    stamps = {p: p.stat().st_mtime for p in [out / "implanted" / "model.safetensors", out / "runs" / "GA" / "model",
                                              out / "eval" / "RMU-LAT.json"]}
    again = main(["--scale", "tiny", "--out", str(out), "--no-progress"])
    assert all(p.stat().st_mtime == t for p, t in stamps.items())
    assert json.loads(json.dumps(again["table"])) == saved["table"]
    assert again["timings"]["total_s"] > saved["timings"]["total_s"]  # time accumulates over runs
    # an evaluation from before the fluency guard gets it alone: the relearning curves are kept, not rerun
    ev = out / "eval" / "RMU.json"
    old = json.loads(ev.read_text())
    ppl = old.pop("fluency")["perplexity"]
    old["relearn"]["marker"] = "kept"
    ev.write_text(json.dumps(old))
    third = main(["--scale", "tiny", "--out", str(out), "--no-progress"])
    kept = json.loads(ev.read_text())
    assert kept["relearn"]["marker"] == "kept" and kept["fluency"]["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert {r["method"]: r["perplexity"] for r in third["table"]}["RMU"] == pytest.approx(ppl, rel=1e-4)


def test_an_interrupted_run_resumes_its_training(tmp_path, monkeypatch):
    import benchmarks.unlearning.run as run

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench"
    real = run.train_method
    calls = []

    def killed_after_ga(scale, method, *a, **kw):
        if method == "GA-LAT":
            raise KeyboardInterrupt
        calls.append(method)
        return real(scale, method, *a, **kw)

    monkeypatch.setattr(run, "train_method", killed_after_ga)
    with pytest.raises(KeyboardInterrupt):
        main(["--scale", "tiny", "--out", str(out), "--no-progress", "--skip-relearn"])
    assert calls == ["GA"] and (out / "runs" / "GA" / "model").exists() and not (out / "table.md").exists()
    monkeypatch.setattr(run, "train_method", real)
    rep = main(["--scale", "tiny", "--out", str(out), "--no-progress", "--skip-relearn", "--methods", "GA,GA-LAT"])
    assert [r["method"] for r in rep["table"]] == ["base", "implanted", "GA", "GA-LAT"]
    assert rep["comparison"] == {} and all(r["relearn"] is None for r in rep["table"])


def test_recovered_share():
    from benchmarks.unlearning.run import recovered_share

    assert recovered_share(0.25, 0.45, 0.65) == pytest.approx(0.5)  # half of the 40 removed points came back
    assert recovered_share(0.25, 0.20, 0.65) == pytest.approx(-0.125)
    assert recovered_share(0.60, 0.70, 0.60) is None  # unlearning removed nothing: no share to speak of
    assert recovered_share(None, 0.7, 0.6) is None
    assert recovered_share(0.73, 0.61, 0.76) is None  # 3 points removed: a share of them (-400%) is noise


def test_steps_to_recover_half():
    from benchmarks.unlearning.run import steps_to_recover

    steps = [0, 10, 25, 50]
    # removed 0.76 - 0.30 = 0.46; half is back at 0.53: between 10 (0.45) and 25 (0.61), at 10 + 15 * 0.5
    assert steps_to_recover(steps, [0.30, 0.45, 0.61, 0.70], 0.76) == pytest.approx(17.5)
    assert steps_to_recover(steps, [0.30, 0.53, 0.61, 0.70], 0.76) == pytest.approx(10.0)  # exactly at a step
    assert steps_to_recover(steps, [0.30, 0.35, 0.30, 0.50], 0.76) == float("inf")  # never within the curve
    assert steps_to_recover(steps, [0.80, 0.80, 0.80, 0.80], 0.76) is None  # nothing was removed
    assert steps_to_recover(steps, [0.30, 0.60, 0.30, 0.30], 0.76) == pytest.approx(7.7, abs=0.1)  # first crossing


def _row(name, retain, curve, implanted=0.76, steps=(0, 10, 25, 50, 100)):
    from benchmarks.unlearning.run import row_record

    ev = {"accuracy": {p: {"accuracy": a, "n": 50} for p, a in
                       {"forget": curve[0], "retain": retain, "forget_eval": curve[0]}.items()},
          "relearn": {"steps": list(steps), "accuracy": list(curve), "chance": 0.25}}
    return row_record(name, ev, None, list(steps), implanted)


def test_compare_twins_reads_both_aims_and_the_baseline_floor():
    from benchmarks.unlearning.run import AimSettings, compare_twins, describe_comparison

    aim = AimSettings()
    ga = _row("GA", 0.80, [0.30, 0.55, 0.60, 0.65, 0.66])  # half (0.53) back at ~9 steps: 78% recovered
    slow = _row("GA-LAT", 0.78, [0.28, 0.30, 0.45, 0.55, 0.62])  # half (0.52) back at 42.5 steps: > 2x
    c = compare_twins({"GA": ga, "GA-LAT": slow}, {"GA-LAT": "GA"}, aim)["GA-LAT"]
    assert c["baseline_fails"] and c["matched_retain"] and c["slower_by_factor"] and c["aim_met"]
    assert c["steps_to_recover_half"] == pytest.approx(42.5) and c["steps_ratio"] > 2
    assert c["closer_to_chance_points"] == pytest.approx(4.0)  # it is the steps that meet the aim here
    assert "met" in describe_comparison("GA-LAT", c, aim) and "42 vs 9" in describe_comparison("GA-LAT", c, aim)
    # the same curve at a retain cost of 10 points does not count
    c = compare_twins({"GA": ga, "GA-LAT": _row("GA-LAT", 0.70, [0.28, 0.30, 0.45, 0.55, 0.62])},
                      {"GA-LAT": "GA"}, aim)["GA-LAT"]
    assert not c["aim_met"] and "retain not matched" in describe_comparison("GA-LAT", c, aim)
    # never recovering half within 100 steps is > 2x a twin that did by step 50
    never = _row("GA-LAT", 0.80, [0.28, 0.30, 0.30, 0.32, 0.40])
    c = compare_twins({"GA": ga, "GA-LAT": never}, {"GA-LAT": "GA"}, aim)["GA-LAT"]
    assert c["recovers_half"] is False and c["slower_by_factor"] and c["aim_met"]
    assert "never vs 9" in describe_comparison("GA-LAT", c, aim)
    # a baseline the attack does not bring back (< half recovered) leaves nothing to show
    firm = _row("GA", 0.80, [0.30, 0.32, 0.35, 0.38, 0.40])
    c = compare_twins({"GA": firm, "GA-LAT": never}, {"GA-LAT": "GA"}, aim)["GA-LAT"]
    assert not c["baseline_fails"] and not c["aim_met"]
    assert "recovers < 50% from GA" in describe_comparison("GA-LAT", c, aim)
    # ending 15 points closer to chance is the other way to meet it
    close = _row("GA-LAT", 0.80, [0.28, 0.55, 0.45, 0.45, 0.49])
    c = compare_twins({"GA": ga, "GA-LAT": close}, {"GA-LAT": "GA"}, aim)["GA-LAT"]
    assert not c["slower_by_factor"] and c["closer_to_chance_points"] == pytest.approx(17.0) and c["aim_met"]
    json.dumps(compare_twins({"GA": ga, "GA-LAT": never}, {"GA-LAT": "GA"}, aim), allow_nan=False)  # plain JSON
    json.dumps(never, allow_nan=False)


def test_a_bad_extra_attack_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (REPO / "benchmarks" / "unlearning" / "scales" / "tiny.yaml").read_text()
    bad.write_text(text.replace("max_texts: 3", "max_txts: 3"))
    with pytest.raises(SystemExit, match="attacks.unrelated"):
        main(["--scale", str(bad), "--out", str(tmp_path / "o")])


def test_unknown_method_and_scale_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown methods"):
        main(["--scale", "tiny", "--out", str(tmp_path), "--methods", "GA,GA-LATT"])
    with pytest.raises(SystemExit, match="unknown scale"):
        main(["--scale", "huge", "--out", str(tmp_path)])
