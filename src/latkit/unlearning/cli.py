"""``latkit unlearn facts | implant | eval``: register with :func:`register`.

The unlearning itself is ``latkit train recipes/unlearn-*.yaml`` (the one trainer loop, GA / RMU with or
without a LAT adversary); these commands make its data, the model that knows the facts, and measure it::

    latkit unlearn facts --output runs/unlearn/data
    latkit unlearn implant --model smollm2-135m --texts runs/unlearn/data/forget.jsonl \\
        runs/unlearn/data/retain.jsonl --output runs/unlearn/implanted --steps 160
    latkit train recipes/unlearn-ga-lat.yaml --output runs/unlearn/ga-lat
    latkit unlearn eval --model runs/unlearn/ga-lat --data runs/unlearn/data --relearn --output ga-lat.json

Bad input raises one of :data:`latkit.errors.EXPECTED` (``DataError``, ``ModelLoadError`` …), which
``latkit`` prints as one line with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latkit.cliutil import add_output_argument

__all__ = ["register", "cmd_facts", "cmd_implant", "cmd_eval", "format_report"]


def _log(msg: str) -> None:
    print(f"[unlearn] {msg}", file=sys.stderr, flush=True)


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def _steps(value: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts such as 0,5,10, got {value!r}") \
            from None
    if not steps or min(steps) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts >= 0, got {value!r}")
    return steps


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``unlearn`` command (sub-commands ``facts``, ``implant`` and ``eval``) to ``subparsers``."""
    from latkit.unlearning.evaluate import SCORINGS
    from latkit.unlearning.facts import TOPICS
    from latkit.unlearning.relearn import RelearnConfig

    up = subparsers.add_parser(
        "unlearn", help="fictional facts to unlearn, implanting them, and knowledge / relearning evaluation",
        description="Unlearning: `facts` writes a fictional-fact corpus split into forget / retain / relearn; "
                    "`implant` teaches a model texts (LoRA merged into the weights); `eval` measures knowledge "
                    "of the facts and the relearning attack. Unlearn with `latkit train recipes/unlearn-*.yaml`.")
    sub = up.add_subparsers(dest="unlearn_command", metavar="{facts,implant,eval}")
    sub.required = True

    f = sub.add_parser("facts", help="write a fictional-fact corpus and its forget/retain split into DIR",
                       description="Write DIR/forget.jsonl, retain.jsonl, relearn.jsonl (texts), mcq_forget.jsonl, "
                                   "mcq_retain.jsonl, mcq_forget_eval.jsonl (questions with cloze contexts) and "
                                   "split.json. relearn ⊂ forget; forget_eval = forget − relearn.")
    add_output_argument(f, required=True, dest="out", help="output directory")
    f.add_argument("--n-per-topic", type=_positive, default=24, help="facts per topic (default: %(default)s)")
    f.add_argument("--forget-topic", default="scientist", help=f"topic to unlearn, one of {', '.join(TOPICS)} "
                   "(comma-separated for several; default: %(default)s)")
    f.add_argument("--topics", help="comma-separated topics to generate (default: all)")
    f.add_argument("--relearn-fraction", type=float, default=0.5,
                   help="share of the forget facts whose text the relearning attack gets (default: %(default)s)")
    f.add_argument("--paraphrases", type=_positive, help="statements per fact in the texts (default: all 4)")
    f.add_argument("--seed", type=int, default=0, help="seed of the generated facts and splits (default: %(default)s)")
    f.set_defaults(func=cmd_facts)

    i = sub.add_parser("implant", help="teach a model texts (fresh LoRA, merged) and save it as a model dir",
                       description="Fine-tune a fresh LoRA on the texts with the LM loss, merge it into the "
                                   "weights and save the model (safetensors) and tokenizer into OUT, loadable as "
                                   "`model.name: OUT` in a recipe. OUT/implant.json records settings and losses.")
    i.add_argument("--model", "-m", default="smollm2-135m", help="smollm2-135m (default), a local dir, a .gguf, a "
                   "run dir or tiny-random:<family>")
    i.add_argument("--texts", "-t", nargs="+", required=True, metavar="FILE",
                   help=".txt (one text a line) or CSV/JSONL/JSON files with a 'text' column")
    add_output_argument(i, required=True, dest="out", help="output model directory")
    i.add_argument("--steps", type=_positive, default=160, help="optimizer steps (default: %(default)s)")
    i.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    i.add_argument("--batch-size", type=_positive, default=16, help="texts per step (default: %(default)s)")
    i.add_argument("--rank", type=_positive, default=16, help="LoRA rank (default: %(default)s; alpha = 2 × rank)")
    i.add_argument("--max-length", type=_positive, default=128, help="tokens per text (default: %(default)s)")
    i.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (default: %(default)s)")
    i.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    i.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    i.set_defaults(func=cmd_implant)

    e = sub.add_parser("eval", help="knowledge of the facts (forget / retain / forget_eval) and relearning",
                       description="Accuracy on DIR's mcq_forget / mcq_retain / mcq_forget_eval questions and, "
                                   "with --relearn, forget_eval accuracy after each number of LoRA fine-tuning "
                                   "steps on DIR/relearn.jsonl (the relearning attack; the model is unchanged).")
    e.add_argument("--model", "-m", required=True, help="a model, run dir, adapter dir, .gguf or tiny-random:<family>")
    e.add_argument("--data", "-d", required=True, help="a directory written by `latkit unlearn facts` (or with the "
                   "same file names)")
    e.add_argument("--output", "-o", help="results JSON")
    e.add_argument("--scoring", choices=SCORINGS, default="cloze",
                   help="cloze: which choice best completes the fact's sentence (default); letter: MMLU-style "
                        "answer letter (at chance for models below ~1B parameters)")
    e.add_argument("--batch-size", type=_positive, default=16, help="scoring batch size (default: %(default)s)")
    e.add_argument("--relearn", action="store_true", help="run the relearning attack")
    default = RelearnConfig()
    e.add_argument("--relearn-steps", type=_steps, default=default.steps,
                   help="step counts at which forget_eval is measured (default: "
                        f"{','.join(map(str, default.steps))})")
    e.add_argument("--relearn-lr", type=float, default=default.learning_rate,
                   help="relearning learning rate (default: %(default)s)")
    e.add_argument("--relearn-batch-size", type=_positive, default=default.batch_size,
                   help="relearn texts per step (default: %(default)s)")
    e.add_argument("--relearn-rank", type=_positive, default=default.lora.r,
                   help="relearning LoRA rank (default: %(default)s; alpha = 2 × rank)")
    e.add_argument("--relearn-texts", default=default.texts,
                   help="what the attack trains on: relearn (other facts of the forgotten topic, default), retain "
                        "(unrelated text), forget, or a .jsonl file with a text column")
    e.add_argument("--relearn-max-texts", type=_positive, default=None,
                   help="train on only the first N of those texts (e.g. 10 unrelated examples)")
    e.add_argument("--seed", type=int, default=0, help="seed of the relearning attack")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    e.set_defaults(func=cmd_eval)
    return up


def _list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def cmd_facts(args) -> int:
    from latkit.unlearning.facts import write_fact_data

    forget = _list(args.forget_topic)
    rec = write_fact_data(args.out, n_per_topic=args.n_per_topic, forget_topic=forget[0] if len(forget) == 1
                          else forget, topics=_list(args.topics), seed=args.seed,
                          relearn_fraction=args.relearn_fraction, paraphrases=args.paraphrases)
    c = rec["counts"]
    print(f"wrote {args.out}: {c['forget']} forget facts ({', '.join(rec['forget_topics'])}; {c['relearn']} relearn, "
          f"{c['forget_eval']} forget_eval), {c['retain']} retain facts; files: {', '.join(rec['files'].values())}, "
          "split.json")
    return 0


def cmd_implant(args) -> int:
    from latkit.data.schemas import DataError
    from latkit.models.lora import LoraSettings
    from latkit.unlearning.relearn import implant_model_dir

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise DataError(f"{out} already exists; give another --output or --overwrite")
    rec = implant_model_dir(args.model, args.texts, out, steps=args.steps, lr=args.lr, device=args.device, log=_log,
                            batch_size=args.batch_size, lora=LoraSettings(r=args.rank, alpha=2 * args.rank),
                            seed=args.seed, max_length=args.max_length, max_grad_norm=args.max_grad_norm)
    losses = rec["losses"]
    print(f"implanted {rec['n_texts']} texts into {args.model} in {rec['steps']} steps ({rec['wall_s']:.0f} s; "
          f"LM loss {losses[0]:.3f} -> {losses[-1]:.3f}); model written to {out}")
    return 0


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def format_report(results: dict) -> str:
    """A plain-text summary of :func:`latkit.unlearning.datadir.evaluate_data_dir` results."""
    lines = [f"{results.get('model', 'model')}  (scoring: {results['scoring']}, chance 25%)"]
    for part, acc in results["accuracy"].items():
        lo, hi = acc["ci95"]
        lines.append(f"  {part:<12} {_pct(acc['accuracy']):>7}  95% CI [{100 * lo:5.1f}, {100 * hi:5.1f}]  "
                     f"n={acc['n']}")
    rl = results.get("relearn")
    if rl:
        curve = "  ".join(f"{s}: {_pct(a)}" for s, a in zip(rl["steps"], rl["accuracy"]))
        lines.append(f"  relearning (forget_eval accuracy after N steps on {rl['n_texts']} "
                     f"{rl.get('texts', 'relearn')} texts): {curve}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from latkit.unlearning.data import split_files
    from latkit.unlearning.datadir import attack_texts, evaluate_data_dir
    from latkit.models.loading import load_for_eval
    from latkit.unlearning.relearn import RelearnConfig

    split_files(args.data)  # a bad directory fails before the model loads
    relearn = None
    if args.relearn:
        from latkit.models.lora import LoraSettings

        relearn = RelearnConfig(steps=args.relearn_steps, learning_rate=args.relearn_lr,
                                batch_size=args.relearn_batch_size, seed=args.seed, eval_batch_size=args.batch_size,
                                lora=LoraSettings(r=args.relearn_rank, alpha=2 * args.relearn_rank),
                                texts=args.relearn_texts, max_texts=args.relearn_max_texts)
        attack_texts(args.data, relearn)  # bad texts fail before the model loads
    model, tok = load_for_eval(args.model, args.device, merge=True, require_chat_template=False)
    results = {"model": args.model, "data": str(args.data),
               **evaluate_data_dir(model, tok, args.data, scoring=args.scoring, batch_size=args.batch_size,
                                   relearn=relearn)}
    print(format_report(results))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results in {out}")
    return 0
