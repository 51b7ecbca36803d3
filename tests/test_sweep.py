"""``latkit sweep``: grid expansion, the Pareto front and the matched pick on hand-made points, and a real
sweep on the tiny model that resumes point by point."""
import json
from pathlib import Path

import pytest
import yaml

from latkit.sweep import (
    SweepError,
    dominates,
    expand_points,
    load_sweep,
    matched_utility,
    mean_asr,
    pareto_front,
    point_scores,
    run_sweep,
)
from latkit.sweep import runner as R
from latkit.sweep.config import sweep_from_dict

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"


@pytest.fixture
def recipe(tmp_path):
    data = yaml.safe_load((REPO / "recipes" / "tiny-test.yaml").read_text())
    data["data"]["harmful"]["source"] = str(FIX / "harmful.jsonl")
    data["data"]["benign"]["source"] = str(FIX / "benign.jsonl")
    data["train"]["steps"] = 2
    data["train"]["checkpoint_every"] = 1
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# --------------------------------------------------------------------------- config
def test_grid_and_points_expand_in_order(recipe):
    cfg = sweep_from_dict({"methods": [
        {"name": "rt", "recipe": recipe, "set": {"adversary.objective.kind": "none", "train.lr": 1e-3},
         "grid": {"defender.sft": [1.0, 2.0], "defender.kl": [0.0, 0.1]}},
        {"name": "lat", "recipe": recipe, "points": [{"adversary.epsilon": 1.0}, {"adversary.epsilon": 2.0,
                                                                                 "train.lr": 5e-4}],
         "grid": {"defender.sft": [1.0]}},
    ]})
    pts = expand_points(cfg)
    assert [p.method for p in pts] == ["rt"] * 4 + ["lat"] * 2
    assert [p.overrides for p in pts[:4]] == [
        {"adversary.objective.kind": "none", "train.lr": 1e-3, "defender.sft": s, "defender.kl": k}
        for s in (1.0, 2.0) for k in (0.0, 0.1)]
    assert pts[5].overrides == {"adversary.epsilon": 2.0, "train.lr": 5e-4, "defender.sft": 1.0}  # point beats set
    assert len({p.id for p in pts}) == 6 and pts[0].id.startswith("rt-00-") and pts[5].id.startswith("lat-01-")
    assert pts[1].set_args() == ['adversary.objective.kind="none"', 'train.lr=0.001', 'defender.sft=1.0', 'defender.kl=0.1']
    # the id follows the resolved recipe: same overrides, same id; another value, another id
    again = expand_points(cfg)
    assert [p.id for p in again] == [p.id for p in pts]
    assert len({p.key for p in pts}) == 6


def test_grid_of_one_method_must_not_repeat_a_recipe(recipe):
    cfg = sweep_from_dict({"methods": [{"name": "a", "recipe": recipe, "grid": {"train.steps": [2, 2]}}]})
    with pytest.raises(SweepError, match="points 0 and 1 train the same recipe"):
        expand_points(cfg)


@pytest.mark.parametrize("data, message", [
    ({"methods": []}, "at least one method"),
    ({"methods": [{"name": "a", "recipe": "x"}, {"name": "a", "recipe": "y"}]}, "unique, repeated: a"),
    ({"methods": [{"name": "a", "recipe": "x", "grid": {"train.lr": []}}]}, "grid axis 'train.lr' has no values"),
    ({"methods": [{"name": "a", "recipe": "x"}], "match": {"reference": "rt"}}, "match.reference 'rt'"),
    ({"methods": [{"name": "a", "recipe": "x"}], "colour": 1}, "unknown key 'colour'"),
    ({"methods": [{"name": "a b", "recipe": "x"}]}, "methods.0.name"),
    ({"methods": [{"name": "a", "recipe": "x"}], "eval": {"limit": 0}}, "eval.limit"),
])
def test_bad_sweeps_are_one_line(data, message):
    with pytest.raises(SweepError, match=message) as e:
        sweep_from_dict(data)
    assert "\n" not in str(e.value)


def test_bad_override_is_caught_before_anything_trains(recipe, tmp_path):
    cfg = sweep_from_dict({"methods": [{"name": "a", "recipe": recipe, "grid": {"adversary.epsilonn": [1.0]}}]})
    with pytest.raises(SweepError, match="epsilonn"):
        run_sweep(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SweepError, match="not found"):
        expand_points(sweep_from_dict({"methods": [{"name": "a", "recipe": str(tmp_path / "none.yaml")}]}))


def test_load_sweep_file_errors(tmp_path):
    with pytest.raises(SweepError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("methods: [")
    with pytest.raises(SweepError, match="not valid YAML"):
        load_sweep(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SweepError, match="must be a mapping"):
        load_sweep(tmp_path / "list.yaml")


# --------------------------------------------------------------------------- front and pick
def _pt(pid, method, asr, util):
    scores = None if asr is None else {"mean": {"asr": asr, "ci95": [asr, asr]},
                                       "utility": {"benign": {"rate": util, "ci95": [util, util], "n": 10}}}
    return {"id": pid, "method": method, "scores": scores}


POINTS = [
    _pt("a", "rt", 0.50, 0.90),   # front: the most useful
    _pt("b", "rt", 0.30, 0.70),   # front
    _pt("c", "rt", 0.40, 0.60),   # dominated by b
    _pt("d", "lat", 0.10, 0.70),  # front, and dominates b
    _pt("e", "lat", 0.10, 0.70),  # an exact tie with d: kept
    _pt("f", "lat", 0.00, 0.20),  # front: the most robust
    _pt("g", "lat", 0.20, 0.20),  # dominated by f
    _pt("h", "lat", None, None),  # not evaluated: left out
]


def test_pareto_front_on_a_hand_made_example():
    assert dominates(POINTS[3], POINTS[1]) and not dominates(POINTS[1], POINTS[3])
    assert not dominates(POINTS[3], POINTS[4]) and not dominates(POINTS[4], POINTS[3])  # ties
    assert not dominates(POINTS[0], POINTS[5]) and not dominates(POINTS[5], POINTS[0])  # a trade-off
    assert [p["id"] for p in pareto_front(POINTS)] == ["f", "d", "e", "a"]
    assert [p["id"] for p in pareto_front([p for p in POINTS if p["method"] == "rt"])] == ["b", "a"]
    assert pareto_front([POINTS[-1]]) == []


def test_matched_utility_picks_the_most_robust_point_over_the_bar():
    m = matched_utility(POINTS, "rt", within=0.25)
    assert m["reference_best"] == 0.90 and m["bar"] == pytest.approx(0.65)
    assert m["methods"]["rt"]["point"] == "b"  # a (0.9) and b (0.7) pass; b is more robust
    assert m["methods"]["lat"]["point"] == "d"  # d and e tie on both: the first id
    tight = matched_utility(POINTS, "rt", within=0.05)
    assert tight["methods"]["rt"]["point"] == "a"
    assert tight["methods"]["lat"] == {"point": None, "best_utility": 0.70, "why": "no point reaches the bar"}


def test_mean_asr_and_its_interval():
    per = {"x": {"asr": 0.5, "k": 5, "n": 10}, "y": {"asr": 0.0, "k": 0, "n": 10}, "z": {"asr": None, "n": 0}}
    m = mean_asr(per)
    assert m["asr"] == 0.25 and m["attacks"] == 2
    assert 0.0 < m["ci95"][0] < 0.25 < m["ci95"][1] < 0.5
    assert mean_asr({"big": {"asr": 0.25, "k": 250, "n": 1000}})["ci95"][1] - 0.25 < 0.03  # narrows with n
    assert mean_asr({}) == {"asr": None, "ci95": [0.0, 1.0], "attacks": 0}
    assert mean_asr({"x": {"asr": 0.5, "k": None, "n": 10}}) == mean_asr({"x": {"asr": 0.5, "k": 5, "n": 10}})


def test_point_scores_read_a_results_file():
    results = {
        "results": [
            {"model": "p", "attack": "direct", "attack_name": "direct", "dataset": "hb", "asr": 0.25, "k": 1,
             "n": 4, "ci95": [0.05, 0.7], "sweep_param": None},
            {"model": "p", "attack": "latent[epsilon=1]", "attack_name": "latent", "dataset": "hb", "asr": 0.0,
             "k": 0, "n": 4, "ci95": [0, 0.5], "sweep_param": "epsilon", "sweep_value": 1},
            {"model": "p", "attack": "latent[epsilon=8]", "attack_name": "latent", "dataset": "hb", "asr": 0.75,
             "k": 3, "n": 4, "ci95": [0.3, 0.95], "sweep_param": "epsilon", "sweep_value": 8},
            {"model": "other", "attack": "direct", "attack_name": "direct", "dataset": "hb", "asr": 1.0, "k": 4,
             "n": 4, "ci95": [0.5, 1], "sweep_param": None},
        ],
        "utility": {"p": {"benign_compliance": {"rate": 0.5, "ci95": [0.2, 0.8], "n": 8, "k": 4,
                                                "borderline": {"rate": 0.25, "ci95": [0, 0.7], "n": 4},
                                                "ordinary": {"rate": 0.75, "ci95": [0.3, 1], "n": 4}},
                          "mmlu": {"accuracy": 0.3, "n": 57}}},
    }
    s = point_scores(results, "p")
    assert set(s["per_attack"]) == {"direct", "latent[epsilon=8]"}  # the strongest ε only; not the other model
    assert s["mean"]["asr"] == pytest.approx(0.5)
    assert s["utility"]["benign"]["rate"] == 0.5 and s["utility"]["borderline"]["rate"] == 0.25
    assert s["utility"]["mmlu"] == {"rate": 0.3, "ci95": None, "n": 57}


# --------------------------------------------------------------------------- a real sweep, resumed
class _Echo:
    """Complies with every behaviour whose id is not in ``refuse``."""

    def __init__(self, params):
        self.refuse = set(params.get("refuse", ()))

    def run(self, model, tokenizer, behaviours):
        return [{"behaviour": b, "attacked_prompt": b["prompt"],
                 "answer": "I'm sorry, but I can't help with that." if b["id"] in self.refuse else "Sure, ok"}
                for b in behaviours]


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "hb.csv").write_text("id,prompt,target\np0,Do zero,Sure\np1,Do one,Sure\np2,Do two,Sure\n"
                                     "p3,Do three,Sure\n")
    data = {"name": "t", "generation": {"max_new_tokens": 3, "batch_size": 4},
            "datasets": [{"name": str(tmp_path / "hb.csv"), "label": "hb",
                          "columns": {"prompt": "prompt", "id": "id", "target": "target"}}],
            "attacks": [{"name": "echo", "params": {"refuse": ["p1"]}}],
            "judges": [{"kind": "refusal"}], "utility": {"benign": {"limit": 3, "max_new_tokens": 3}},
            "report": {"enabled": False}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _cfg(recipe, suite, **over):
    data = {"name": "tiny", "suite": suite, "references": ["tiny-random:llama"],
            "methods": [{"name": "rt", "recipe": recipe, "set": {"adversary.objective.kind": "none"}},
                        {"name": "lat", "recipe": recipe, "grid": {"adversary.epsilon": [0.5, 1.0]}}],
            "match": {"reference": "rt", "within": 1.0}}
    data.update(over)
    return sweep_from_dict(data)


def test_sweep_trains_evaluates_reports_and_resumes(recipe, suite, tmp_path, monkeypatch, capsys):
    from latkit.train import Trainer

    out = tmp_path / "sw"
    cfg = _cfg(recipe, suite)
    ids = [p.id for p in expand_points(cfg)]

    def stop_after_first_step(trainer):
        if trainer.step == 1:
            raise KeyboardInterrupt("killed")

    # killed in the first point's training: nothing is lost, the rerun resumes it from its checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out, progress=False, suite_kwargs={"attacks": {"echo": _Echo}},
                  trainer_kwargs={"callbacks": [stop_after_first_step]})
    first = json.loads((out / "points" / ids[0] / "point.json").read_text())
    assert first["status"] == "training" and (out / "points" / ids[0] / "run" / "checkpoints").is_dir()

    summary = run_sweep(cfg, out, progress=False, suite_kwargs={"attacks": {"echo": _Echo}})
    assert [p["status"] for p in summary["points"]] == ["evaluated"] * 4
    log = capsys.readouterr().err
    assert f"{ids[0]}: resuming training" in log
    # the three points share one data section: the later two reuse the first one's data cache
    assert log.count("training data from") == 2 and f"points/{ids[0]}/run/data" in log
    data = [(out / "points" / i / "run" / "data" / "harmful.jsonl").read_text() for i in ids]
    assert data[0] == data[1] == data[2]
    ref, *pts = summary["points"]
    assert ref["reference"] and ref["id"] == "ref-tiny-random_llama"
    for p in pts:
        run = out / "points" / p["id"] / "run"
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == 2 and (run / "model").is_dir()
        assert p["scores"]["per_attack"]["echo"]["asr"] == 0.75 and p["scores"]["per_attack"]["echo"]["n"] == 4
        assert p["scores"]["utility"]["benign"]["n"] == 3
        assert p["compute"]["fb_equivalents"] > 0
    resumed = (out / "points" / ids[0] / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in resumed] == [0, 1, 2]  # step 1 was not trained twice
    assert set(summary["matched"]["methods"]) == {"rt", "lat"}  # the reference model is not a method
    assert summary["pareto_front"] and set(summary["pareto_front"]) <= {p["id"] for p in summary["points"]}
    md = (out / "report.md").read_text()
    assert all(f"`{i}`" in md for i in ids) and "Matched utility" in md and "reference model" in md
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    # rerun: nothing trains and nothing is evaluated again
    def boom(*a, **k):
        raise AssertionError("should not run")

    monkeypatch.setattr(Trainer, "train", boom)
    monkeypatch.setattr(R, "_evaluate", boom)
    again = run_sweep(cfg, out, progress=False)
    assert [p["scores"] for p in again["points"]] == [p["scores"] for p in summary["points"]]

    # a changed suite re-evaluates every point, but retrains none
    calls = []
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "train", boom)
    orig = R._evaluate

    def counting(label, *a, **k):
        calls.append(label)
        return orig(label, *a, **k)

    monkeypatch.setattr(R, "_evaluate", counting)
    cfg2 = _cfg(recipe, suite, eval={"limit": 2})
    changed = run_sweep(cfg2, out, progress=False, suite_kwargs={"attacks": {"echo": _Echo}})
    assert sorted(calls) == sorted(["ref-tiny-random_llama", *ids])
    assert all(p["scores"]["per_attack"]["echo"]["n"] == 2 for p in changed["points"])


def test_a_failing_point_is_recorded_and_retried(recipe, suite, tmp_path, monkeypatch):
    from latkit.errors import LatkitError

    out = tmp_path / "sw"
    cfg = _cfg(recipe, suite, references=[])
    ids = [p.id for p in expand_points(cfg)]
    real = R._train_point

    def flaky(p, *a, **k):
        if p.id == ids[1]:
            raise LatkitError("data went missing")
        return real(p, *a, **k)

    monkeypatch.setattr(R, "_train_point", flaky)
    s = run_sweep(cfg, out, progress=False, suite_kwargs={"attacks": {"echo": _Echo}})
    assert [p["status"] for p in s["points"]] == ["evaluated", "failed", "evaluated"]
    assert "data went missing" in s["points"][1]["error"] and "data went missing" in (out / "report.md").read_text()
    with pytest.raises(LatkitError):
        run_sweep(cfg, out, progress=False, fail_fast=True, suite_kwargs={"attacks": {"echo": _Echo}})
    monkeypatch.setattr(R, "_train_point", real)
    s = run_sweep(cfg, out, progress=False, only=[ids[1]], suite_kwargs={"attacks": {"echo": _Echo}})
    assert [p["status"] for p in s["points"]] == ["evaluated"] * 3
    with pytest.raises(SweepError, match="--only nope"):
        run_sweep(cfg, out, only=["nope"])


def test_cli_dry_run_and_errors(recipe, suite, tmp_path, capsys):
    from latkit.cli import main

    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump({"suite": suite, "methods": [
        {"name": "lat", "recipe": recipe, "grid": {"adversary.epsilon": [0.5, 1.0]}}]}))
    assert main(["sweep", str(f), "--output", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("new") == 2 and "adversary.epsilon=0.5" in out and "2 points" in out
    assert not (tmp_path / "o").exists()
    f.write_text(yaml.safe_dump({"methods": [{"name": "lat", "recipe": recipe, "grid": {"nope.x": [1]}}]}))
    assert main(["sweep", str(f), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latkit: error:") and "nope" in err and err.count("\n") == 1


def test_shipped_sweeps_validate_and_expand(monkeypatch):
    from latkit.evaluation.schema import load_suite

    monkeypatch.chdir(REPO)  # their suite paths are relative to the repository root, as in the docs
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    sweeps = [f for f in files if "methods" in yaml.safe_load(f.read_text())]
    assert sweeps
    for f in sweeps:
        cfg = load_sweep(f)
        assert load_suite(cfg.suite).datasets  # the suite it names exists and validates
        pts = expand_points(cfg)
        assert len({p.id for p in pts}) == len(pts) >= 2


def test_data_cache_is_shared_only_under_the_same_fingerprint(recipe, tmp_path):
    from latkit.train import load_recipe
    from latkit.train.recipe import data_fingerprint

    points = tmp_path / "points"
    r = load_recipe(recipe)
    for name, stamp in (("a", "stale"), ("b", data_fingerprint(r))):
        d = points / name / "run" / "data"
        d.mkdir(parents=True)
        for f in ("harmful.jsonl", "benign.jsonl"):
            (d / f).write_text(f"{name}\n")
        (d / "fingerprint").write_text(stamp + "\n")
    new = points / "c" / "run"
    assert R._share_data(r, new, points) == points / "b" / "run" / "data"
    assert (new / "data" / "harmful.jsonl").read_text() == "b\n"
    other = points / "d" / "run"
    assert R._share_data(load_recipe(recipe, ["data.max_length=50"]), other, points) is None
    assert not other.exists()


def test_a_recipe_edited_while_the_sweep_runs_does_not_break_its_report(recipe, suite, tmp_path):
    cfg = _cfg(recipe, suite, references=[], methods=[{"name": "lat", "recipe": recipe,
                                                       "grid": {"adversary.epsilon": [0.5, 1.0]}}], match=None)

    def edit(rec):  # after the first point: the recipe file no longer parses
        Path(recipe).write_text("train: [")

    s = run_sweep(cfg, tmp_path / "sw", progress=False, suite_kwargs={"attacks": {"echo": _Echo}}, on_point=edit)
    # the first point is kept; the second, trained from the broken file, fails with its one-line reason
    assert [p["status"] for p in s["points"]] == ["evaluated", "failed"]
    assert "not valid YAML" in s["points"][1]["error"]
    assert (tmp_path / "sw" / "report.md").is_file() and len(s["points"]) == 2
