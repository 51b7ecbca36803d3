"""The ``latkit`` command line: train, recipes, info, export, and (when installed) eval / analyze / backdoor / unlearn."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _train(args) -> int:
    from latkit.classifiers.recipe import is_classifier_recipe, read_yaml
    from latkit.train import Trainer, load_recipe
    from latkit.train.summary import summarize_run

    if is_classifier_recipe(read_yaml(args.recipe)):  # `kind: classifier`: an image / text classifier run
        return _train_classifier(args)
    recipe = load_recipe(args.recipe, args.set)
    trainer = Trainer(recipe, args.output, resume=args.resume, progress=not args.no_progress)
    model_dir = trainer.train()
    if trainer.is_main:
        print(summarize_run(Path(args.output)))
        print(f"model written to {model_dir}")
    return 0


def _train_classifier(args) -> int:
    from latkit.classifiers.recipe import load_recipe
    from latkit.classifiers.trainer import train
    from latkit.train.summary import summarize_run

    recipe = load_recipe(args.recipe, args.set)
    model_dir = train(recipe, args.output, resume=args.resume, progress=not args.no_progress)
    print(summarize_run(Path(args.output)))
    print(f"model written to {model_dir}")
    return 0


def _classifier_eval(args) -> int | None:
    """``latkit eval --model RUN …`` on classifier runs (None: not classifier runs, the decoder evaluation runs)."""
    from latkit.classifiers.evaluate import evaluate_runs, is_classifier_run
    from latkit.classifiers.modality import ClassifierError

    models = getattr(args, "model", None) or []
    kinds = [is_classifier_run(m) for m in models]
    if not any(kinds):
        return None
    if not all(kinds):
        raise ClassifierError("--model mixes classifier runs and language models: evaluate them separately")
    if not args.output:
        raise ClassifierError("--output DIR is required")
    if args.limit is not None and args.limit < 1:
        raise ClassifierError(f"--limit must be a positive integer, got {args.limit}")
    device = "cpu" if args.device == "auto" else args.device
    results = evaluate_runs(models, args.output, device=device, limit=args.limit, progress=not args.no_progress,
                            overwrite=args.overwrite)
    for m in results["models"]:
        s = m["summary"]
        novel = s.get("novel_mean_accuracy")
        bd = s.get("backdoor_success")
        print(f"{m['label']}: clean {100 * s['clean_accuracy']:.1f}%, "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["seen"].items())
              + ("" if novel is None else f", novel mean {100 * novel:.1f}%")
              + ("" if bd is None else f", backdoor success {100 * bd:.1f}%") + f" (n={s['n']})")
    print(f"results in {args.output}/results.json, report in {args.output}/report.md")
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


def _recipes(args) -> int:
    from latkit.train.catalog import copy_recipe, describe, find_recipe, list_recipes, recipes_dir
    from latkit.train.recipe import RecipeError

    if args.action in (None, "list", "ls"):
        shipped = list_recipes()
        if not shipped:
            raise RecipeError("no shipped recipes found (a broken install?)")
        width = max(len(n) for n in shipped)
        for name, path in shipped.items():
            print(f"{name:<{width}}  {describe(path)}")
        print(f"\n({recipes_dir()}; `latkit recipes show NAME`, `latkit recipes copy NAME [DEST]`, "
              "`latkit train NAME --output DIR`)")
        return 0
    if not args.name:
        raise RecipeError(f"latkit recipes {args.action}: give a recipe NAME (see `latkit recipes`)")
    if args.action == "show":
        sys.stdout.write(find_recipe(args.name).read_text())
        return 0
    dest = copy_recipe(args.name, args.dest or ".", force=args.force)
    print(f"copied {args.name} to {dest}")
    return 0


def _export(args) -> int:
    from latkit.models.saving import export_run

    out = export_run(args.run, args.output, merge=args.merge, push_to_hub=args.push_to_hub,
                     private=args.private)
    print(f"exported {args.run} to {out}")
    return 0


def _version() -> str:
    from latkit import __version__

    return f"latkit {__version__}"


def build_parser() -> argparse.ArgumentParser:
    from latkit.cliutil import add_output_argument, add_verbose_everywhere

    p = argparse.ArgumentParser(prog="latkit", description="Latent adversarial training for HF decoder LLMs.")
    p.add_argument("--version", action="version", version=_version(), help="print latkit's version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run a training recipe (RT, RT-EAT, LAT, RLP …)")
    t.add_argument("recipe", help="a recipe YAML file, or a shipped recipe's name (see `latkit recipes`)")
    add_output_argument(t, required=True, help="run directory (recipe.yaml, metrics.jsonl, checkpoints/, model/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=10 (repeatable; values are YAML)")
    t.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    i = sub.add_parser("info", help="show how latkit sees a model (family, layers, hidden size, chat template)")
    i.add_argument("model", help="smollm2-135m, a local dir, a .gguf file, a run dir or a hub id")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code from its directory / hub repo (off by default)")
    i.set_defaults(func=_info)

    r = sub.add_parser("recipes", help="list, print or copy the shipped recipes",
                       description="`latkit recipes` lists the recipes shipped with latkit; `show NAME` prints "
                                   "one, `copy NAME [DEST]` copies it to edit (DEST: a file or directory, default .).")
    r.add_argument("action", nargs="?", choices=["list", "ls", "show", "copy", "cp"], default="list",
                   help="list (default), show or copy")
    r.add_argument("name", nargs="?", help="recipe name, e.g. quickstart")
    r.add_argument("dest", nargs="?", help="copy: destination file or directory (default: the current directory)")
    r.add_argument("--force", action="store_true", help="copy: overwrite an existing file")
    r.set_defaults(func=_recipes)

    e = sub.add_parser("export", help="export a run's model: the PEFT adapter, or with --merge a merged model",
                       description="Write RUN's final model (or a checkpoint dir's) to DIR with a model card: the "
                                   "PEFT adapter as is, or with --merge the LoRA merged into its base (loadable with "
                                   "AutoModelForCausalLM.from_pretrained); optionally push it to the hub.")
    e.add_argument("run", help="a run directory, its model/ dir, or a checkpoints/step-N dir")
    add_output_argument(e, required=True, help="directory to write the exported model to")
    e.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the base weights")
    e.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload DIR to this hub repo (needs a reachable hub "
                   "and a login)")
    e.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    e.set_defaults(func=_export)

    for mod in ("latkit.evaluation.cli", "latkit.judges.cli", "latkit.analysis.cli", "latkit.backdoor.cli", "latkit.unlearning.cli",
                "latkit.sweep.cli"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ImportError as e:
            if "latkit" in str(e):
                continue
            raise
        module.register(sub)
    add_verbose_everywhere(p)  # -v/--verbose before or after the sub-command
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    if args.command == "recipes" and args.action == "cp":
        args.action = "copy"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars; latkit shows its own
    try:
        if args.command == "eval":
            done = _classifier_eval(args)
            if done is not None:
                return done
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
