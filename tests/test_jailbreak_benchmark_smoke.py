"""The jailbreak-robustness benchmark runs end to end at the tiny scale (seconds) and resumes."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.jailbreak_robustness.run import load_scale, main, method_recipe  # noqa: E402


@pytest.mark.parametrize("scale", ["tiny", "cpu", "gpu"])
def test_every_scale_validates(scale):
    s = load_scale(scale)
    assert {"RT", "RT-EAT", "RT-EAT-LAT", "untargeted-LAT", "RLP", "R2D2"} <= set(s["methods"])
    recipes = {m: method_recipe(s, m) for m in s["methods"]}
    # fair comparison: only the adversary / r2d2 sections differ between methods
    ref = recipes["RT"].model_dump()
    for m, r in recipes.items():
        d = r.model_dump()
        for key in ("model", "finetune", "data", "defender", "train"):
            assert d[key] == ref[key], (m, key)
    assert recipes["R2D2"].r2d2 is not None and recipes["RT"].r2d2 is None
    assert recipes["RT"].adversary.objective.kind == "none"
    assert recipes["RT-EAT"].adversary.sites == ["embed"]
    assert recipes["RLP"].adversary.objective.kind == "random"
    assert recipes["untargeted-LAT"].adversary.objective.kind == "untargeted"


def test_tiny_scale_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the tiny scale reads tests/fixtures
    out = tmp_path / "bench"
    rep = main(["--scale", "tiny", "--out", str(out), "--no-progress", "--final"])
    methods = ["RT", "RT-EAT", "RT-EAT-LAT", "untargeted-LAT", "RLP", "R2D2"]
    # the data is generated once and every run trains on that copy (stamped, so no run rebuilds it)
    log = capsys.readouterr().out
    assert "built from a different data section" not in log
    shared = (out / "data" / "fingerprint").read_text()
    for m in methods:
        assert (out / "runs" / m / "data" / "fingerprint").read_text() == shared
        assert (out / "runs" / m / "data" / "harmful.jsonl").read_text() == (out / "data" / "harmful.jsonl").read_text()
    assert rep["methods"] == methods
    rows = {r["method"]: r for r in rep["table_val"]}
    assert list(rows) == ["base", *methods]
    assert all(r["asr"]["direct"] is not None for r in rows.values())
    c = rep["costs"]
    assert c["RT"]["adversary_fb"] == 0 and c["RLP"]["adversary_fb"] == 0
    assert c["RT-EAT-LAT"]["adversary_fb"] > 0 and c["R2D2"]["adversary_fb"] > 0
    assert len({c[m]["defender_updates"] for m in methods}) == 1  # equal defender updates
    assert c["RT-EAT-LAT"]["defender_fb"] == pytest.approx(c["RT"]["defender_fb"], rel=0.05)
    table = (out / "table_val.md").read_text()
    assert all(f"| {m} |" in table for m in methods) and "× RT" in table
    assert (out / "table_test.md").exists() and rep["table_test"]
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["costs"] == json.loads(json.dumps(c))
    # a second run finds every stage done: same numbers, nothing retrained
    mtime = (out / "runs" / "RT" / "model").stat().st_mtime
    again = main(["--scale", "tiny", "--out", str(out), "--no-progress"])
    assert (out / "runs" / "RT" / "model").stat().st_mtime == mtime
    assert again["table_val"] == json.loads(json.dumps(rep["table_val"]))


def test_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown methods"):
        main(["--scale", "tiny", "--out", str(tmp_path), "--methods", "RT,LATT"])
