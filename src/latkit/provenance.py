"""Provenance: what produced a result — package versions, device and dtype, the git commit, seeds, the
recipe's hash. Written as the header row of ``metrics.jsonl`` and into ``results.json``.

Plain data only (JSON-ready); nothing here fails a run: a field that cannot be found is ``None``.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

PACKAGES = ("latkit", "torch", "transformers", "peft", "accelerate", "safetensors", "pydantic", "numpy")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    if out.get("latkit") is None:  # a source checkout on PYTHONPATH, not installed
        from latkit import __version__

        out["latkit"] = __version__
    return out


def git_commit(start: str | Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding latkit's source (or ``start``); None outside one."""
    where = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def device_info(device=None, dtype=None) -> dict:
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {"device": str(device),
            "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
            "cuda": torch.version.cuda, "gpu": None, "num_gpus": torch.cuda.device_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def recipe_hash(recipe) -> str:
    """sha256 of the resolved recipe (its YAML, every field explicit): equal hashes = equal settings."""
    text = recipe if isinstance(recipe, str) else (recipe.to_yaml() if hasattr(recipe, "to_yaml")
                                                   else json.dumps(recipe, sort_keys=True, default=str))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def collect(*, device=None, dtype=None, seeds: dict | None = None, recipe=None, extra: dict | None = None) -> dict:
    """The provenance record: versions, python/platform, device/dtype, git commit, seeds, recipe hash, time."""
    out: dict = {
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        **device_info(device, dtype),
        "git": git_commit(),
        "seeds": dict(seeds or {}),
        **({"recipe_sha256": recipe_hash(recipe)} if recipe is not None else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }
    if extra:
        out.update(extra)
    return out


def seeds_in(config, path: str = "") -> dict[str, int]:
    """Every ``seed`` field in a nested config (``{"attacks.0.seed": 0, …}``)."""
    out: dict[str, int] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            key = f"{path}.{k}" if path else str(k)
            if k == "seed" and isinstance(v, int) and not isinstance(v, bool):
                out[key] = v
            else:
                out.update(seeds_in(v, key))
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            out.update(seeds_in(v, f"{path}.{i}" if path else str(i)))
    return out


def for_evaluation(runner) -> dict:
    """Provenance of a ``latkit eval`` run (a :class:`~latkit.evaluation.suite.SuiteRunner`)."""
    config = runner.suite.model_dump(mode="json")
    suite_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return collect(device=getattr(runner, "device", None), dtype=getattr(runner, "dtype", None),
                   seeds=seeds_in(config), extra={"suite_sha256": suite_hash})
