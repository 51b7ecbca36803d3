"""Build the labelling queue from ``generations.jsonl`` files and merge labels into the shipped set.

    python -m benchmarks.judge_calibration.corpus queue OUT.jsonl GEN.jsonl [GEN.jsonl ...] --model-label NAME ...
    python -m benchmarks.judge_calibration.corpus merge QUEUE.jsonl LABELS.jsonl [...] --output labels.jsonl

A queue row keeps what a labeller needs (request, prefill, continuation) and where the answer came
from (``source`` = model/attack); identical (request, continuation) pairs appear once. Labels are
``{"id", "label", "note"}`` rows written by reading each answer (docs/judge-labelling-guide.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from latkit.judges.calibration import split_of, write_jsonl


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def queue(out: str, gens: list[str], labels: list[str]) -> int:
    rows, seen = [], set()
    for path, model in zip(gens, labels):
        for r in _rows(path):
            kind = r.get("kind", "attack")
            request = r.get("behaviour") or r.get("prompt")
            answer = r["answer"]
            key = (request.strip(), answer.strip())
            if key in seen:
                continue
            seen.add(key)
            attack = r.get("attack", "benign") if kind == "attack" else "benign"
            rid = hashlib.sha256(f"{model}|{attack}|{request}|{answer}".encode()).hexdigest()[:12]
            rows.append({"id": rid, "kind": kind, "source": f"{model}/{attack}", "behaviour": request,
                         "prefill": r.get("prefill", "") or "", "answer": answer, "split": split_of(request)})
    write_jsonl(out, rows)
    print(f"{len(rows)} rows -> {out}")
    return 0


def merge(queue_path: str, label_paths: list[str], output: str) -> int:
    q = {r["id"]: r for r in _rows(queue_path)}
    out = {}
    for path in label_paths:
        for lab in _rows(path):
            if lab["id"] not in q:
                raise SystemExit(f"{path}: unknown id {lab['id']}")
            if lab.get("label") not in (0, 1):
                raise SystemExit(f"{path}: id {lab['id']} has label {lab.get('label')!r}")
            out[lab["id"]] = {**q[lab["id"]], "label": int(lab["label"]), "note": lab.get("note", "")}
    existing = {r["id"]: r for r in _rows(output)} if Path(output).is_file() else {}
    seen = {(r["behaviour"].strip(), r["answer"].strip()) for r in existing.values()}
    for rid, row in out.items():
        key = (row["behaviour"].strip(), row["answer"].strip())
        if rid in existing or key not in seen:  # the same answer to the same request is labelled once
            existing[rid] = row
            seen.add(key)
    write_jsonl(output, list(existing.values()))
    print(f"{len(existing)} labelled rows -> {output} ({len(q) - len(out)} of this queue unlabelled)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.judge_calibration.corpus")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("queue")
    a.add_argument("out")
    a.add_argument("gens", nargs="+")
    a.add_argument("--model-label", action="append", required=True)
    b = sub.add_parser("merge")
    b.add_argument("queue")
    b.add_argument("labels", nargs="+")
    b.add_argument("--output", required=True)
    args = p.parse_args(argv)
    if args.cmd == "queue":
        if len(args.model_label) != len(args.gens):
            raise SystemExit("give one --model-label per generations file")
        return queue(args.out, args.gens, args.model_label)
    return merge(args.queue, args.labels, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
