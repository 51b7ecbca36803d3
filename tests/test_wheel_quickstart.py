"""From a clean copy of the repository outside /work (no ../shared): build the wheel, install it with
--no-deps into a fresh target, and run `latkit train quickstart --output x` on a tiny-model override."""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.name=tiny-random:llama", "--set", "data.harmful.limit=4",
        "--set", "data.harmful.max_new_tokens=4", "--set", "data.benign.limit=4",
        "--set", "data.benign.max_new_tokens=4", "--set", "train.steps=2", "--set", "train.checkpoint_every=1",
        "--set", "adversary.sites=[embed,layer.1]", "--set", "adversary.epsilon=1.0", "--no-progress"]


def _clean_copy(dst: Path) -> Path:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        if src.is_file() and not f.startswith("benchmarks/results/"):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


@pytest.mark.slow
def test_wheel_runs_the_quickstart_with_no_shared_data():
    with tempfile.TemporaryDirectory(prefix="latkit-clean-") as tmp:  # outside /work: no ../shared above it
        tmp = Path(tmp)
        src = _clean_copy(tmp / "repo")
        assert not any((p / "shared").exists() for p in [src, *src.parents])
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        wheel = next((tmp / "dist").glob("latkit-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        assert "latkit/recipes/quickstart.yaml" in names and "latkit/py.typed" in names
        assert "latkit/resources/advbench/harmful_behaviors.csv" in names
        assert "latkit/resources/advbench/LICENSE-llm-attacks-MIT.txt" in names
        assert not [n for n in names if "harmbench" in n.lower() or "strongreject" in n.lower()], names
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                            str(tmp / "site"), str(wheel)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        env = {k: v for k, v in os.environ.items() if k not in ("LATKIT_DATA_DIR", "PYTHONPATH")}
        env.update(PYTHONPATH=str(tmp / "site"), HF_HUB_OFFLINE="1", LATKIT_CACHE=str(tmp / "cache"))
        work = tmp / "work"
        work.mkdir()
        run = lambda *a: subprocess.run([sys.executable, "-m", "latkit.cli", *a], cwd=work, env=env,
                                        capture_output=True, text=True, timeout=600)
        r = run("recipes")
        assert r.returncode == 0 and "quickstart" in r.stdout and str(tmp / "site") in r.stdout, r.stderr
        r = run("train", "quickstart", "--output", "x", *TINY)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "harmful_behaviors.csv" in (work / "x" / "model" / "README.md").read_text() or \
            (work / "x" / "data").exists()
        assert (work / "x" / "model" / "adapter_config.json").exists()
        assert (work / "x" / "checkpoints").exists()
        r = run("recipes", "copy", "quickstart", "mine.yaml")
        assert r.returncode == 0 and (work / "mine.yaml").read_text().startswith("# CPU quickstart")
