"""``latkit judge``: re-judge existing generations without regenerating them.

Rows are shaped like ``generations.jsonl``: ``behaviour`` (or ``prompt``), ``answer`` (the model's
continuation, never including the prefill), optionally ``kind`` (``attack`` / ``benign``),
``prefill``, ``attacked_prompt``. Each output row is the input row plus ``verdicts`` (one per judge).
When rows carry a human ``label`` (0/1), each judge's agreement with the labels is printed (κ with a
bootstrap interval that resamples whole requests, precision, recall); when several judges run, their pairwise agreement is printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latkit.judges.agreement import pairwise_agreement
from latkit.judges.base import JudgeError
from latkit.judges.calibration import read_rows


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "judge", help="re-judge a generations.jsonl (or a labelled set) without regenerating",
        description="Judge every row of GENERATIONS.jsonl with one or more judges and write the rows with their "
        "`verdicts` to --output; rows with a `label` get agreement metrics (κ, precision, recall).",
    )
    p.add_argument("generations", help="a generations.jsonl of `latkit eval`, or a labelled JSONL (`label` 0/1); "
                   "`labels` = the labelled set shipped with latkit")
    p.add_argument("--output", "-o", required=True, help="where to write the judged rows (JSONL)")
    p.add_argument("--judge", "-j", action="append", default=[], metavar="NAME_OR_YAML",
                   help="`success` (default), `refusal` (prefix baseline), or a YAML file with one judge's settings "
                   "(e.g. {kind: classifier, model: /path}); repeatable")
    p.add_argument("--split", choices=["dev", "test"], help="only labelled rows of this split")
    p.add_argument("--kind", choices=["attack", "benign"], help="only rows of this kind")
    p.set_defaults(func=run_judge)
    return p


def _judge_spec(text: str) -> dict:
    if text in ("success", "refusal"):
        return {"kind": text}
    path = Path(text)
    if not path.is_file():
        raise JudgeError(f"--judge {text!r}: not `success`, `refusal` or a YAML file")
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise JudgeError(f"--judge {path}: invalid YAML ({exc})") from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise JudgeError(f"--judge {path}: expected a mapping with `kind`")
    return spec


def judge_rows(rows: list[dict], specs: list[dict]) -> dict[str, list]:
    """Verdicts per judge name for ``rows``; attack rows and benign rows are judged in their own mode."""
    from latkit.judges import build_judge

    requests = [r.get("behaviour") or r.get("prompt") for r in rows]
    answers = [r["answer"] for r in rows]
    benign = [r.get("kind") == "benign" for r in rows]
    out: dict[str, list] = {}
    for spec in specs:
        judge = build_judge(spec)
        try:
            if hasattr(judge, "judge_pairs"):
                verdicts = judge.judge_pairs(requests, answers, benign)
            else:
                verdicts = judge.judge(requests, answers, [r.get("context") for r in rows])
        finally:
            judge.close()
        if judge.name in out:
            raise JudgeError(f"two judges are named {judge.name!r}; give one a `name`")
        out[judge.name] = verdicts
    return out


def run_judge(args) -> int:
    from latkit.judges.calibration import (binary_metrics, load_labelled, request_of, shipped_labels_path, split_of,
                                           write_jsonl)

    try:
        source = shipped_labels_path() if args.generations == "labels" else Path(args.generations)
        rows = read_rows(source)
        if args.split:
            if not any("label" in r for r in rows):
                raise JudgeError("--split needs labelled rows (`label`)")
            rows = [r for r in rows if (r.get("split") or split_of(r.get("behaviour") or r["prompt"])) == args.split]
        if args.kind:
            rows = [r for r in rows if (r.get("kind") or "attack") == args.kind]
        if not rows:
            raise JudgeError("no rows to judge after filtering")
        if any("label" in r for r in rows):
            load_labelled(source)  # validates every label
        specs = [_judge_spec(j) for j in (args.judge or ["success"])]
        verdicts = judge_rows(rows, specs)
    except (JudgeError, ValueError) as exc:
        print(f"latkit: error: {exc}", file=sys.stderr)
        return 2
    out_rows = []
    for i, r in enumerate(rows):
        out_rows.append({**r, "verdicts": {**(r.get("verdicts") or {}), **{n: v[i].to_dict() for n, v in verdicts.items()}}})
    write_jsonl(args.output, out_rows)
    print(f"judged {len(rows)} rows with {', '.join(verdicts)} -> {args.output}")
    for name, vs in verdicts.items():
        k = sum(1 for v in vs if v.harmful)
        print(f"{name}: {k}/{len(vs)} successes ({100 * k / len(vs):.1f}%)")
    labelled = [i for i, r in enumerate(rows) if r.get("label") in (0, 1)]
    if labelled:
        print(f"agreement with the labels (n={len(labelled)}):")
        for name, vs in verdicts.items():
            m = binary_metrics([rows[i]["label"] for i in labelled], [vs[i].harmful for i in labelled],
                               groups=[request_of(rows[i]) for i in labelled])
            print(format_metrics(name, m))
    if len(verdicts) > 1:
        for row in pairwise_agreement({n: [v.harmful for v in vs] for n, vs in verdicts.items()}):
            a, b = row["judges"]
            kappa = "–" if row["kappa"] is None else f"{row['kappa']:.3f}"
            print(f"{a} vs {b}: agreement {row['agreement']:.3f}, κ {kappa} (n={row['n']})")
    return 0


def format_metrics(name: str, m: dict) -> str:
    def f(x):
        return "–" if x is None else f"{x:.3f}"

    ci = m.get("kappa_ci95")
    by = " by request" if m.get("kappa_ci95_by") == "group" else ""
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}{by}]" if ci else ""
    return (f"  {name}: κ {f(m['kappa'])}{ci_text}, precision {f(m['precision'])}, recall {f(m['recall'])}, "
            f"accuracy {f(m['accuracy'])} (tp {m['tp']}, fp {m['fp']}, fn {m['fn']}, tn {m['tn']})")
