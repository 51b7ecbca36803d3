"""Trackers (TensorBoard, W&B) on a tiny run, a missing tracker package, and the run's provenance header."""
import importlib.util
import json

import pytest

from latkit.train.trackers import TrackerError, check_trackers, flat_hparams
from test_trainer import run, tiny_recipe


def test_flat_hparams_are_scalars():
    flat = flat_hparams(tiny_recipe().model_dump(mode="json"))
    assert flat["train.steps"] == 3 and flat["adversary.sites"] == '["embed", "layer.0"]'
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


def test_missing_tracker_package_is_a_clear_error(tmp_path, monkeypatch):
    import latkit.train.trackers as T

    monkeypatch.setattr(T, "_available", lambda module: module != "wandb")  # as if wandb were not installed
    with pytest.raises(TrackerError, match=r"pip install 'latkit\[wandb\]'"):
        check_trackers(["wandb"])
    from latkit.cli import main

    r = tiny_recipe()
    (tmp_path / "r.yaml").write_text(r.to_yaml())
    code = main(["train", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "o"), "--no-progress",
                 "--set", "train.trackers=[wandb]"])
    assert code == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_tracker_on_a_tiny_run(tmp_path):
    run(tiny_recipe(**{"train.trackers": ["tensorboard"], "train.steps": 2}), tmp_path / "tb")
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert "loss/total" in tags and "adv/loss_before" in tags


@pytest.mark.slow  # wandb's offline service takes ~20 s to start
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_tracker_on_a_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    run(tiny_recipe(**{"train.trackers": ["wandb"], "train.steps": 2}), tmp_path / "wb")
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
    cfg = next(tmp_path.rglob("config.yaml"), None)
    assert cfg is None or "train.steps" in cfg.read_text()


def test_metrics_header_row_is_the_provenance(tmp_path):
    t = run(tiny_recipe(**{"train.seed": 3}), tmp_path / "r")
    first = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    prov = first["provenance"]
    assert first["step"] == 0
    for pkg in ("latkit", "torch", "transformers", "peft"):
        assert prov["versions"][pkg]
    assert prov["device"] == "cpu" and prov["dtype"] == "float32"
    assert prov["seeds"]["train.seed"] == 3
    from latkit.provenance import recipe_hash

    assert prov["recipe_sha256"] == recipe_hash(t.recipe) == recipe_hash((tmp_path / "r" / "recipe.yaml").read_text())
    assert prov["git"] is None or len(prov["git"]["commit"]) == 40
    from latkit.train.summary import read_metrics, read_provenance

    assert read_provenance(tmp_path / "r") == prov
    assert [m["step"] for m in read_metrics(tmp_path / "r")] == [1, 2, 3]
