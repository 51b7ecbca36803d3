"""Experiment trackers (TensorBoard, Weights & Biases) through accelerate: checked up front, fed scalars.

A tracker whose package is missing is a clear error naming the extra to install (it used to be
silently dropped by accelerate), and the recipe goes to the tracker as flat scalar hyperparameters
(TensorBoard's hparams accept only int/float/str/bool; the nested recipe made it raise at start).
"""
from __future__ import annotations

import importlib.util
import json

from latkit.errors import LatkitError

#: tracker -> (module that must import, the latkit extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class TrackerError(LatkitError, RuntimeError):
    """A requested tracker cannot run (its package is missing)."""


def check_trackers(names) -> list[str]:
    """``names`` unchanged if every tracker's package is importable, else a :class:`TrackerError`."""
    out = []
    for name in names or []:
        if name not in TRACKERS:
            raise TrackerError(f"unknown tracker {name!r}; use one of {', '.join(TRACKERS)}")
        module, extra = TRACKERS[name]
        if not _available(module):
            raise TrackerError(f"train.trackers: {name!r} needs the package {module!r}, which is not installed: "
                               f"pip install 'latkit[{extra}]'")
        out.append(name)
    return out


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def flat_hparams(config, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as ``{"a.b": scalar}``: lists and None become strings (JSON), so any tracker takes them."""
    out: dict[str, int | float | str | bool] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flat_hparams(v, key))
            else:
                out[key] = _scalar(v)
    else:
        out[prefix or "value"] = _scalar(config)
    return out


def _scalar(v):
    if isinstance(v, bool) or isinstance(v, (int, float, str)):
        return v
    return json.dumps(v, sort_keys=True, default=str)
