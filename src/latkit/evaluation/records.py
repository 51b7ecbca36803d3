"""Attack outputs as records: normalisation of what an attack returns, JSON-safe values, judge blocks."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from latkit.evaluation.schema import SuiteError
from latkit.evaluation.stats import proportion

#: Output ``extras`` keys that split one attack run into separate result rows (e.g. latent ε).
SPLIT_KEYS = ("epsilon",)


class RecordError(SuiteError):
    """An attack returned an output that cannot be mapped back to what was attacked."""


def _get(obj, key, default=None):
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _cost_dict(cost) -> dict[str, float]:
    if cost is None:
        return {}
    if hasattr(cost, "share") and callable(cost.share):
        return {k: float(v) for k, v in cost.share().items()}
    if dataclasses.is_dataclass(cost):
        cost = dataclasses.asdict(cost)
    if isinstance(cost, Mapping):
        return {k: float(v) for k, v in cost.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(cost, (int, float)):
        return {"cost": float(cost)}
    return {}


def _jsonable(x):
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x if not (isinstance(x, float) and not math.isfinite(x)) else None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return str(x)


def _normalise_output(out, by_id: Mapping[str, Any], by_prompt: Mapping[str, Any]) -> dict:
    beh = _get(out, "behaviour")
    bid = str(_get(beh, "id", "") or "") if beh is not None else ""
    prompt = _get(out, "prompt") or (_get(beh, "prompt") if beh is not None else None)
    ev = by_id.get(bid) if bid else None
    if ev is None and prompt is not None:
        ev = by_prompt.get(prompt)
    if ev is None:
        raise RecordError(f"attack output for behaviour {bid or prompt!r} matches no behaviour that was attacked")
    answer = _get(out, "answer")
    if not isinstance(answer, str):
        raise RecordError(f"attack output for {ev.id!r} has no text answer")
    prefill = _get(out, "prefill", "") or ""
    return {
        "behaviour": ev,
        "attacked_prompt": _jsonable(_get(out, "attacked_prompt", ev.prompt)),
        "prefill": prefill,
        "answer": answer,
        # judges read the model's own continuation only: never the prefill, never the attacked prompt
        "judged_answer": answer,
        "system": _get(out, "system"),
        "cost": _cost_dict(_get(out, "cost")),
        "extras": _jsonable(_get(out, "extras", {}) or {}),
    }


def _judge_block(verdicts: list) -> dict:
    decided = [v for v in verdicts if v.harmful is not None]
    k = sum(1 for v in decided if v.harmful)
    p = proportion(k, len(decided))
    scores = [v.score for v in verdicts if v.score is not None]
    return {"asr": p["rate"], "ci95": p["ci95"], "k": k, "n": len(decided),
            "undecided": len(verdicts) - len(decided),
            "mean_score": (sum(scores) / len(scores)) if scores else None}
