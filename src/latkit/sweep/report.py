"""A sweep's report: ``sweep.json`` (every point, the Pareto front, the matched-utility pick), ``report.md``
(the table) and ``pareto.png`` (mean ASR against benign compliance, one curve per method)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from latkit.sweep.config import SweepConfig
from latkit.sweep.pareto import asr_of, matched_utility, pareto_front, utility_of

__all__ = ["write_report", "render_markdown", "plot_pareto"]


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _with_ci(d: Mapping | None) -> str:
    if not d or d.get("rate", d.get("asr")) is None:
        return "–"
    v = d.get("rate", d.get("asr"))
    lo, hi = d.get("ci95") or (None, None)
    ci = f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None else ""
    n = f" (n={d['n']})" if d.get("n") else ""
    return f"{_pct(v)}{ci}{n}"


def _overrides(p: Mapping) -> str:
    if p.get("reference"):
        return f"reference model `{p.get('source')}`"
    return ", ".join(f"`{k}={v}`" for k, v in (p.get("overrides") or {}).items()) or "(recipe as is)"


def render_markdown(cfg: SweepConfig, points: Sequence[Mapping], front_ids: set, matched: Mapping | None) -> str:
    attacks = list(dict.fromkeys(a for p in points for a in ((p.get("scores") or {}).get("per_attack") or {})))
    lines = [f"# Sweep `{cfg.name}`", ""]
    if cfg.description:
        lines += [cfg.description, ""]
    done = sum(p.get("status") == "evaluated" for p in points)
    lines += [f"Suite `{cfg.suite}`" + (f" with {cfg.eval.model_dump(exclude_none=True)}" if cfg.eval.model_dump(
        exclude_none=True) else "") + f"; {done} of {len(points)} points evaluated. Robustness: the mean ASR over "
              "the attacks (a swept attack at its strongest setting), approximate 95% interval; utility: benign "
              "compliance on latkit's held-out benign set, Wilson 95% interval. ★: on the Pareto front (no point "
              "is both more robust and more useful).", ""]
    head = ["point", "method", "overrides", "status", "mean ASR %", *(f"{a} %" for a in attacks), "benign %",
            "borderline %", "MMLU %", "FB-equiv.", "wall s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        s = p.get("scores") or {}
        u = s.get("utility") or {}
        comp = p.get("compute") or {}
        star = " ★" if p["id"] in front_ids else ""
        status = p.get("status", "new") + (f": {p['error']}" if p.get("error") else "")
        row = [f"`{p['id']}`{star}", p.get("method", ""), _overrides(p), status.replace("|", "/"),
               _with_ci(s.get("mean")), *(_pct(((s.get("per_attack") or {}).get(a) or {}).get("asr")) for a in attacks),
               _with_ci(u.get("benign")), _pct((u.get("borderline") or {}).get("rate")),
               _pct((u.get("mmlu") or {}).get("rate")),
               "–" if comp.get("fb_equivalents") is None else f"{comp['fb_equivalents']:.3g}",
               "–" if comp.get("wall_s") is None else f"{comp['wall_s']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    if matched is not None:
        bar = matched.get("bar")
        lines += ["", f"## Matched utility ({matched['utility']})", "",
                  f"The bar: `{matched['reference']}`'s best {matched['utility']} utility "
                  f"({_pct(matched.get('reference_best'))}%) minus {100 * matched['within']:.0f} points = "
                  f"{_pct(bar)}%. Each method's most robust point at or above the bar:", "",
                  "| method | point | mean ASR % | utility % | best utility % |", "|---|---|---|---|---|"]
        for m, pick in matched["methods"].items():
            if pick["point"] is None:
                lines.append(f"| {m} | none: {pick['why']} | – | – | {_pct(pick.get('best_utility'))} |")
            else:
                lines.append(f"| {m} | `{pick['point']}` | {_pct(pick['asr'])} | {_pct(pick['utility_value'])} | "
                             f"{_pct(pick.get('best_utility'))} |")
    lines.append("")
    return "\n".join(lines)


def plot_pareto(points: Sequence[Mapping], front_ids: set, path: Path, utility: str = "benign") -> Path | None:
    """Mean ASR (y, lower is more robust) against utility (x), error bars both ways, each method's own
    front joined by a line; references drawn as stars. None when nothing is scored or matplotlib is absent."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    scored = [p for p in points if utility_of(p, utility) is not None and asr_of(p) is not None]
    if not scored:
        return None
    fig = Figure(figsize=(6.4, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for method in dict.fromkeys(p["method"] for p in scored):
        mine = [p for p in scored if p["method"] == method]
        xs = [100 * utility_of(p, utility) for p in mine]
        ys = [100 * asr_of(p) for p in mine]
        uci = [(p["scores"]["utility"][utility].get("ci95") or [None, None]) for p in mine]
        aci = [p["scores"]["mean"]["ci95"] for p in mine]
        xerr = [[max(0.0, x - 100 * (c[0] if c[0] is not None else x / 100)) for x, c in zip(xs, uci)],
                [max(0.0, 100 * (c[1] if c[1] is not None else x / 100) - x) for x, c in zip(xs, uci)]]
        yerr = [[max(0.0, y - 100 * c[0]) for y, c in zip(ys, aci)], [max(0.0, 100 * c[1] - y) for y, c in zip(ys, aci)]]
        ref = any(p.get("reference") for p in mine)
        bars = ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="*" if ref else "o", ms=11 if ref else 6, capsize=2,
                           alpha=0.85, label=method, elinewidth=0.8)
        for p, x, y in zip(mine, xs, ys):  # "lat-01" of "lat-01-f658c166": the row of report.md
            ax.annotate(p["id"] if p.get("reference") else p["id"].rsplit("-", 1)[0], (x, y), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", alpha=0.8)
        own = pareto_front(mine, utility)
        if len(own) > 1:
            ax.plot([100 * utility_of(p, utility) for p in own], [100 * asr_of(p) for p in own], "-",
                    color=bars[0].get_color(), alpha=0.6)
    front = [p for p in scored if p["id"] in front_ids]
    ax.scatter([100 * utility_of(p, utility) for p in front], [100 * asr_of(p) for p in front], s=140,
               facecolors="none", edgecolors="black", linewidths=1.0, label="Pareto front", zorder=5)
    ax.set_xlabel(f"{utility} compliance %" if utility != "mmlu" else "MMLU accuracy %")
    ax.set_ylabel("mean ASR % (lower: more robust)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return path


def write_report(cfg: SweepConfig, out: Path, points: Sequence[Mapping]) -> dict:
    """Write ``sweep.json``, ``report.md`` and (when matplotlib is there) ``pareto.png``; return the summary."""
    utility = cfg.match.utility if cfg.match else "benign"
    front = pareto_front(points, utility)
    front_ids = {p["id"] for p in front}
    matched = None
    if cfg.match is not None:
        matched = matched_utility([p for p in points if not p.get("reference")], cfg.match.reference,
                                  cfg.match.within, cfg.match.utility)
    summary = {"name": cfg.name, "suite": cfg.suite, "eval": cfg.eval.model_dump(exclude_none=True),
               "utility": utility, "points": list(points), "pareto_front": [p["id"] for p in front],
               "matched": matched}
    tmp = out / f".sweep.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, out / "sweep.json")
    (out / "report.md").write_text(render_markdown(cfg, points, front_ids, matched))
    png = plot_pareto(points, front_ids, out / "pareto.png", utility)
    summary["plot"] = str(png) if png else None
    return summary
