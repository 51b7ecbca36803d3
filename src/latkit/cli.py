"""The ``latkit`` command line: train, info, and (when installed) eval / analyze."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _train(args) -> int:
    from latkit.train import Trainer, load_recipe
    from latkit.train.summary import summarize_run

    recipe = load_recipe(args.recipe, args.set)
    trainer = Trainer(recipe, args.output, resume=args.resume, progress=not args.no_progress)
    model_dir = trainer.train()
    if trainer.is_main:
        print(summarize_run(Path(args.output)))
        print(f"model written to {model_dir}")
    return 0


def _info(args) -> int:
    from latkit.models.adapter import ModelAdapter
    from latkit.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(args.model, require_chat_template=False,
                                          trust_remote_code=args.trust_remote_code)
    info = ModelAdapter.from_model(model).describe()
    info["chat_template"] = bool(getattr(tok, "chat_template", None))
    info["bos_token"] = tok.bos_token
    info["eos_token"] = tok.eos_token
    info["pad_token"] = tok.pad_token
    info["vocab_size"] = len(tok)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latkit", description="Latent adversarial training for HF decoder LLMs.")
    p.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run a training recipe (RT, RT-EAT, LAT, RLP …)")
    t.add_argument("recipe", help="recipe YAML file (see recipes/)")
    t.add_argument("--output", "-o", required=True, help="run directory (recipe.yaml, metrics.jsonl, checkpoints/, model/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=10 (repeatable; values are YAML)")
    t.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    i = sub.add_parser("info", help="show how latkit sees a model (family, layers, hidden size, chat template)")
    i.add_argument("model", help="smollm2-135m, a local dir, a .gguf file, a run dir or a hub id")
    i.add_argument("--json", action="store_true")
    i.add_argument("--trust-remote-code", action="store_true")
    i.set_defaults(func=_info)

    for mod in ("latkit.evaluation.cli", "latkit.judges.cli", "latkit.analysis.cli", "latkit.backdoor.cli", "latkit.unlearning.cli"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ImportError as e:
            if "latkit" in str(e):
                continue
            raise
        module.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars; latkit shows its own
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("latkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for expected errors; traceback with -v
        if args.verbose:
            raise
        from latkit.errors import EXPECTED

        if isinstance(e, EXPECTED):
            print(f"latkit: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"latkit: unexpected {type(e).__name__}: {e} (rerun with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
