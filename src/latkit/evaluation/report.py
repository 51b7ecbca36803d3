"""A self-contained ``report.html`` from an evaluation output directory.

Plots are drawn with matplotlib's Agg canvas and embedded as base64 PNG; the
page has no scripts and loads nothing from outside. All text from models,
datasets and configs is HTML-escaped.

Sections: summary tables, ASR by attack (models side by side, Wilson 95% error
bars), ASR vs latent ε (or any swept setting), utility vs robustness, training
curves from each run dir's ``metrics.jsonl``, judge agreement, example answers.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

MAX_CURVES = 12
MMLU_CHANCE = 0.25  # 4-way multiple choice


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    if not ci or len(ci) != 2:
        return ""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


# --------------------------------------------------------------------------- figures
def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def headline_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    """Rows for the bar chart: unswept runs, and for swept ones the row with the largest value."""
    plain = [r for r in rows if r.get("sweep_param") is None]
    best: dict[tuple, Mapping] = {}
    for r in rows:
        if r.get("sweep_param") is None:
            continue
        key = (r["model"], r["attack_name"], r["dataset"], r["sweep_param"])
        v = r.get("sweep_value")
        if key not in best or _num(v) > _num(best[key].get("sweep_value")):
            best[key] = r
    return plain + list(best.values())


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("-inf")


def plot_asr_by_attack(rows: Sequence[Mapping], models: Sequence[str]) -> list[tuple[str, str]]:
    """One grouped bar chart per dataset; returns ``[(title, base64 png)]``."""
    out = []
    rows = headline_rows(rows)
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        attacks = list(dict.fromkeys(r["attack"] for r in sub))
        fig = _figure(max(6.0, 1.1 * len(attacks) * max(1, len(models)) ** 0.5 + 2), 4.2)
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / max(1, len(models))
        for mi, m in enumerate(models):
            xs, ys, lo, hi = [], [], [], []
            for ai, a in enumerate(attacks):
                r = next((r for r in sub if r["model"] == m and r["attack"] == a), None)
                if r is None or r.get("asr") is None:
                    continue
                xs.append(ai - 0.4 + width * (mi + 0.5))
                ys.append(r["asr"])
                lo.append(max(0.0, r["asr"] - r["ci95"][0]))
                hi.append(max(0.0, r["ci95"][1] - r["asr"]))
            if xs:
                ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=m, error_kw={"alpha": 0.6})
        ax.set_xticks(range(len(attacks)))
        ax.set_xticklabels(attacks, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("ASR")
        ax.set_title(f"ASR by attack — {ds}")
        ax.grid(axis="y", alpha=0.3)
        if models:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        out.append((f"ASR by attack — {ds}", _png(fig)))
    return out


def plot_sweeps(rows: Sequence[Mapping]) -> list[tuple[str, str]]:
    """ASR vs swept value (latent ε, ...), one figure per attack × setting, a line per model × dataset."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r.get("sweep_param") is not None and r.get("asr") is not None and _num(r.get("sweep_value")) > float("-inf"):
            groups[(r["attack_name"], r["sweep_param"])].append(r)
    out = []
    for (attack, param), rs in groups.items():
        fig = _figure(6.5, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        lines = defaultdict(list)
        for r in rs:
            lines[(r["model"], r["dataset"])].append(r)
        datasets = {d for _, d in lines}
        for (m, d), pts in lines.items():
            pts = sorted(pts, key=lambda r: _num(r["sweep_value"]))
            xs = [_num(r["sweep_value"]) for r in pts]
            ys = [r["asr"] for r in pts]
            lo = [r["ci95"][0] for r in pts]
            hi = [r["ci95"][1] for r in pts]
            label = m if len(datasets) == 1 else f"{m} · {d}"
            ax.plot(xs, ys, marker="o", label=label)
            ax.fill_between(xs, lo, hi, alpha=0.15)
        allx = sorted({_num(r["sweep_value"]) for r in rs})
        if allx[0] > 0 and allx[-1] / allx[0] >= 8:
            from matplotlib.ticker import NullFormatter, NullLocator

            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(allx)
        ax.set_xticklabels([f"{x:g}" for x in allx])
        sym = "ε" if param in ("epsilon", "eps") else param
        ax.set_xlabel(sym)
        ax.set_ylabel("ASR")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"ASR vs {sym} — {attack}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append((f"ASR vs {sym} — {attack}", _png(fig)))
    return out


def robustness_points(results: Mapping) -> list[dict]:
    """Per model: mean ASR over headline rows and the utility numbers available."""
    pts = []
    for m in results.get("models", []):
        label = m["label"]
        rs = [r for r in headline_rows(results.get("results", [])) if r["model"] == label and r.get("asr") is not None]
        util = (results.get("utility") or {}).get(label) or {}
        pts.append({
            "model": label,
            "mean_asr": (sum(r["asr"] for r in rs) / len(rs)) if rs else None,
            "benign_compliance": (util.get("benign_compliance") or {}).get("rate"),
            "mmlu": (util.get("mmlu") or {}).get("accuracy"),
        })
    return pts


def plot_utility_vs_robustness(results: Mapping) -> list[tuple[str, str]]:
    fig = utility_figure(results)
    return [] if fig is None else [("Utility vs robustness", _png(fig))]


def utility_figure(results: Mapping):
    """Benign compliance and MMLU (with its chance level) against robustness; None when nothing to draw."""
    pts = [p for p in robustness_points(results) if p["mean_asr"] is not None]
    panels = [(k, t) for k, t in (("benign_compliance", "benign compliance"), ("mmlu", "MMLU accuracy"))
              if any(p[k] is not None for p in pts)]
    if not pts or not panels:
        return None
    fig = _figure(5.5 * len(panels), 4.2)
    for i, (key, title) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for p in pts:
            if p[key] is None:
                continue
            ax.scatter([1 - p["mean_asr"]], [p[key]], s=50)
            ax.annotate(p["model"], (1 - p["mean_asr"], p[key]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if key == "mmlu":  # knowledge: 4 answer choices
            ax.axhline(MMLU_CHANCE, color="grey", linestyle=":", linewidth=1)
            ax.annotate("chance (25%)", (0.0, MMLU_CHANCE), textcoords="offset points", xytext=(2, 3),
                        fontsize=7, color="grey")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("robustness (1 − mean ASR)")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs robustness")
        ax.grid(alpha=0.3)
    return fig


def read_metrics(path: str | Path) -> list[dict]:
    """``metrics.jsonl``'s per-step records (malformed lines and the provenance header row are skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "provenance" not in rec:  # skip the header row
            out.append(rec)
    return out


#: the training-curve panels, by meaning: (title, what it shows, which metrics)
CURVE_PANELS = (
    ("Defender losses", "the losses the defender minimises (under δ for toward/away; clean for sft/kl)",
     lambda k: k.startswith("loss/") and k != "loss/total"),
    ("Adversary's loss, before / after PGD", "the adversary's objective at δ = its initialisation (before) and "
     "after its PGD steps (after); a large gap = the attack still finds a lot to exploit",
     lambda k: k in ("adv/loss_before", "adv/loss_after")),
    ("‖δ‖ per site", "mean (solid) and max (dashed) perturbation norm per site; at ε the ball binds",
     lambda k: k.startswith("adv/") and k.endswith(("/norm_mean", "/norm_max"))),
    ("Active fraction per site", "share of perturbed tokens where the ε-constraint binds (‖δ‖ ≥ ε)",
     lambda k: k.startswith("adv/") and k.endswith("/active_frac")),
    ("Learning rate", "the defender's learning rate (schedule and warm-up)", lambda k: k == "lr"),
    ("Gradient norm", "the defender's gradient norm before clipping", lambda k: k == "grad_norm"),
)


def _constant(points) -> bool:
    ys = [y for _, y in points]
    return len(ys) > 1 and max(ys) - min(ys) <= 1e-12 * max(1.0, abs(ys[0]))


def training_panels(records: Sequence[Mapping]) -> list[dict]:
    """The curves to draw, grouped by meaning: ``[{title, note, series: {metric: [(step, value)]}, flat}]``.

    Metrics that stay constant over the run are not drawn but named in ``flat`` (value given)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for i, rec in enumerate(records):
        step = rec.get("step", i)
        if not isinstance(step, (int, float)) or "provenance" in rec:
            continue
        for k, v in rec.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            series[k].append((float(step), float(v)))
    panels = []
    for title, note, select in CURVE_PANELS:
        keys = sorted(k for k in series if select(k))
        if not keys:
            continue
        drawn = {k: series[k] for k in keys if not _constant(series[k])}
        flat = {k: series[k][0][1] for k in keys if _constant(series[k])}
        if title == "Learning rate" and not drawn:
            drawn = {k: series[k] for k in keys}  # a constant lr is still worth seeing once
            flat = {}
        panels.append({"title": title, "note": note, "series": drawn, "flat": flat})
    return [p for p in panels if p["series"] or p["flat"]]


def plot_training_curves(label: str, records: Sequence[Mapping]) -> list[tuple[str, str]]:
    """One figure of panels chosen by meaning (see :data:`CURVE_PANELS`); flat metrics are only named."""
    panels = [p for p in training_panels(records) if p["series"]][:MAX_CURVES]
    if not panels:
        return []
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = _figure(4.4 * cols, 3.0 * nrows)
    for i, panel in enumerate(panels, start=1):
        ax = fig.add_subplot(nrows, cols, i)
        for k, pts in panel["series"].items():
            xs, ys = zip(*pts)
            short = k.removeprefix("loss/").removeprefix("adv/")
            style = "--" if k.endswith("/norm_max") else "-"
            ax.plot(xs, ys, style, marker="." if len(xs) < 30 else None, label=short)
        if len(panel["series"]) > 1 or "per site" in panel["title"]:  # name the site even when alone
            ax.legend(fontsize=7)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves — {label}")
    return [(f"Training curves — {label}", _png(fig))]


def _curves_notes(records: Sequence[Mapping]) -> str:
    items = []
    for p in training_panels(records):
        flat = ""
        if p["flat"]:
            flat = " Constant over the run (not drawn): " + ", ".join(f"{_e(k)} = {_fmt(v, 4)}" for k, v in p["flat"].items()) + "."
        items.append(f"<li><b>{_e(p['title'])}</b>: {_e(p['note'])}.{flat}</li>")
    return f'<ul class="cols">{"".join(items)}</ul>' if items else ""


# --------------------------------------------------------------------------- tables
def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """``rows`` cells are already-escaped HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


COLUMN_NOTES = {
    "datasets": {"label": "the dataset's name in this suite", "name": "which loader read it",
                 "split": "HarmBench split (val by default; test only when asked for)", "n": "behaviours used"},
    "results": {"model": "the evaluated model (label given to --model)", "attack": "the attack and its settings",
                "dataset": "where the behaviours come from",
                "ASR": "attack success rate under the headline judge: share of behaviours where the attacked answer is judged a success (lower = more robust)",
                "95% CI": "Wilson score interval of the ASR", "n": "behaviours judged",
                "undecided": "answers the judge could not decide (left out of n)",
                "behaviours broken": "share of behaviours with at least one successful output (attacks with several outputs per behaviour)",
                "ASR (other judge)": "the same ASR under each additional judge",
                "wall s / output": "wall-clock seconds per attacked output (depends on machine load)",
                "fwd passes / output": "model forward passes per output (load-independent cost)"},
    "utility": {"benign compliance": "share of benign prompts answered rather than refused, 95% interval",
                "borderline compliance": "the same on XSTest-style borderline (safe but scary-sounding) prompts",
                "MMLU": "4-choice accuracy by log-likelihood (chance = 25%)",
                "perplexity": "on the benign responses (lower = more fluent)",
                "KL to base": "mean KL(P_base ‖ P_model) per token on benign text (how far training moved the model)"},
    "agreement": {"judges": "the judge pair", "n": "outputs both judges decided",
                  "agreement": "share of outputs with the same verdict", "Cohen's κ": "agreement beyond chance (1 = perfect, 0 = chance)"},
}


def _column_notes(table: str) -> str:
    items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in COLUMN_NOTES[table].items())
    return f'<ul class="cols">{items}</ul>'


def _results_table(results: Mapping) -> str:
    judges = [j["name"] for j in results.get("judges", [])]
    primary = results.get("primary_judge")
    headers = ["model", "attack", "dataset", f"ASR ({primary})", "95% CI", "n", "undecided", "behaviours broken"]
    headers += [f"ASR ({j})" for j in judges if j != primary]
    headers += ["wall s / output", "fwd passes / output"]
    rows = []
    for r in results.get("results", []):
        cells = [_e(r["model"]), _e(r["attack"]), _e(r["dataset"]), _pct(r.get("asr")), _ci(r.get("ci95")),
                 _e(r.get("n")), _e(r.get("undecided")), _pct(r.get("behaviours_broken"))]
        for j in judges:
            if j != primary:
                cells.append(_pct((r.get("judges", {}).get(j) or {}).get("asr")))
        per = (r.get("cost") or {}).get("per_output") or {}
        cells += [_fmt(per.get("wall_time_s"), 2), _fmt(per.get("forward_passes"), 1)]
        rows.append(cells)
    return _table(headers, rows, "results")


def _utility_table(results: Mapping) -> str:
    rows = []
    for m in results.get("models", []):
        u = (results.get("utility") or {}).get(m["label"]) or {}
        bc = u.get("benign_compliance") or {}
        mm = u.get("mmlu") or {}
        ppl = u.get("perplexity") or {}
        kl = u.get("kl_to_base") or {}
        rows.append([
            _e(m["label"]),
            f"{_pct(bc.get('rate'))} {_ci(bc.get('ci95'))} (n={_e(bc.get('n', '–'))})" if bc else "–",
            _pct((bc.get("borderline") or {}).get("rate")) if bc.get("borderline") else "–",
            (f"{_pct(mm.get('accuracy'))} {_ci(mm.get('ci95'))} (n={_e(mm.get('n'))})" if "accuracy" in mm
             else _e(mm.get("skipped", "–"))),
            _fmt(ppl.get("perplexity"), 2),
            _fmt(kl.get("kl"), 4) if "kl" in kl else _e(kl.get("skipped", "–")),
        ])
    return _table(["model", "benign compliance", "borderline compliance", "MMLU", "perplexity", "KL to base"], rows, "utility")


def _agreement_table(results: Mapping) -> str:
    rows = []
    for model, pairs in (results.get("agreement") or {}).items():
        for p in pairs:
            rows.append([_e(model), _e(" vs ".join(p["judges"])), _e(p["n"]), _pct(p.get("agreement")), _fmt(p.get("kappa"))])
    if not rows:
        return ""
    return _table(["model", "judges", "n", "agreement", "Cohen's κ"], rows, "agreement")


def _prompt_text(p) -> str:
    if isinstance(p, list):
        return "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in p)
    return "" if p is None else str(p)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + f" … [{len(text) - n} more characters]"


def select_examples(generations: Sequence[Mapping], primary: str, per_run: int) -> list[Mapping]:
    """Up to ``per_run`` examples per (model, attack, dataset), successes first then failures."""
    groups: dict[tuple, list] = defaultdict(list)
    for g in generations:
        if g.get("kind") == "attack":
            groups[(g["model"], g["attack"], g["dataset"])].append(g)
    out = []
    for _, gs in groups.items():
        hits = [g for g in gs if ((g.get("verdicts") or {}).get(primary) or {}).get("harmful")]
        miss = [g for g in gs if g not in hits]
        picked = []
        while len(picked) < per_run and (hits or miss):
            src = hits if (len(picked) % 2 == 0 and hits) or not miss else miss
            picked.append(src.pop(0))
        out.extend(picked)
    return out


def _examples_table(generations, primary: str, per_run: int, max_chars: int) -> str:
    rows = []
    for g in select_examples(generations, primary, per_run):
        verdicts = "<br>".join(
            f"{_e(name)}: {'harmful' if v.get('harmful') else ('undecided' if v.get('harmful') is None else 'safe')}"
            + (f" ({_fmt(v.get('score'), 2)})" if v.get("score") is not None else "")
            for name, v in (g.get("verdicts") or {}).items()
        )
        answer = (g.get("prefill") or "") + ("" if not g.get("prefill") else " ⟶ ") + (g.get("answer") or "")
        rows.append([
            _e(g["model"]), _e(g["attack"]), _e(g.get("behaviour_id")),
            f'<pre>{_e(_clip(_prompt_text(g.get("attacked_prompt")), max_chars))}</pre>',
            f'<pre>{_e(_clip(answer, max_chars))}</pre>', verdicts,
        ])
    if not rows:
        return "<p>No attack generations.</p>"
    return _table(["model", "attack", "behaviour", "attacked prompt", "answer", "verdicts"], rows, "examples")


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1a1a1a;max-width:1500px}
h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f2f2f2}
table.examples td{max-width:520px}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;max-height:260px;overflow:auto}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0;display:block}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:13px}
.err{background:#fdecea;border-left:4px solid #d93025;padding:6px 10px;font-size:13px}
.meta{color:#555;font-size:13px}
ul.cols{font-size:12px;color:#444;margin:4px 0 12px 0;padding-left:18px}
"""

REFUSAL_NOTE = (
    "The refusal-prefix judge measures non-refusal, not harm: empty, off-topic or gibberish answers count "
    "as attack successes, and refusals worded unusually are missed. Compare with a classifier or rubric judge."
)


def build_report(
    results: Mapping,
    generations: Sequence[Mapping] = (),
    metrics: Mapping[str, Sequence[Mapping]] | None = None,
) -> str:
    """The report HTML (a complete document) for ``results`` / ``generations`` / per-model ``metrics``."""
    suite = results.get("suite") or {}
    cfg = (suite.get("config") or {}).get("report") or {}
    per_run = int(cfg.get("examples_per_run", 2))
    max_chars = int(cfg.get("max_answer_chars", 800))
    models = [m["label"] for m in results.get("models", [])]
    rows = results.get("results", [])
    primary = results.get("primary_judge", "")
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>latkit evaluation — {_e(suite.get('name'))}</title><style>{CSS}</style></head><body>",
        f"<h1>latkit evaluation — {_e(suite.get('name'))}</h1>",
        f'<p class="meta">{_e(suite.get("description"))}<br>created {_e(results.get("created"))} · latkit '
        f'{_e(results.get("latkit_version"))} · models: {_e(", ".join(models))} · headline judge: {_e(primary)}</p>',
    ]
    judge_classes = {j["name"]: j.get("class") for j in results.get("judges", [])}
    if judge_classes.get(primary) == "RefusalJudge":
        parts.append(f'<p class="note">{_e(REFUSAL_NOTE)}</p>')
    if results.get("errors"):
        items = "".join(f"<li>{_e(', '.join(f'{k}={v}' for k, v in e.items() if k != 'error'))}: {_e(e['error'])}</li>"
                        for e in results["errors"])
        parts.append(f'<div class="err"><b>Errors</b><ul>{items}</ul></div>')
    parts.append("<h2>Datasets</h2>")
    parts.append(_table(["label", "name", "split", "n"], [[_e(d["label"]), _e(d["name"]), _e(d.get("split") or "–"), _e(d["n"])]
                                                         for d in results.get("datasets", [])]))
    parts.append(_column_notes("datasets"))
    parts.append("<h2>Attack success</h2>")
    parts.append(_results_table(results) if rows else "<p>No attack results.</p>")
    if rows:
        parts.append(_column_notes("results"))
    for title, png in plot_asr_by_attack(rows, models):
        parts.append(_img(png, title))
    sweeps = plot_sweeps(rows)
    if sweeps:
        parts.append("<h2>ASR vs latent ε</h2>")
        for title, png in sweeps:
            parts.append(_img(png, title))
    parts.append("<h2>Utility</h2>")
    parts.append(_utility_table(results))
    parts.append(_column_notes("utility"))
    for title, png in plot_utility_vs_robustness(results):
        parts.append(_img(png, title))
    curves = [(lab, recs) for lab, recs in (metrics or {}).items() if recs]
    if curves:
        parts.append("<h2>Training curves</h2>")
        for lab, recs in curves:
            for title, png in plot_training_curves(lab, recs):
                parts.append(_img(png, title))
            parts.append(_curves_notes(recs))
    agree = _agreement_table(results)
    if agree:
        parts.append("<h2>Judge agreement</h2>" + agree + _column_notes("agreement"))
    parts.append("<h2>Example answers</h2>")
    parts.append(_examples_table(generations, primary, per_run, max_chars))
    parts.append("</body></html>")
    return "\n".join(parts)


def read_generations(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_report(output_dir: str | Path) -> Path:
    """Render ``output_dir/report.html`` from its ``results.json`` and ``generations.jsonl``."""
    out = Path(output_dir)
    res_path = out / "results.json"
    if not res_path.is_file():
        raise FileNotFoundError(f"{res_path} not found: run `latkit eval` first")
    results = json.loads(res_path.read_text(encoding="utf-8"))
    generations = read_generations(out / "generations.jsonl")
    metrics = {m["label"]: read_metrics(m["metrics"]) for m in results.get("models", []) if m.get("metrics")}
    path = out / "report.html"
    path.write_text(build_report(results, generations, metrics), encoding="utf-8")
    return path
