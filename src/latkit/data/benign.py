"""The benign instructions shipped with latkit (``latkit/resources/benign_prompts.jsonl``).

Project-written everyday requests in eleven topics, plus XSTest-style borderline-but-safe
ones (``borderline: true``; categories such as ``homonyms``, ``figurative_language``,
``safe_contexts``) for measuring over-refusal.

Each prompt belongs to one ``split``: ``train`` (two thirds; what ``data.benign.source: builtin``
trains on) or ``eval`` (every third prompt of each category; what benign compliance measures), so a
model is never scored for helpfulness on a prompt it was trained on.
"""
from __future__ import annotations

import functools
import json
from importlib import resources

from latkit.data.schemas import DataError

RESOURCE = "resources/benign_prompts.jsonl"
SPLITS = ("train", "eval")


@functools.lru_cache(maxsize=1)
def _records() -> tuple[tuple[str, str, bool, str], ...]:
    text = resources.files("latkit").joinpath(RESOURCE).read_text(encoding="utf-8")
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            split = rec["split"]
            if split not in SPLITS:
                raise KeyError(f"split must be one of {SPLITS}, got {split!r}")
            out.append((rec["prompt"], rec["category"], bool(rec["borderline"]), split))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"latkit/{RESOURCE}, line {line_no}: bad record ({exc})") from exc
    return tuple(out)


def benign_categories(borderline: bool | None = None) -> list[str]:
    """The categories present (in file order), optionally only borderline / non-borderline ones."""
    return list(dict.fromkeys(c for _, c, b, _ in _records() if borderline is None or b == borderline))


def benign_prompts(borderline: bool | None = None, category: str | None = None, split: str | None = None) -> list[str]:
    """Shipped benign prompts in file order; filter by ``borderline`` (True / False / None = all),
    ``category`` and ``split`` (``train`` / ``eval`` / None = both)."""
    if category is not None and category not in benign_categories():
        raise DataError(f"unknown benign category {category!r}; available: {', '.join(benign_categories())}")
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown benign split {split!r}; available: {', '.join(SPLITS)}")
    return [
        p
        for p, c, b, s in _records()
        if (borderline is None or b == borderline) and (category is None or c == category)
        and (split is None or s == split)
    ]


def benign_items(split: str | None = None, borderline: bool | None = None) -> list[dict]:
    """Shipped benign prompts as ``{"prompt", "category", "borderline"}``, ordered so that any prefix
    is a mix: ordinary and borderline items alternate, and within each kind the categories take turns."""

    def interleave(lists):
        out, depth = [], max((len(x) for x in lists), default=0)
        for k in range(depth):
            out.extend(x[k] for x in lists if k < len(x))
        return out

    pools = []
    for flag in ((borderline,) if borderline is not None else (False, True)):
        per_cat = [
            [{"prompt": p, "category": cat, "borderline": flag} for p in benign_prompts(flag, category=cat, split=split)]
            for cat in benign_categories(flag)
        ]
        pools.append(interleave([c for c in per_cat if c]))
    return interleave(pools)
