"""Utility and over-refusal: benign compliance, multiple-choice accuracy, perplexity and KL to the base model.

* :func:`benign_compliance`: share of benign requests answered helpfully (the default
  judge in benign mode), on the ``eval`` split of latkit's shipped benign set (never
  trained on) including XSTest-style borderline-but-safe requests, with a borderline /
  ordinary breakdown.
* :func:`multiple_choice_accuracy`: MMLU-style accuracy by log-likelihood of the
  answer letter (``" A"`` ... ``" D"`` after ``"Answer:"``), batched, k-shot optional;
  :func:`cloze_accuracy`: by length-normalised log-likelihood of each answer's text
  (varies at 135M where the letter score is constant); both report the predicted-letter histogram.
* :func:`perplexity` and :func:`kl_to_base`: on benign text; the base is a second
  model or, for a PEFT model, the same model with its adapters disabled.
* :func:`lm_eval_tasks`: the optional EleutherAI ``lm-eval`` harness, imported lazily.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

import torch

from latkit.evaluation.stats import proportion
from latkit.models.scoring import model_device, pad_token_id, score_continuations

LETTERS = "ABCD"


# --------------------------------------------------------------------------- benign compliance
def shipped_benign_items(borderline: bool | None = None, split: str | None = "eval") -> list[dict]:
    """latkit's benign prompts of ``split`` (default ``eval``: never trained on by ``source: builtin``)
    as ``{"prompt", "category", "borderline"}``, categories interleaved (:func:`latkit.data.benign.benign_items`)."""
    from latkit.data.benign import benign_items

    return benign_items(split=split, borderline=borderline)


def _as_items(prompts) -> list[dict]:
    items = []
    for p in prompts:
        if isinstance(p, str):
            items.append({"prompt": p, "category": "", "borderline": None})
        elif isinstance(p, Mapping) and "prompt" in p:
            items.append({"category": "", "borderline": None, **dict(p)})
        else:
            raise TypeError(f"benign prompts must be strings or mappings with 'prompt', got {type(p).__name__}")
    return items


def benign_compliance(
    model,
    tokenizer,
    prompts: Sequence[str | Mapping] | None = None,
    *,
    borderline: bool | None = None,
    limit: int | None = None,
    judge=None,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    system: str | None = None,
) -> tuple[dict, list[dict]]:
    """Share of benign requests answered helpfully. Returns ``(summary, records)``.

    The default judge is :class:`~latkit.judges.SuccessJudge` in ``benign`` mode: a refusal in any
    wording, an empty, degenerate or off-topic answer is non-compliance.

    ``prompts`` default to latkit's shipped set (``borderline`` filters it). The
    summary has ``rate``, ``ci95``, ``k``, ``n`` and the same for ``borderline`` /
    ``ordinary`` items and per category; records hold every prompt and answer.
    """
    from latkit.judges.success import SuccessJudge
    from latkit.models.generate import generate

    items = shipped_benign_items(borderline) if prompts is None else _as_items(prompts)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError("no benign prompts to evaluate")
    judge = judge or SuccessJudge(mode="benign", name="helpful")
    answers = generate(model, tokenizer, [it["prompt"] for it in items], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, system=system)
    verdicts = judge.judge([it["prompt"] for it in items], answers)
    records = []
    for it, ans, v in zip(items, answers, verdicts):
        records.append({**it, "answer": ans, "complied": bool(v.harmful), "judge_raw": v.raw})

    def summary(rs):
        return proportion(sum(r["complied"] for r in rs), len(rs))

    out = {**summary(records), "judge": judge.name}
    for key, flag in (("borderline", True), ("ordinary", False)):
        part = [r for r in records if r["borderline"] is flag]
        if part:
            out[key] = summary(part)
    cats = defaultdict(list)
    for r in records:
        if r["category"]:
            cats[r["category"]].append(r)
    if cats:
        out["per_category"] = {c: summary(rs) for c, rs in cats.items()}
    return out, records


# --------------------------------------------------------------------------- multiple choice
def format_question(item, *, with_answer: bool = False) -> str:
    """``question / A. .. / D. .. / Answer:`` (plus `` X`` and a blank line for shots)."""
    lines = [item.question.strip()] + [f"{L}. {c.strip()}" for L, c in zip(LETTERS, item.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {LETTERS[item.answer]}\n\n" if with_answer else text


def mmlu_prompt(item, shots: Sequence = ()) -> str:
    """The standard MMLU prompt: subject header, ``k`` solved examples, the question."""
    subject = item.subject.replace("_", " ").strip()
    head = f"The following are multiple choice questions (with answers){' about ' + subject if subject else ''}.\n\n"
    return head + "".join(format_question(s, with_answer=True) for s in shots) + format_question(item)


def multiple_choice_accuracy(
    model,
    tokenizer,
    items: Sequence,
    *,
    few_shot: Sequence = (),
    k: int = 0,
    batch_size: int = 8,
    chat: bool = False,
    max_length: int | None = None,
) -> dict:
    """Accuracy by log-likelihood of the answer letter.

    ``k`` solved examples per question come from ``few_shot`` (same subject
    first). ``chat=True`` puts the prompt in a user turn of the chat template and
    scores the bare letter at the start of the assistant turn.
    """
    from latkit.models.chat import render_prompt

    contexts = [render_prompt(tokenizer, mmlu_prompt(it, shots)) if chat else mmlu_prompt(it, shots)
                for it, shots in _with_shots(items, few_shot, k)]
    conts = [list(LETTERS) if chat else [" " + L for L in LETTERS]] * len(items)
    scores = score_continuations(model, tokenizer, contexts, conts, batch_size=batch_size, max_length=max_length)
    return choice_accuracy(scores, items, few_shot=k, chat=chat, scoring="letter")


def _with_shots(items: Sequence, few_shot: Sequence, k: int) -> list[tuple]:
    """``(item, its k solved examples)`` pairs, same-subject examples first; checks the inputs."""
    if not items:
        raise ValueError("no multiple-choice items to evaluate")
    if k and len(few_shot) < k:
        raise ValueError(f"k={k} few-shot examples requested but only {len(few_shot)} given")
    by_subject = defaultdict(list)
    for s in few_shot:
        by_subject[s.subject].append(s)
    return [(it, (by_subject.get(it.subject, []) + [s for s in few_shot if s.subject != it.subject])[:k])
            for it in items]


def cloze_prompt(item, shots: Sequence = ()) -> str:
    """The cloze MMLU prompt (as lm-eval's ``mmlu_continuation``): subject header, ``k`` solved
    ``Question: .. / Answer: <answer text>`` examples, then ``Question: .. / Answer:`` (no choices listed)."""
    subject = item.subject.replace("_", " ").strip()
    head = f"The following are questions (with answers){' about ' + subject if subject else ''}.\n\n"
    solved = "".join(f"Question: {s.question.strip()}\nAnswer: {s.choices[s.answer].strip()}\n\n" for s in shots)
    return head + solved + f"Question: {item.question.strip()}\nAnswer:"


def cloze_accuracy(
    model,
    tokenizer,
    items: Sequence,
    *,
    few_shot: Sequence = (),
    k: int = 0,
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict:
    """Accuracy by length-normalised log-likelihood of each choice's full *text* after the question
    (lm-eval's ``acc_norm``: summed log-prob / UTF-8 bytes of the continuation), ``k``-shot optional.
    The result holds both ``accuracy`` (normalised, the headline) and ``accuracy_unnormalised``."""
    contexts = [cloze_prompt(it, shots) for it, shots in _with_shots(items, few_shot, k)]
    conts = [[" " + str(c).strip() for c in it.choices] for it in items]
    raw = score_continuations(model, tokenizer, contexts, conts, batch_size=batch_size, max_length=max_length)
    norm = [[v / max(1, len(c.encode("utf-8"))) for v, c in zip(row, cs)] for row, cs in zip(raw, conts)]
    out = choice_accuracy(norm, items, scoring="cloze", few_shot=k)
    out["accuracy_unnormalised"] = choice_accuracy(raw, items)["accuracy"]
    return out


def choice_accuracy(scores: Sequence[Sequence[float]], items: Sequence, **extra) -> dict:
    """Accuracy of picking the highest-scoring choice: ``accuracy``, ``ci95``, ``k``, ``n``, ``extra``,
    ``per_subject``, ``chance`` (1 / number of choices) and ``predicted`` / ``answers``: how often each
    letter was picked / is the key (a model that always picks one letter shows up here);
    ``scores[i][j]`` is the score of choice ``j`` of ``items[i]``."""
    picked = [max(range(len(row)), key=lambda j: row[j]) for row in scores]
    correct = [p == it.answer for p, it in zip(picked, items)]
    n_choices = max((len(row) for row in scores), default=4)
    letters = [LETTERS[j] if j < len(LETTERS) else str(j) for j in range(n_choices)]
    hist = {L: sum(1 for p in picked if p == j) for j, L in enumerate(letters)}
    keys = {L: sum(1 for it in items if it.answer == j) for j, L in enumerate(letters)}
    extra = {"chance": 1.0 / n_choices, "predicted": hist, "answers": keys, **extra}
    subj = defaultdict(list)
    for ok, it in zip(correct, items):
        subj[it.subject].append(ok)
    base = proportion(sum(correct), len(correct))
    return {
        "accuracy": base["rate"], "ci95": base["ci95"], "k": base["k"], "n": base["n"], **extra,
        "per_subject": {s: {"accuracy": sum(v) / len(v), "n": len(v)} for s, v in sorted(subj.items())},
    }


def lm_eval_tasks(
    model, tokenizer, tasks: Sequence[str], *, limit: int | float | None = None,
    num_fewshot: int | None = None, batch_size: int = 8,
) -> dict:
    """Run EleutherAI lm-eval harness tasks on the loaded model; ``{task: {metric: value}}``."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ImportError(
            "the lm-eval harness integration needs the optional package lm-eval (pip install lm-eval); "
            "its tasks download their datasets, so run it where the Hugging Face hub is reachable"
        ) from None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot)
    out = {}
    for task, metrics in (res or {}).get("results", {}).items():
        out[task] = {m: float(v) for m, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


# --------------------------------------------------------------------------- perplexity / KL
def _encode_text_item(tokenizer, item, max_length: int) -> tuple[list[int], int]:
    """Token ids and the index of the first scored token for one benign text item."""
    from latkit.models.chat import encode_pair, encode_prompt, encode_text

    if isinstance(item, str):
        ids, start = encode_text(tokenizer, item, is_start=True), 1
    else:
        get = item.get if isinstance(item, Mapping) else (lambda k, d=None: getattr(item, k, d))
        if isinstance(item, (tuple, list)) and len(item) == 2:
            prompt, response = item
        else:
            prompt, response = get("prompt"), get("response")
        if prompt is None:
            raise TypeError(f"benign text items are str, (prompt, response) or have a 'prompt'; got {item!r}")
        if response:
            p_ids, (c_ids,) = encode_pair(tokenizer, prompt, [response])
            ids, start = p_ids + c_ids, len(p_ids)
        else:
            ids, start = encode_prompt(tokenizer, prompt), 1
    if len(ids) > max_length:  # keep the scored tail
        cut = len(ids) - max_length
        ids, start = ids[cut:], max(1, start - cut)
    return ids, start


def _batches(tokenizer, texts, max_length, batch_size):
    enc = [_encode_text_item(tokenizer, t, max_length) for t in texts]
    enc = [e for e in enc if len(e[0]) > e[1]]
    if not enc:
        raise ValueError("no scorable tokens in the given texts")
    pad = pad_token_id(tokenizer)
    for s in range(0, len(enc), batch_size):
        chunk = enc[s : s + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        score = torch.zeros((len(chunk), width - 1), dtype=torch.bool)  # position t predicts token t+1
        for r, (seq, start) in enumerate(chunk):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            score[r, start - 1 : len(seq) - 1] = True
        yield ids, mask, score


def _logprobs(model, ids, mask) -> torch.Tensor:
    dev = model_device(model)
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


@torch.inference_mode()
def perplexity(model, tokenizer, texts: Sequence[Any], *, batch_size: int = 4, max_length: int = 512) -> dict:
    """Token-weighted perplexity: ``{"perplexity", "nll", "tokens"}``.

    Items: raw strings (all tokens after the first scored), ``(prompt, response)``
    pairs or records with ``prompt``/``response`` (chat-formatted, response tokens
    scored) or with only ``prompt`` (the rendered chat prompt scored).
    """
    total, count = 0.0, 0
    for ids, mask, score in _batches(tokenizer, texts, max_length, batch_size):
        lp = _logprobs(model, ids, mask)
        tgt = ids[:, 1:].to(lp.device)
        nll = -lp.gather(-1, tgt[..., None])[..., 0]
        m = score.to(lp.device)
        total += float(nll[m].sum())
        count += int(m.sum())
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count}


@torch.inference_mode()
def kl_to_base(
    model,
    tokenizer,
    texts: Sequence[Any],
    *,
    base_model=None,
    batch_size: int = 4,
    max_length: int = 512,
) -> dict:
    """Mean per-token KL(model ‖ base) of next-token distributions on ``texts`` (items as in :func:`perplexity`).

    The base is ``base_model`` (same tokenizer) or, when it is None and ``model``
    is a PEFT model, ``model`` inside ``model.disable_adapter()``. Also returns
    both perplexities.
    """
    if base_model is None:
        if not callable(getattr(model, "disable_adapter", None)):
            raise ValueError(
                "KL to base needs a base model: pass base_model=, or evaluate a PEFT model "
                "(its adapters are disabled to get the base)"
            )
        base_ctx, base, source = model.disable_adapter, model, "adapters disabled"
    else:
        base_ctx, base, source = contextlib.nullcontext, base_model, "separate model"
    kl_sum, nll_m, nll_b, count = 0.0, 0.0, 0.0, 0
    for ids, mask, score in _batches(tokenizer, texts, max_length, batch_size):
        lp_m = _logprobs(model, ids, mask)
        with base_ctx():
            lp_b = _logprobs(base, ids, mask).to(lp_m.device)
        if lp_m.shape[-1] != lp_b.shape[-1]:
            raise ValueError(f"model and base vocabularies differ ({lp_m.shape[-1]} vs {lp_b.shape[-1]})")
        m = score.to(lp_m.device)
        kl = (lp_m.exp() * (lp_m - lp_b)).sum(-1)
        tgt = ids[:, 1:].to(lp_m.device)[..., None]
        kl_sum += float(kl[m].sum())
        nll_m += float(-lp_m.gather(-1, tgt)[..., 0][m].sum())
        nll_b += float(-lp_b.gather(-1, tgt)[..., 0][m].sum())
        count += int(m.sum())
    return {
        "kl": kl_sum / count,
        "perplexity": math.exp(nll_m / count),
        "base_perplexity": math.exp(nll_b / count),
        "tokens": count,
        "base": source,
    }


def read_texts(path) -> list[Any]:
    """Benign texts from a file: ``.txt`` (one per non-empty line) or CSV/JSONL/JSON with
    ``text`` or ``prompt`` (+ optional ``response``) columns."""
    from pathlib import Path

    from latkit.data.loaders import load_records
    from latkit.data.schemas import DataError

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"benign text file not found: {p}")
    if p.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"{p}: no text lines")
        return lines
    out = []
    for i, r in enumerate(load_records(p), start=1):
        if r.get("text"):
            out.append(str(r["text"]))
        elif r.get("prompt"):
            out.append({"prompt": str(r["prompt"]), "response": str(r.get("response") or "")})
        else:
            raise DataError(f"{p}, row {i}: needs a 'text' or 'prompt' column")
    return out
