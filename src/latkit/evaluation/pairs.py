"""Harmful (prompt, completion) pairs for the many-shot and fine-tuning attacks.

Many-shot needs in-context examples of a model *answering* harmful requests, and the
fine-tuning attack needs training pairs; neither may contain a behaviour that is being
evaluated (that would measure memorisation, not robustness). A pool is built from a
prompt set disjoint from the evaluation (AdvBench by default) whose completions are
either

- generated once by a compliant model (``completions: smollm2-135m``: the bundled base
  SmolLM2 answers harmful requests) and cached as JSONL in the evaluation's output
  directory, or
- read from a user's JSONL/CSV file with ``prompt`` and ``completion`` columns.

Refusals and very short answers are dropped, completions are cut to a token budget at a
sentence end, and every pair whose prompt matches an evaluated behaviour (exactly, after
:func:`normalise_prompt`) is removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

from latkit.data.schemas import DataError

PAIR_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def normalise_prompt(text: str) -> str:
    """Lower case, letters and digits only, single spaces: the key for "same prompt"."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def exclude_evaluated(pairs: Iterable[tuple[str, str]], evaluated: Iterable[str]) -> tuple[list[tuple[str, str]], int]:
    """``pairs`` without those whose prompt equals (normalised) one of ``evaluated``; and how many were dropped."""
    pairs = list(pairs)
    banned = {normalise_prompt(p) for p in evaluated if p and p.strip()}
    banned.discard("")
    kept = [(q, a) for q, a in pairs if normalise_prompt(q) not in banned]
    return kept, len(pairs) - len(kept)


def truncate_completion(tokenizer, text: str, max_tokens: int) -> str:
    """``text`` cut to at most ``max_tokens`` tokens, ending at the last sentence end when one
    falls in the second half of the kept text (so shots are whole sentences)."""
    text = text.strip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    cut = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).rstrip()
    ends = [m.end() for m in _SENTENCE_END.finditer(cut)]
    if ends and ends[-1] >= len(cut) // 2:
        cut = cut[: ends[-1]]
    return cut.strip()


def usable_completion(text: str, min_words: int) -> bool:
    """A completion worth showing as a harmful answer: not a refusal and at least ``min_words`` words."""
    from latkit.data.refusals import is_refusal

    return len(text.split()) >= min_words and not is_refusal(text)


def load_pairs_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from a JSONL/JSON/CSV/TSV file with ``prompt`` and ``completion`` columns."""
    from latkit.data.loaders import load_records

    rows = load_records(Path(path), columns={"prompt": "prompt", "completion": "completion"})
    return [(r["prompt"], r["completion"]) for r in rows]


def is_pairs_file(value: str) -> bool:
    return Path(value).suffix.lower() in PAIR_FILE_SUFFIXES


def generate_pairs(model, tokenizer, prompts: Sequence[str], *, max_tokens: int, min_words: int,
                   batch_size: int = 8, system: str | None = None) -> list[tuple[str, str]]:
    """Greedy answers of ``model`` to ``prompts``, truncated to ``max_tokens``; unusable ones dropped."""
    from latkit.models.generate import generate

    answers = generate(model, tokenizer, list(prompts), max_new_tokens=max_tokens, batch_size=batch_size,
                       system=system)
    out = []
    for p, a in zip(prompts, answers):
        a = truncate_completion(tokenizer, a, max_tokens)
        if usable_completion(a, min_words):
            out.append((p, a))
    return out


def cache_key(generator: str, prompts: Sequence[str], max_tokens: int, min_words: int) -> str:
    h = hashlib.sha256(json.dumps([generator, list(prompts), max_tokens, min_words]).encode()).hexdigest()
    return h[:16]


def harmful_pairs(
    prompts: Sequence[str],
    completions: str,
    *,
    evaluated: Iterable[str],
    load_model: Callable[[str], tuple],
    cache_dir: str | os.PathLike | None,
    tokenizer_for_truncation=None,
    max_tokens: int = 96,
    min_words: int = 12,
    batch_size: int = 8,
) -> dict:
    """The pool: ``{"pairs": [(prompt, completion), ...], "source": ..., "excluded": n, "cache": path|None}``.

    ``completions`` is a pairs file (``.jsonl``/``.json``/``.csv``/``.tsv``) or a model source that
    ``load_model(source) -> (model, tokenizer)`` loads to answer ``prompts`` (after evaluated
    prompts are removed, so none is ever generated for). Generated pools are cached under
    ``cache_dir`` and reused when the generator, prompts and budget match.
    """
    evaluated = list(evaluated)
    if is_pairs_file(completions):
        path = Path(completions).expanduser()
        if not path.is_file():
            raise DataError(f"pairs file not found: {path}")
        raw = load_pairs_file(path)
        tok = tokenizer_for_truncation
        raw = [(q, truncate_completion(tok, a, max_tokens) if tok is not None else a.strip()) for q, a in raw]
        raw = [(q, a) for q, a in raw if a]
        pairs, excluded = exclude_evaluated(raw, evaluated)
        info = {"source": str(path), "generator": None, "cache": None}
    else:
        todo, excluded = exclude_evaluated([(p, "") for p in prompts], evaluated)
        todo_prompts = [p for p, _ in todo]
        if not todo_prompts:
            raise DataError("every pool prompt is an evaluated behaviour: no pairs left")
        key = cache_key(completions, todo_prompts, max_tokens, min_words)
        cache = Path(cache_dir) / f"pairs-{key}.jsonl" if cache_dir is not None else None
        if cache is not None and cache.is_file():
            pairs = load_pairs_file(cache)
        else:
            model, tok = load_model(completions)
            try:
                pairs = generate_pairs(model, tok, todo_prompts, max_tokens=max_tokens, min_words=min_words,
                                       batch_size=batch_size)
            finally:
                del model
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(json.dumps({"prompt": q, "completion": a, "generator": completions},
                                                  ensure_ascii=False) + "\n" for q, a in pairs), encoding="utf-8")
                os.replace(tmp, cache)
        pairs, more = exclude_evaluated(pairs, evaluated)  # a cache written for another suite
        excluded += more
        info = {"source": "generated", "generator": completions, "cache": str(cache) if cache else None}
    if not pairs:
        raise DataError(f"no usable harmful (prompt, completion) pairs from {completions!r}")
    return {"pairs": pairs, "excluded": excluded, "n": len(pairs), **info}
