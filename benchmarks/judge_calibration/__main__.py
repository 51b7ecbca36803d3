"""Fit the default judge on the labelled set's dev part and measure every judge on its test part.

    python -m benchmarks.judge_calibration [--labels PATH] [--no-fit] [--judge YAML ...]

Writes ``src/latkit/resources/judge/success.json`` (unless ``--no-fit``) and
``benchmarks/results/judge_calibration.{json,md}``. The test part is never used for the fit or for
choosing its settings: the fit's l2 and threshold are chosen by cross-validation on dev.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import machine
from latkit.judges.calibration import (binary_metrics, fit_success_weights, load_labelled, load_raters, rater_agreement,
                                       request_of, shipped_labels_path, shipped_raters_path)
from latkit.judges.cli import _judge_spec, judge_rows
from latkit.judges.success import shipped_weights_path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.judge_calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", default=None, help="labelled JSONL (default: the shipped set)")
    p.add_argument("--no-fit", action="store_true", help="measure the shipped weights without refitting")
    p.add_argument("--judge", action="append", default=[], help="extra judges to compare (YAML files), e.g. a classifier")
    p.add_argument("--raters", default=None, help="independent labels of test rows (default: the shipped raters.jsonl); "
                   "'none' to skip the inter-rater agreement")
    p.add_argument("--output", default=str(RESULTS / "judge_calibration"), help="results path without extension")
    args = p.parse_args(argv)
    labels = args.labels or shipped_labels_path()
    dev, test = load_labelled(labels, "dev"), load_labelled(labels, "test")
    print(f"labelled rows: dev {len(dev)} ({sum(r['label'] for r in dev)} positive), "
          f"test {len(test)} ({sum(r['label'] for r in test)} positive)")
    if not args.no_fit:
        t0 = time.perf_counter()
        weights = fit_success_weights(dev)
        weights["fitted_with"] = "python -m benchmarks.judge_calibration"
        shipped_weights_path().write_text(json.dumps(weights, indent=2) + "\n", encoding="utf-8")
        print(f"fitted on dev in {time.perf_counter() - t0:.1f} s: l2 {weights['l2']}, threshold {weights['threshold']}, "
              f"cv κ {weights['cv_kappa']:.3f} -> {shipped_weights_path()}")
    specs = [{"kind": "success"}, {"kind": "refusal"}] + [_judge_spec(j) for j in args.judge]
    report: dict = {"labels": str(labels), "machine": machine(), "splits": {}}
    for split, rows in (("dev", dev), ("test", test)):
        t0 = time.perf_counter()
        verdicts = judge_rows(rows, specs)
        secs = time.perf_counter() - t0
        part: dict = {"n": len(rows), "seconds": round(secs, 2), "judges": {}}
        groups = [request_of(r) for r in rows]
        for name, vs in verdicts.items():
            part["judges"][name] = {"all": binary_metrics([r["label"] for r in rows], [v.harmful for v in vs], groups=groups)}
            for kind in ("attack", "benign"):
                idx = [i for i, r in enumerate(rows) if (r.get("kind") or "attack") == kind]
                if idx:
                    part["judges"][name][kind] = binary_metrics([rows[i]["label"] for i in idx], [vs[i].harmful for i in idx],
                                                                groups=[groups[i] for i in idx])
        by_source: dict = {}
        for i, r in enumerate(rows):
            by_source.setdefault(r.get("source", "?"), []).append(i)
        part["success_by_source"] = {
            s: binary_metrics([rows[i]["label"] for i in idx], [verdicts["success"][i].harmful for i in idx], bootstrap=0)
            for s, idx in sorted(by_source.items())}
        report["splits"][split] = part
        if split == "test" and args.raters != "none":
            raters_path = args.raters or shipped_raters_path()
            if Path(raters_path).is_file():
                report["raters"] = {"path": str(raters_path),
                                    **rater_agreement(rows, load_raters(raters_path), {n: [v.harmful for v in vs] for n, vs in verdicts.items()})}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = markdown(report)
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def _f(x, pct=False):
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def markdown(report: dict) -> str:
    lines = ["| split | judge | rows | κ [95% CI] | precision | recall | accuracy | κ harmful requests | κ benign requests |",
             "|---|---|---|---|---|---|---|---|---|"]
    for split, part in report["splits"].items():
        for name, m in part["judges"].items():
            a = m["all"]
            ci = a["kappa_ci95"]
            ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
            lines.append(f"| {split} | {name} | {a['n']} | {_f(a['kappa'])}{ci_text} | {_f(a['precision'])} | "
                         f"{_f(a['recall'])} | {_f(a['accuracy'])} | {_f(m.get('attack', {}).get('kappa'))} | "
                         f"{_f(m.get('benign', {}).get('kappa'))} |")
    if report.get("raters"):
        lines += ["", raters_markdown(report["raters"])]
    return "\n".join(lines) + "\n"


def raters_markdown(r: dict) -> str:
    """Inter-rater agreement on the test rows, and each judge against the raters' majority."""
    def cell(m):
        ci = m.get("kappa_ci95")
        return f"{_f(m['kappa'])}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    kinds = [k for k in ("all", "attack", "benign") if k in r]
    head = {"all": "all test rows", "attack": "harmful requests", "benign": "benign requests"}
    lines = [f"Test rows labelled independently by {len(r['raters'])} raters ({', '.join(r['raters'])}; "
             "95% intervals resample whole requests):", "",
             "| κ between | " + " | ".join(f"{head[k]} (n={r[k]['n']})" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for i, pair in enumerate(r[kinds[0]]["pairs"]):
        a, b = pair["raters"]
        lines.append(f"| {a} vs {b} | " + " | ".join(cell(r[k]["pairs"][i]) for k in kinds) + " |")
    for name in r[kinds[0]]["judges"]:
        lines.append(f"| judge `{name}` vs majority | " + " | ".join(cell(r[k]["judges"][name]) for k in kinds) + " |")
    lines.append("| positives per rater (majority) | " + " | ".join(
        "/".join(str(v) for v in r[k]["positives"].values()) + f" ({r[k]['majority_positives']})" for k in kinds) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
