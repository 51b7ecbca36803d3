"""The classifier benchmark (image half) runs end to end at the tiny scale, resumes, and every image scale's
recipes validate with methods that differ only in the method section."""
import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.classifiers.run import SCALES, main, recipes_for  # noqa: E402
from latkit.classifiers.recipe import recipe_from_dict  # noqa: E402


@pytest.mark.parametrize("scale", sorted(p.stem for p in SCALES.glob("image-*.yaml")))
def test_image_scales_validate_and_methods_differ_only_in_the_method(scale):
    s = yaml.safe_load((SCALES / f"{scale}.yaml").read_text())
    implant, methods = recipes_for(s, 0, Path("/x/implant"))
    imp = recipe_from_dict(implant)
    assert imp.backdoor.poison_fraction > 0 and imp.method.kind == "plain"
    assert {"plain", "at", "lat", "rlp"} <= set(methods)
    dumps = {m: recipe_from_dict(r).model_dump() for m, r in methods.items()}
    for m, d in dumps.items():
        assert d["method"]["kind"] == m.split("-")[0] and d["train"]["init_from"] == "/x/implant" and d["backdoor"] is None
        for key in ("model", "data", "train", "eval"):
            assert d[key] == dumps["plain"][key], (m, key)


def test_tiny_benchmark_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["--scale", "image-tiny", "--output", str(out), "--no-progress"]) == 0
    res = json.loads((out / "benchmark.json").read_text())
    assert res["seeds"] == [0, 1] and res["methods"] == ["plain", "at", "lat", "rlp"]
    agg = res
    assert set(agg["summary"]) == {"implant", "plain", "at", "lat", "rlp"}
    assert agg["summary"]["lat"]["clean_accuracy"]["seeds"] == [
        agg["per_seed"][s]["lat"]["summary"]["clean_accuracy"] for s in ("0", "1")]
    table = (out / "table.md").read_text()
    assert "| lat |" in table and "LAT − AT per seed" in table
    assert len(agg["lat_minus_at"]["clean_accuracy"]) == 2
    per = agg["per_seed"]["0"]
    assert set(per) == {"implant", "plain", "at", "lat", "rlp"}
    assert per["at"]["cost"]["adversary_fb"] > 0 == per["plain"]["cost"]["adversary_fb"]
    assert per["lat"]["backdoor"]["trigger"] == "patch"  # measured through init_from on the implanted run
    mtime = (out / "seed-0" / "lat" / "model" / "model.safetensors").stat().st_mtime
    assert main(["--scale", "image-tiny", "--output", str(out), "--no-progress"]) == 0  # resumes: nothing retrained
    assert (out / "seed-0" / "lat" / "model" / "model.safetensors").stat().st_mtime == mtime
