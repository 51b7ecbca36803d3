"""``latkit sweep SWEEP.yaml --output DIR``: register with :func:`register`."""
from __future__ import annotations

import argparse

from latkit.cliutil import add_output_argument

__all__ = ["register"]


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep", help="train and evaluate a grid of recipe overrides; report robustness against utility",
        description="Train every point of SWEEP (methods × override grids), evaluate each with the sweep's suite, "
                    "and write DIR/report.md, DIR/sweep.json and DIR/pareto.png: mean ASR against benign "
                    "compliance, the Pareto front, the matched-utility pick. Rerun the same command to resume.")
    p.add_argument("sweep", help="a sweep YAML file (see docs/sweep.md)")
    add_output_argument(p, required=True, help="sweep directory (points/, references/, sweep.json, report.md)")
    p.add_argument("--only", action="append", default=[], metavar="METHOD_OR_ID",
                   help="run only this method's points or this point (repeatable); the report covers all")
    p.add_argument("--dry-run", action="store_true", help="list the points and their status; train nothing")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from what DIR holds")
    p.add_argument("--device", default="auto", help="evaluation device: cpu, cuda … (default: cuda when available)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing point")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args) -> int:
    from pathlib import Path

    from latkit.sweep.config import load_sweep
    from latkit.sweep.report import write_report
    from latkit.sweep.runner import load_points, run_sweep, sweep_status

    cfg = load_sweep(args.sweep)
    if args.dry_run:
        rows = sweep_status(cfg, args.output)
        for r in rows:
            sets = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(recipe as is)"
            print(f"{r['id']:<28} {r['status']:<10} {sets}")
        print(f"{len(rows)} points; references: {', '.join(cfg.references) or 'none'}")
        return 0
    if args.report_only:
        summary = write_report(cfg, Path(args.output), load_points(cfg, args.output))
    else:
        summary = run_sweep(cfg, args.output, only=args.only or None, device=args.device,
                            progress=not args.no_progress, fail_fast=args.fail_fast)
    print((Path(args.output) / "report.md").read_text())
    failed = [p["id"] for p in summary["points"] if p.get("status") == "failed"]
    if failed:
        print(f"latkit: {len(failed)} point(s) failed: {', '.join(failed)}; rerun to retry them")
        return 1
    return 0
