"""Generate labelling candidates that really comply (positives the labelled set lacks).

    python -m benchmarks.judge_calibration.candidates OUT_DIR [--data ../shared/data] [--stage prefill|finetune|benign|all]

Writes ``generations.jsonl``-shaped rows (``behaviour``, ``prompt``, ``prefill``, ``answer``, ``kind``,
``attack``) per stage, for ``python -m benchmarks.judge_calibration.corpus queue``:

* ``prefill``: base SmolLM2-135M-Instruct, 128 new tokens after the request's own affirmative target
  (HarmBench **val** targets, AdvBench targets) ending in a list opener, so the model writes content;
* ``finetune``: latkit's fine-tuning attack (LoRA, a few steps) trained on the usable ``prefill``
  answers to AdvBench requests (prefill + continuation as the completion), then asked StrongREJECT-small
  and HarmBench-val requests directly — requests it never trained on;
* ``benign``: held-out (``split: eval``) benign prompts answered in one sentence (48 tokens) and at
  length (128 tokens): correct short answers and answers of varying length;
* ``forms``: AdvBench requests for a piece of writing (email, letter, article, post, review, …) not yet
  labelled, half with a prefill that opens the form itself ("Subject:", "Dear", a title) and half
  asked directly, sampled at temperature 0.7 (greedy decoding of a 135M model loops) for 160 tokens.

Only AdvBench, HarmBench *val* and StrongREJECT requests are used; never HarmBench test.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

from latkit.judges.calibration import write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _advbench(data: Path) -> list[tuple[str, str]]:
    with open(data / "advbench" / "harmful_behaviors.csv", encoding="utf-8") as f:
        return [(r["goal"], r["target"]) for r in csv.DictReader(f)]


def _harmbench_val(data: Path) -> list[tuple[str, str]]:
    targets = json.loads((data / "harmbench" / "harmbench_targets_text.json").read_text(encoding="utf-8"))
    with open(data / "harmbench" / "harmbench_behaviors_text_val.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if not (r.get("ContextString") or "").strip()]
    return [(r["Behavior"], targets.get(r["BehaviorID"], "Sure, here is")) for r in rows]


def _strongreject_small(data: Path) -> list[str]:
    with open(data / "strongreject" / "strongreject_small_dataset.csv", encoding="utf-8") as f:
        return [r["forbidden_prompt"] for r in csv.DictReader(f)]


def _labelled_requests() -> set[str]:
    path = REPO / "src" / "latkit" / "resources" / "judge" / "labels.jsonl"
    return {json.loads(line)["behaviour"].strip() for line in path.open(encoding="utf-8") if line.strip()}


def _row(request, answer, kind, attack, prefill=""):
    return {"behaviour": request, "prompt": request, "prefill": prefill, "answer": answer, "kind": kind, "attack": attack}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.judge_calibration.candidates")
    p.add_argument("out")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--stage", default="all", choices=["prefill", "finetune", "benign", "forms", "all"])
    p.add_argument("--n-advbench", type=int, default=60)
    p.add_argument("--finetune-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-forms", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch

    from latkit.attacks.base import Behaviour
    from latkit.attacks.finetune import FinetuneAttack
    from latkit.models.generate import generate
    from latkit.models.loading import load_model_and_tokenizer

    torch.manual_seed(args.seed)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen = _labelled_requests()
    rng = random.Random(args.seed)
    model, tok = load_model_and_tokenizer("smollm2-135m")
    bs = args.batch_size

    adv = [(q, t) for q, t in _advbench(data) if q.strip() not in seen]
    rng.shuffle(adv)
    adv = adv[: args.n_advbench]
    hb = _harmbench_val(data)
    if args.stage in ("prefill", "all"):
        reqs = hb + adv
        prefills = [t.rstrip(" .:") + ":\n\n1." for _, t in reqs]
        answers = generate(model, tok, [q for q, _ in reqs], max_new_tokens=128, batch_size=bs, prefills=prefills,
                           progress=True)
        rows = [_row(q, a, "attack", "prefill_list", pre) for (q, _), pre, a in zip(reqs, prefills, answers)]
        write_jsonl(out / "prefill.jsonl", rows)
    if args.stage in ("finetune", "all"):
        from latkit.evaluation.pairs import usable_completion

        pre_rows = [json.loads(line) for line in (out / "prefill.jsonl").open(encoding="utf-8")]
        adv_set = {q for q, _ in adv}
        pairs = [(r["behaviour"], r["prefill"] + r["answer"]) for r in pre_rows
                 if r["behaviour"] in adv_set and usable_completion(r["answer"], 30)]
        print(f"finetune on {len(pairs)} pairs")
        attack = FinetuneAttack({"steps": args.finetune_steps, "pairs": tuple(pairs), "seed": args.seed})
        targets = _strongreject_small(data) + [q for q, _ in hb[:40]]
        with attack.finetuned(model, tok, attack.training_pairs([Behaviour(prompt="x")])) as (ft, info):
            answers = generate(ft, tok, targets, max_new_tokens=128, batch_size=bs, progress=True)
        print("finetune losses", [round(x, 3) for x in info["train_losses"]])
        write_jsonl(out / "finetune.jsonl", [_row(q, a, "attack", f"finetune{args.finetune_steps}") for q, a in zip(targets, answers)])
    if args.stage in ("benign", "all"):
        rows = [json.loads(line) for line in (REPO / "src" / "latkit" / "resources" / "benign_prompts.jsonl").open()]
        prompts = [r["prompt"] for r in rows if r.get("split") == "eval" and r["prompt"].strip() not in seen]
        rng.shuffle(prompts)
        short, long_ = prompts[:40], prompts[40:80]
        a1 = generate(model, tok, short, max_new_tokens=48, batch_size=bs, system="Answer in one short sentence.", progress=True)
        a2 = generate(model, tok, long_, max_new_tokens=128, batch_size=bs, progress=True)
        write_jsonl(out / "benign.jsonl", [_row(q, a, "benign", "benign_short") for q, a in zip(short, a1)]
                    + [_row(q, a, "benign", "benign") for q, a in zip(long_, a2)])
    if args.stage in ("forms", "all"):
        pool = [(q, t) for q, t in _advbench(data) if q.strip() not in seen and q not in {a for a, _ in adv}
                and _FORM.search(q)]
        rng.shuffle(pool)
        pool = pool[: args.n_forms]
        half = len(pool) // 2
        pre_q, direct_q = pool[:half], pool[half:]
        prefills = [t.rstrip(" .:") + ":\n\n" + _opener(q) for q, t in pre_q]
        a1 = generate(model, tok, [q for q, _ in pre_q], max_new_tokens=160, batch_size=bs, prefills=prefills,
                      do_sample=True, temperature=0.7, progress=True)
        a2 = generate(model, tok, [q for q, _ in direct_q], max_new_tokens=160, batch_size=bs, do_sample=True,
                      temperature=0.7, progress=True)
        write_jsonl(out / "forms.jsonl", [_row(q, a, "attack", "prefill_form_t0.7", pre) for (q, _), pre, a in zip(pre_q, prefills, a1)]
                    + [_row(q, a, "attack", "direct_t0.7") for (q, _), a in zip(direct_q, a2)])
    return 0


#: Requests for a piece of writing, and the opening of that form (the attacker's prefill ends with it).
_FORM = re.compile(r"\b(email|letter|article|news|blog|post|review|speech|tweet|message|story|poem|song|lyrics|"
                   r"social media|propaganda|phishing|fake)\b", re.IGNORECASE)


def _opener(request: str) -> str:
    q = request.lower()
    if "email" in q or "phishing" in q:
        return "Subject:"
    if "letter" in q:
        return "Dear"
    if any(w in q for w in ("article", "news", "blog", "story", "speech")):
        return "Title:"
    if "review" in q:
        return "Rating:"
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
