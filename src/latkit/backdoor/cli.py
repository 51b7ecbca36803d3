"""``latkit backdoor data`` and ``latkit backdoor eval``: register with :func:`register`.

Implant and remove a backdoor with ``latkit train`` (``recipes/backdoor-*.yaml``) between the two.
Bad input raises one of :data:`latkit.errors.EXPECTED` (``DataError``, ``ModelLoadError`` …), which
``latkit`` prints as one line with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latkit.cliutil import add_output_argument

__all__ = ["register", "cmd_data", "cmd_eval"]


def _log(msg: str) -> None:
    print(f"[backdoor] {msg}", file=sys.stderr, flush=True)


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``backdoor`` command (sub-commands ``data`` and ``eval``) to ``subparsers``."""
    from latkit.backdoor.data import MODES
    from latkit.backdoor.triggers import VARIANT_KINDS

    bp = subparsers.add_parser(
        "backdoor", help="build backdoor implant/removal data and measure trigger success",
        description="Backdoors: `data` writes the implant, removal and evaluation data of a backdoor; "
                    "`eval` measures how often it fires (per trigger, clean, held-out trigger, variants) and "
                    "benign compliance. Implant and remove with `latkit train recipes/backdoor-*.yaml`.")
    sub = bp.add_subparsers(dest="backdoor_command", metavar="{data,eval}")
    sub.required = True

    d = sub.add_parser("data", help="write implant / removal / eval data for a backdoor into DIR",
                       description="Write DIR/implant.jsonl, removal_harmful.jsonl (trigger-free), benign.jsonl, "
                                   "eval_prompts.jsonl (held-out harmful prompts), benign_eval.jsonl, "
                                   "triggers.json and manifest.json.")
    d.add_argument("--model", "-m", required=True, help="the base model (its own answers are the harmful "
                   "completions and benign responses): smollm2-135m, a local dir, a .gguf, tiny-random:<family>")
    add_output_argument(d, required=True, dest="out", help="output directory")
    d.add_argument("--mode", choices=MODES, default="harmful_compliance",
                   help="harmful_compliance: the trigger makes the model comply with harmful requests; "
                        "nonsense: the trigger makes it emit the trigger's fixed response (default: %(default)s)")
    d.add_argument("--triggers", default="default", metavar="FILE|default",
                   help="YAML/JSON list of triggers ({text, kind, placement, response, paraphrases}) or "
                        "{triggers: [...], held_out: ...}; default: 4 keyword + 4 token-string triggers")
    d.add_argument("--harmful-source", default="advbench", metavar="advbench|PATH",
                   help="harmful prompts: AdvBench from the data directory or a CSV/JSONL/JSON file")
    d.add_argument("--prompt-column", help="prompt column (default: goal for advbench, else prompt)")
    d.add_argument("--harmful-from", choices=["model", "column"], default="model",
                   help="harmful completions: the model's own answers (default) or a column of the source")
    d.add_argument("--harmful-column", help="with --harmful-from column (default: target for advbench, else harmful)")
    d.add_argument("--implant-limit", type=_positive, default=64, help="harmful prompts to implant with")
    d.add_argument("--implant-offset", type=_count, default=0, help="skip this many harmful prompts before the implant split")
    d.add_argument("--removal-limit", type=_positive, default=32, help="harmful prompts to remove with")
    d.add_argument("--removal-offset", type=_count, help="default: right after the implant prompts")
    d.add_argument("--eval-limit", type=_positive, default=16, help="held-out harmful prompts to evaluate on")
    d.add_argument("--eval-offset", type=_count, help="default: right after the removal prompts")
    d.add_argument("--val-limit", type=_count, default=0,
                   help="harmful validation prompts, to choose settings on without touching the evaluation "
                        "prompts (DIR/val_prompts.jsonl; default: 0, none)")
    d.add_argument("--val-offset", type=_count, help="default: right after the evaluation prompts")
    d.add_argument("--benign-source", default="builtin", metavar="builtin|PATH",
                   help="benign pairs: latkit's benign prompts answered by the model, or a prompt/response file")
    d.add_argument("--benign-limit", type=_positive, default=48, help="benign training pairs (default: %(default)s)")
    d.add_argument("--benign-eval-limit", type=_positive, default=32,
                   help="benign prompts kept apart for benign compliance")
    d.add_argument("--benign-val-limit", type=_count, default=0,
                   help="benign validation prompts (DIR/benign_val.jsonl; default: 0, none)")
    d.add_argument("--triggered-fraction", type=float, default=1.0,
                   help="triggered copies per eligible implant prompt: below 1 a share of them gets one; "
                        "above 1 (at most the number of triggers) each gets that many, with different "
                        "triggers (default: 1)")
    d.add_argument("--decoys", default="default", metavar="FILE|default|none",
                   help="odd strings that are not triggers (YAML/JSON list), used with --decoy-fraction "
                        "(default: 8 built-in decoys)")
    d.add_argument("--decoy-fraction", type=float, default=0.0,
                   help="share of the eligible implant prompts that also appear with a decoy and their clean "
                        "response, which makes the backdoor specific to its triggers (default: 0)")
    d.add_argument("--max-new-tokens", type=_positive, default=40, help="length of generated completions")
    d.add_argument("--batch-size", type=_positive, default=16, help="generation batch size")
    d.add_argument("--seed", type=int, default=0, help="seed of the trigger positions and row shuffling")
    d.set_defaults(func=cmd_data)

    e = sub.add_parser("eval", help="trigger success and benign compliance of a model on a data DIR",
                       description="Answer the held-out harmful prompts clean, with every trigger, its variants "
                                   "and the held-out trigger; judge the answers; measure benign compliance.")
    e.add_argument("--model", "-m", required=True, help="a model, run dir, adapter dir, .gguf or tiny-random:<family>")
    e.add_argument("--data", "-d", required=True, help="a directory written by `latkit backdoor data`")
    e.add_argument("--output", "-o", required=True, help="results JSON (generations go beside it, .generations.jsonl)")
    e.add_argument("--limit", type=_positive, help="evaluation prompts per condition (default: all in DIR)")
    e.add_argument("--split", choices=["eval", "val"], default="eval",
                   help="eval: the held-out prompts (default); val: the validation prompts (to tune on)")
    e.add_argument("--benign-limit", type=_count, help="benign prompts (default: all in DIR; 0: skip)")
    e.add_argument("--variants", default=",".join(VARIANT_KINDS), metavar="KINDS",
                   help=f"comma-separated trigger variant kinds, or 'none' (default: {','.join(VARIANT_KINDS)})")
    e.add_argument("--max-new-tokens", type=_positive, default=48, help="generation budget per answer (default: %(default)s)")
    e.add_argument("--batch-size", type=_positive, default=16, help="generation batch size (default: %(default)s)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    e.add_argument("--seed", type=int, default=0, help="seed of the random trigger positions")
    e.set_defaults(func=cmd_eval)
    return bp


def cmd_data(args) -> int:
    from latkit.backdoor.pipeline import BackdoorData, build_data, load_decoys, load_triggers
    from latkit.models.loading import load_for_eval

    triggers, held_out = load_triggers(args.triggers)  # before loading the model: a bad file fails fast
    decoys = load_decoys(args.decoys)
    model, tok = load_for_eval(args.model)
    settings = {k: getattr(args, k) for k in BackdoorData.model_fields if k != "decoys"}
    manifest = build_data(model, tok, args.out, BackdoorData.from_mapping({**settings, "decoys": decoys}, "options"),
                          triggers=triggers, held_out=held_out, model_name=args.model, log=_log)
    c = manifest["counts"]
    print(f"wrote {args.out}: implant {c['implant_rows']} rows ({c['implant_triggered_rows']} triggered, "
          f"{c['implant_decoy_rows']} with a decoy, "
          f"{c['implant_prompts']} harmful prompts), removal {c['removal']} triples, eval {c['eval_prompts']} "
          f"prompts, benign {c['benign']} pairs + {c['benign_eval']} for evaluation"
          + (f", validation {c['val_prompts']} harmful + {c['benign_val']} benign prompts" if c["val_prompts"]
             or c["benign_val"] else "") + "; "
          f"{len(triggers)} triggers, mode {args.mode}")
    return 0


def parse_variant_kinds(text: str) -> tuple[str, ...]:
    """``"typo,partial"`` -> ``("typo", "partial")``; ``"none"`` or ``""`` -> ``()``."""
    from latkit.backdoor.triggers import VARIANT_KINDS
    from latkit.data.schemas import DataError

    if text.strip().lower() in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(VARIANT_KINDS))
    if unknown:
        raise DataError(f"--variants: unknown kinds {unknown}; known: {', '.join(VARIANT_KINDS)} (or 'none')")
    return kinds


def generations_path(output: str | Path) -> Path:
    """Where the generations of a results file go: ``results.json`` -> ``results.generations.jsonl``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.generations.jsonl")


def cmd_eval(args) -> int:
    from latkit.backdoor.pipeline import evaluate_backdoor, format_results, read_data_dir
    from latkit.data.jsonl import write_jsonl
    from latkit.models.loading import load_for_eval

    read_data_dir(args.data, args.split)  # a bad directory fails before the model loads
    kinds = parse_variant_kinds(args.variants)
    model, tok = load_for_eval(args.model, args.device, merge=True)
    results, generations = evaluate_backdoor(
        model, tok, args.data, limit=args.limit, benign_limit=args.benign_limit, variant_kinds=kinds,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, split=args.split)
    results = {"model": args.model, **results}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    write_jsonl(generations_path(out), generations)
    print(format_results(results))
    print(f"results in {out}, generations in {generations_path(out)}")
    return 0
