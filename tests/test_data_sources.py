from pathlib import Path

import pytest

from latkit.data.schemas import DataError
from latkit.data.sources import bundled_file, find_data_dir, resolve_source


def test_named_source_search_order(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    d = tmp_path / "shared" / "data" / "advbench"
    d.mkdir(parents=True)
    (d / "harmful_behaviors.csv").write_text("goal,target\nx,y\n")
    monkeypatch.delenv("LATKIT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path / "proj")  # shared/ beside the checkout
    assert resolve_source("advbench") == d / "harmful_behaviors.csv"
    assert resolve_source("my.csv") == "my.csv"
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.setenv("LATKIT_DATA_DIR", str(other))  # the env var wins, and must hold the file ...
    with pytest.raises(DataError, match="'harmbench-val' not found"):
        resolve_source("harmbench-val")
    # ... except for AdvBench, which falls back to the MIT copy shipped inside the package
    assert resolve_source("advbench") == bundled_file("advbench")
    monkeypatch.setenv("LATKIT_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="does not exist"):
        find_data_dir()


def test_bundled_advbench_is_the_mit_csv_with_its_licence():
    path = bundled_file("advbench")
    assert path is not None and path.name == "harmful_behaviors.csv"
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("6cd1a5c63c07610d")
    licence = (path.parent / "LICENSE-llm-attacks-MIT.txt").read_text()
    assert "MIT" in licence and "Permission is hereby granted" in licence
    assert "llm-attacks" in (path.parent / "PROVENANCE.md").read_text()
    from latkit.data.loaders import load_harmful

    rows = load_harmful(path, {"prompt": "goal", "harmful": "target"}, limit=3)
    assert len(rows) == 3 and rows[0].prompt
    assert bundled_file("harmbench-val") is None  # evaluation sets never ship


def test_package_ships_no_evaluation_data():
    """No HarmBench / StrongREJECT / MMLU file inside the package (the HarmBench test split is held out)."""
    import latkit

    root = Path(latkit.__file__).resolve().parent
    names = [p.relative_to(root).as_posix().lower() for p in root.rglob("*") if p.is_file()]
    bad = [n for n in names if any(w in n for w in ("harmbench", "strongreject", "mmlu"))
           and not n.endswith((".py", ".pyc"))]
    assert not bad, bad
    big = [n for n in names if n.endswith((".csv", ".jsonl", ".json", ".parquet"))]
    assert all(n.startswith(("resources/", "recipes/")) for n in big), big
