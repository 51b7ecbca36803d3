"""Backdoors in classifier data, for any modality: poison a fraction of the training set, and build the
triggered test set whose success rate the evaluation reports."""
from __future__ import annotations

import torch

from latkit.classifiers.modality import ClassifierError, Examples


def _replace(raw, idx: torch.Tensor, new):
    if isinstance(raw, torch.Tensor):
        out = raw.clone()
        out[idx] = new
        return out
    out = list(raw)
    for i, v in zip(idx.tolist(), new):
        out[i] = v
    return out


def _select(raw, idx):
    return raw[idx] if isinstance(raw, torch.Tensor) else [raw[int(i)] for i in idx]


def poison(examples: Examples, trigger, params: dict, target: int, fraction: float, seed: int) -> tuple[Examples, int]:
    """A copy of ``examples`` where ``round(fraction·N)`` examples of other classes carry the trigger and are
    relabelled ``target`` (chosen deterministically from ``seed``); also returns how many were poisoned."""
    n = int(round(fraction * len(examples)))
    if n == 0:
        return examples, 0
    candidates = torch.nonzero(examples.labels != target).flatten()
    if len(candidates) < n:
        raise ClassifierError(f"backdoor.poison_fraction {fraction} needs {n} examples outside class {target}; "
                              f"the training set has {len(candidates)}")
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    idx = candidates[torch.randperm(len(candidates), generator=g)[:n]].sort().values
    new = trigger(_select(examples.raw, idx), params, g)
    labels = examples.labels.clone()
    labels[idx] = target
    return Examples(_replace(examples.raw, idx, new), labels), n


def triggered(examples: Examples, trigger, params: dict, target: int, seed: int) -> Examples:
    """The examples whose true class is not ``target``, with the trigger applied (labels kept: the true ones)."""
    idx = torch.nonzero(examples.labels != target).flatten()
    sub = examples.select(idx)
    return Examples(trigger(sub.raw, params, torch.Generator().manual_seed(seed)), sub.labels)
