"""Likelihood scoring in one place: the summed log-probability of continuations after their contexts
(multiple-choice and cloze accuracy, the refusal-likelihood judges, the unlearning knowledge tests)."""
from __future__ import annotations

from typing import Sequence

import torch

from latkit.models.chat import encode_text


def pad_token_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pid) if pid is not None else 0


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _forward_last(model, seqs: list[list[int]], keep: int, pad_id: int) -> torch.Tensor:
    """Log-probs of the last ``keep`` positions of left-padded ``seqs``: ``(B, keep, V)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dev = model_device(model)
    kw = dict(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev))
    try:
        logits = model(**kw, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep
        logits = model(**kw).logits
    return torch.log_softmax(logits[:, -keep:, :].float(), dim=-1)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def score_continuations(
    model,
    tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[list[float]]:
    """Summed log-probability of each continuation after its context.

    ``context + continuation`` is tokenized as one text (so merges across the
    boundary are handled) and the tokens after the common prefix with the
    context's tokenization are scored. When every continuation of a context is
    one extra token, one forward pass of the context scores them all. Sequences
    longer than ``max_length`` lose tokens from the left.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuation lists")
    max_length = max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
    results: list[list[float]] = [[0.0] * len(c) for c in continuations]
    fast: list[tuple[int, list[int], list[int]]] = []  # (ctx index, ctx ids, next-token ids)
    slow: list[tuple[int, int, list[int], int]] = []  # (ctx index, cont index, full ids, n scored)
    for i, (ctx, conts) in enumerate(zip(contexts, continuations)):
        ctx_ids = encode_text(tokenizer, ctx, is_start=True)
        splits = []
        for c in conts:
            full = encode_text(tokenizer, ctx + c, is_start=True)
            start = _common_prefix(ctx_ids, full)
            if start >= len(full):
                raise ValueError(f"continuation {c!r} adds no tokens to its context")
            if start == 0:
                raise ValueError("cannot score the first token of a sequence: the context is empty")
            splits.append((full, start))
        if all(start == len(ctx_ids) and len(full) == start + 1 for full, start in splits):
            fast.append((i, ctx_ids[-max_length:], [full[-1] for full, _ in splits]))
        else:
            for j, (full, start) in enumerate(splits):
                n = len(full) - start
                if n >= max_length:
                    raise ValueError(f"continuation of {n} tokens does not fit max_length={max_length}")
                slow.append((i, j, full[-max_length:], n))
    pad = pad_token_id(tokenizer)
    fast.sort(key=lambda r: len(r[1]))
    for s in range(0, len(fast), batch_size):
        chunk = fast[s : s + batch_size]
        lp = _forward_last(model, [c[1] for c in chunk], 1, pad)
        for r, (i, _, toks) in enumerate(chunk):
            results[i] = [float(lp[r, 0, t]) for t in toks]
    slow.sort(key=lambda r: len(r[2]))
    for s in range(0, len(slow), batch_size):
        chunk = slow[s : s + batch_size]
        keep = max(c[3] for c in chunk) + 1
        lp = _forward_last(model, [c[2] for c in chunk], keep, pad)
        for r, (i, j, full, n) in enumerate(chunk):
            targets = torch.tensor(full[-n:], device=lp.device)
            rows = lp[r, keep - n - 1 : keep - 1]
            results[i][j] = float(rows.gather(-1, targets[:, None]).sum())
    return results
