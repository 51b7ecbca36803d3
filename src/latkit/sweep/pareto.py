"""What a sweep point scored, which points no other beats, and the matched-utility pick.

A point's scores come from its evaluation's ``results.json``: per attack the headline ASR (a swept
attack, such as the latent ε sweep, counts once, at its strongest setting), their mean, and the
utility (benign compliance, its borderline / ordinary parts, MMLU). Robustness is "lower mean ASR",
utility "higher compliance"; a point is on the Pareto front when no other point is at least as good
on both and better on one.

The mean ASR's interval treats the attacks' ASRs as independent binomials (Agresti–Coull variances,
normal approximation); it is approximate, and narrower than the truth when the attacks' successes
are correlated on the same behaviours.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from latkit.evaluation.stats import Z95

__all__ = ["UTILITIES", "point_scores", "mean_asr", "utility_of", "asr_of", "dominates", "pareto_front", "matched_utility"]

UTILITIES = ("benign", "borderline", "ordinary", "mmlu")


def mean_asr(per_attack: Mapping[str, Mapping]) -> dict:
    """``{"asr", "ci95", "attacks"}``: the mean over attacks with an ASR (``asr`` None when there is none)."""
    rows = [r for r in per_attack.values() if r.get("asr") is not None and r.get("n")]
    if not rows:
        return {"asr": None, "ci95": [0.0, 1.0], "attacks": 0}
    m = sum(r["asr"] for r in rows) / len(rows)
    var = 0.0
    for r in rows:
        n, k = r["n"], r.get("k")
        if k is None:  # a row without its count: recover it from the rate
            k = round(r["asr"] * n)
        p = (k + 2) / (n + 4)
        var += p * (1 - p) / (n + 4)
    half = Z95 * math.sqrt(var) / len(rows)
    return {"asr": m, "ci95": [max(0.0, m - half), min(1.0, m + half)], "attacks": len(rows)}


def _attack_key(row: Mapping, datasets: int) -> str:
    return f"{row['attack']} / {row['dataset']}" if datasets > 1 else str(row["attack"])


def point_scores(results: Mapping, label: str) -> dict:
    """The scores of model ``label`` in an evaluation's results dict (``results.json``)."""
    from latkit.evaluation.report import headline_rows

    rows = headline_rows([r for r in results.get("results", []) if r.get("model") == label])
    datasets = len({r["dataset"] for r in rows})
    per_attack = {_attack_key(r, datasets): {"asr": r.get("asr"), "ci95": list(r.get("ci95") or [0.0, 1.0]),
                                             "k": r.get("k"), "n": r.get("n")} for r in rows}
    u = (results.get("utility") or {}).get(label) or {}
    bc = u.get("benign_compliance") or {}
    utility: dict[str, Any] = {}
    if bc.get("rate") is not None:
        utility["benign"] = {"rate": bc["rate"], "ci95": bc.get("ci95"), "n": bc.get("n")}
        for part in ("borderline", "ordinary"):
            if (bc.get(part) or {}).get("rate") is not None:
                utility[part] = {"rate": bc[part]["rate"], "ci95": bc[part].get("ci95"), "n": bc[part].get("n")}
    mm = u.get("mmlu") or {}
    if mm.get("accuracy") is not None:
        utility["mmlu"] = {"rate": mm["accuracy"], "ci95": mm.get("ci95"), "n": mm.get("n")}
    return {"per_attack": per_attack, "mean": mean_asr(per_attack), "utility": utility}


def utility_of(point: Mapping, utility: str = "benign") -> float | None:
    return ((point.get("scores") or {}).get("utility", {}).get(utility) or {}).get("rate")


def asr_of(point: Mapping) -> float | None:
    return ((point.get("scores") or {}).get("mean") or {}).get("asr")


def dominates(a: Mapping, b: Mapping, utility: str = "benign") -> bool:
    """``a`` is at least as robust and as useful as ``b``, and strictly better on one of the two."""
    ua, ub, ra, rb = utility_of(a, utility), utility_of(b, utility), asr_of(a), asr_of(b)
    if None in (ua, ub, ra, rb):
        return False
    return ua >= ub and ra <= rb and (ua > ub or ra < rb)


def pareto_front(points: Sequence[Mapping], utility: str = "benign") -> list[Mapping]:
    """The points no other point dominates, by increasing utility (points without scores are left out;
    exact ties are all kept)."""
    scored = [p for p in points if utility_of(p, utility) is not None and asr_of(p) is not None]
    front = [p for p in scored if not any(dominates(q, p, utility) for q in scored if q is not p)]
    return sorted(front, key=lambda p: (utility_of(p, utility), -asr_of(p), p["id"]))


def matched_utility(points: Sequence[Mapping], reference: str, within: float = 0.05,
                    utility: str = "benign") -> dict:
    """For each method, its most robust point among those whose utility is at least the ``reference``
    method's best minus ``within`` (ties: the more useful, then the first id).

    Returns ``{"bar", "reference", "within", "utility", "methods": {name: {"point": id | None, …}}}``; a
    method with no point over the bar gets ``point: None`` and its best utility, so the miss is visible."""
    ref = [utility_of(p, utility) for p in points if p["method"] == reference]
    ref = [u for u in ref if u is not None]
    bar = (max(ref) - within) if ref else None
    out: dict[str, Any] = {"reference": reference, "within": within, "utility": utility,
                           "reference_best": max(ref) if ref else None, "bar": bar, "methods": {}}
    for method in dict.fromkeys(p["method"] for p in points):
        mine = [p for p in points if p["method"] == method and utility_of(p, utility) is not None
                and asr_of(p) is not None]
        best_u = max((utility_of(p, utility) for p in mine), default=None)
        ok = [p for p in mine if bar is not None and utility_of(p, utility) >= bar - 1e-12]
        if not ok:
            out["methods"][method] = {"point": None, "best_utility": best_u,
                                      "why": "no evaluated point" if not mine else "no point reaches the bar"}
            continue
        pick = min(ok, key=lambda p: (asr_of(p), -utility_of(p, utility), p["id"]))
        out["methods"][method] = {"point": pick["id"], "asr": asr_of(pick), "utility_value": utility_of(pick, utility),
                                  "best_utility": best_u}
    return out
