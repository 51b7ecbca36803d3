"""The classifier benchmark runs its text half end to end: the text-cpu scale with a tiny encoder and a few steps."""
import json
import sys
from pathlib import Path

import pytest
import yaml

from latkit.classifiers.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def scale():
    from benchmarks.classifiers.run import SCALES

    return yaml.safe_load((SCALES / "text-cpu.yaml").read_text())


def test_text_scale_recipes_validate(scale, tmp_path):
    from benchmarks.classifiers.run import recipes_for

    implant, methods = recipes_for(scale, 0, tmp_path / "implant")
    assert recipe_from_dict(implant).backdoor.trigger == "phrase"
    for name, r in methods.items():
        rec = recipe_from_dict(r)
        assert rec.modality == "text" and rec.method.kind == name and rec.train.init_from == str(tmp_path / "implant")
        assert rec.backdoor is None  # fine-tuning is on clean data; eval finds the trigger through init_from


@pytest.mark.slow  # ~20 s: implant + 4 fine-tunes + eval of a tiny encoder
def test_text_benchmark_smoke(scale, tmp_path):
    from benchmarks.classifiers.run import main

    scale["seeds"] = [0]
    scale["base"]["model"] = {"name": "tiny-random:bert", "max_length": 24}
    scale["base"]["eval"].update({"limit": 16, "pgd_steps": 1, "attacks": ["char_edits", "hotflip"]})
    scale["implant"]["train"].update({"steps": 3, "warmup_steps": 0})
    scale["finetune"]["train"]["steps"] = 2
    for m in scale["methods"].values():
        if "steps" in m:
            m["steps"] = 1
    path = tmp_path / "tiny-text.yaml"
    path.write_text(yaml.safe_dump(scale))
    assert main(["--scale", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    res = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert {"plain", "at", "lat", "rlp"} <= set(res["methods"])
    rows = res["per_seed"]["0"]
    assert set(rows) == {"implant", "plain", "at", "lat", "rlp"}
    for m, r in rows.items():
        assert r["summary"]["n"] == 16 and r["backdoor"]["trigger"] == "phrase"
        assert set(r["summary"]["novel_by_attack"]) == {"char_edits", "hotflip"}
    assert rows["lat"]["cost"]["adversary_fb"] > rows["plain"]["cost"]["adversary_fb"]
    assert "lat_minus_at" in res and (tmp_path / "out" / "table.md").is_file()
