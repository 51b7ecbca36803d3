"""Turn a recipe's data section into harmful triples and benign pairs (cached in the run dir)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from latkit.data.jsonl import write_jsonl
from latkit.data.schemas import BenignPair, DataError, HarmfulTriple
from latkit.data.sources import resolve_source

def _write_jsonl(path: Path, items) -> None:
    write_jsonl(path, (asdict(it) for it in items), ensure_ascii=True)


def _read_jsonl(path: Path, cls):
    return [cls(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def prepare_data(recipe, model, tokenizer, cache: Path | None = None, log=print):
    """Return ``(harmful, benign)`` lists for ``recipe``; generated data is cached under ``cache``.

    ``data.harmful: null`` (an SFT-only run) gives no harmful triples."""
    from latkit.data.builder import build_triples, self_distill
    from latkit.data.loaders import load_benign, load_harmful, load_prompts

    d = recipe.data
    h = d.harmful
    hpath = cache / "harmful.jsonl" if cache else None
    if h is None:
        harmful = []
    elif hpath is not None and hpath.exists():
        harmful = _read_jsonl(hpath, HarmfulTriple)
    else:
        src = resolve_source(h.source)
        cols = dict(h.columns)
        if h.refusal_from == "templates":
            cols.pop("refusal", None)
        elif "refusal" not in cols:
            raise DataError("data.harmful.refusal_from=column needs a 'refusal' entry in data.harmful.columns")
        want = None if h.limit is None else h.offset + h.limit
        if h.harmful_from == "column":
            harmful = load_harmful(src, cols, limit=want, seed=recipe.train.seed)[h.offset:]
        else:
            prompts = load_prompts(src, cols.get("prompt", "prompt"), limit=want)[h.offset:]
            log(f"generating harmful completions with the base model for {len(prompts)} prompts")
            harmful = build_triples(prompts, harmful_from="model", model=model, tokenizer=tokenizer,
                                    max_new_tokens=h.max_new_tokens, batch_size=d.generation_batch_size,
                                    seed=recipe.train.seed)
        if not harmful:
            raise DataError(f"no harmful examples from {h.source!r}")
        if hpath is not None:
            _write_jsonl(hpath, harmful)
    benign = []
    b = d.benign
    if b is not None:
        bpath = cache / "benign.jsonl" if cache else None
        if bpath is not None and bpath.exists():
            benign = _read_jsonl(bpath, BenignPair)
        else:
            if b.source == "builtin":
                from latkit.data.benign import benign_items

                prompts = [it["prompt"] for it in benign_items(split="train")][: b.limit]
                log(f"self-distilling {len(prompts)} built-in benign prompts with the base model")
                benign = self_distill(prompts, model, tokenizer, max_new_tokens=b.max_new_tokens,
                                      batch_size=d.generation_batch_size)
            else:
                benign = load_benign(resolve_source(b.source), b.columns or None, limit=b.limit)
            if not benign:
                raise DataError(f"no benign examples from {b.source!r}")
            if bpath is not None:
                _write_jsonl(bpath, benign)
    return harmful, benign
