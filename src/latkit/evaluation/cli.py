"""``latkit eval``: attacks × judges × datasets on one or more models, with a report."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` command to a ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate models under attack: ASR with 95%% intervals, utility, report.html",
        description="Run a suite's attacks × judges × datasets and utility metrics on each model; write "
        "DIR/results.json, DIR/generations.jsonl and DIR/report.html.",
    )
    p.add_argument("--model", "-m", action="append", default=[], metavar="MODEL_OR_RUN_DIR",
                   help="smollm2-135m, a local HF dir, a .gguf, a training run dir or a hub id (repeatable)")
    p.add_argument("--suite", "-s", default="quick", help="built-in suite name (quick, full) or a YAML file (default: quick)")
    p.add_argument("--output", "-o", help="output directory")
    p.add_argument("--data-dir", help="directory with harmbench/, strongreject/, advbench/, mmlu/ "
                   "(default: the suite's data_dir or $LATKIT_DATA_DIR)")
    p.add_argument("--base-model", help="base model for KL-to-base when a model is not a PEFT adapter")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype of evaluated models (auto: bfloat16 on a capable GPU, else float32)")
    p.add_argument("--max-new-tokens", type=int, help="override the suite's generation token budget")
    p.add_argument("--batch-size", type=int, help="override the suite's generation batch size")
    p.add_argument("--generation-backend", choices=["hf", "vllm"],
                   help="override the suite's generation.backend (vllm: needs the vllm extra and a CUDA GPU)")
    p.add_argument("--limit", type=int, help="use at most this many behaviours per dataset")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing attack or metric")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results in a non-empty --output (without it, a non-empty --output is refused)")
    p.add_argument("--report-only", action="store_true", help="only re-render DIR/report.html from DIR/results.json")
    p.add_argument("--list-suites", action="store_true", help="print the built-in suites and exit")
    p.set_defaults(func=run_eval)
    return p


def _apply_overrides(suite, args):
    from latkit.evaluation.schema import override_suite

    return override_suite(suite, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          backend=getattr(args, "generation_backend", None), limit=args.limit)


def run_eval(args) -> int:
    from latkit.attacks.base import AttackError
    from latkit.evaluation import suite as S
    from latkit.judges.base import JudgeError

    try:
        if args.list_suites:
            for name in S.builtin_suites():
                print(f"{name}: {S.load_suite(name).description}")
            return 0
        if not args.output:
            raise S.SuiteError("--output DIR is required")
        if args.report_only:
            from latkit.evaluation.report import write_report

            print(f"report written to {write_report(args.output)}")
            return 0
        if not args.model:
            raise S.SuiteError("give at least one --model")
        for flag in ("max_new_tokens", "batch_size", "limit"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise S.SuiteError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
        from latkit.evaluation.safety import check_output_dir, staged_output, validate_before_generation
        from latkit.evaluation.sharding import init_processes

        rank, world, dev = init_processes()  # several under accelerate launch / torchrun: attacks are sharded
        if not rank:  # rank 0 writes the merged results; the others' identical copies go to a scratch dir
            check_output_dir(args.output, overwrite=getattr(args, "overwrite", False))
        suite = _apply_overrides(S.load_suite(args.suite), args)
        validate_before_generation(suite, S.model_specs(args.model), base_model=args.base_model)
        device = args.device
        if world > 1 and device == "auto" and dev is not None and dev.type != "cpu":
            device = str(dev)

        def run(output):
            return S.run_suite(
                suite, args.model, output, data_dir=args.data_dir, base_model=args.base_model,
                device=device, dtype=args.dtype, progress=not args.no_progress and not rank,
                fail_fast=args.fail_fast,
            )

        if rank:
            import shutil
            import tempfile

            scratch = tempfile.mkdtemp(prefix=f"latkit-eval-rank{rank}-")
            try:
                results = run(scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return 1 if results["errors"] else 0
        with staged_output(args.output) as staging:  # the earlier results stay intact until this run finishes
            results = run(staging)
    except (S.SuiteError, JudgeError, AttackError) as exc:
        if getattr(args, "verbose", False):
            raise
        print(f"latkit: error: {exc}", file=sys.stderr)
        return 2
    print(summarize(results))
    print(f"results in {args.output}/results.json, report in {args.output}/report.html")
    for card in update_model_cards(results):
        print(f"evaluation table written to the model card {card}")
    if results["errors"]:
        print(f"latkit: {len(results['errors'])} part(s) failed; see results.json 'errors'", file=sys.stderr)
        return 1
    return 0


def update_model_cards(results: dict) -> list:
    """Put each evaluated latkit model's ASR / utility table into its model card (``README.md``)."""
    from pathlib import Path

    from latkit.models.loading import resolve_model_dir
    from latkit.models.saving import CARD, eval_section, update_card_eval

    done = []
    for m in results.get("models", []):
        src = m.get("source")
        if not src or not Path(str(src)).is_dir():
            continue
        section = eval_section(results, m["label"])
        model_dir = resolve_model_dir(Path(str(src)))
        if section and update_card_eval(model_dir, section):
            done.append(model_dir / CARD)
    return done


def summarize(results: dict) -> str:
    """A plain-text ASR table for the terminal."""
    lines = [f"{'model':<24} {'attack':<28} {'dataset':<20} {'ASR':>7}  95% CI          n"]
    for r in results.get("results", []):
        asr = "–" if r["asr"] is None else f"{100 * r['asr']:.1f}%"
        lo, hi = r["ci95"]
        lines.append(f"{r['model'][:24]:<24} {r['attack'][:28]:<28} {r['dataset'][:20]:<20} {asr:>7}  "
                     f"[{100 * lo:5.1f}, {100 * hi:5.1f}]  {r['n']}")
    for model, rows in (results.get("agreement") or {}).items():
        for row in rows or []:
            a, b = row["judges"]
            kappa = "–" if row.get("kappa") is None else f"{row['kappa']:.2f}"
            agree = "–" if row.get("agreement") is None else f"{100 * row['agreement']:.1f}%"
            lines.append(f"{model}: judges {a} vs {b}: agreement {agree}, κ {kappa} (n={row['n']})")
    for model, u in (results.get("utility") or {}).items():
        bc = (u or {}).get("benign_compliance")
        if bc and bc.get("rate") is not None:
            lines.append(f"{model}: benign compliance {100 * bc['rate']:.1f}% (n={bc['n']})")
        mm = (u or {}).get("mmlu")
        if mm and mm.get("accuracy") is not None:
            lines.append(f"{model}: MMLU accuracy {100 * mm['accuracy']:.1f}% (n={mm['n']})")
    return "\n".join(lines)
