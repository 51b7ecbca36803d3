"""Safety-recovery augmentation of collated harmful batches (Qi et al. 2024, "Safety alignment should be
made more than just a few tokens deep"): the refusal is trained *after* the first tokens of the harmful
answer, so that a model pushed (or prefilled) into complying still turns back.

:func:`prefix_refusals` rewrites the ``refusal`` rows of a batch from
:class:`~latkit.data.collator.PromptCompletionCollator`: example ``b``'s refusal row becomes
``prompt + harmful[:n_b] + refusal``, where the ``n_b`` harmful tokens count neither as prompt nor as
completion (no loss on them); ``n_b = 0`` leaves the example as it was. Every other row keeps its
tokens; the batch is padded again on the same side, each example's rows starting at one position
(so a per-example δ still covers the same prompt positions in all its rows).
"""
from __future__ import annotations

from typing import Sequence

import torch


def prefix_refusals(batch: dict, lengths: Sequence[int], pad_id: int, padding_side: str = "right",
                    harmful: str = "harmful", refusal: str = "refusal") -> dict:
    """A copy of ``batch`` whose refusal rows follow ``lengths[b]`` tokens of their harmful completion
    (capped at that completion's length minus one, so at least one harmful token stays unseen)."""
    groups = tuple(batch["groups"])
    k = len(groups)
    n = batch["input_ids"].shape[0]
    B = n // k
    if len(lengths) != B:
        raise ValueError(f"{len(lengths)} prefix lengths for a batch of {B} examples")
    gh, gr = groups.index(harmful), groups.index(refusal)
    rows = []
    for r in range(n):
        keep = batch["attention_mask"][r].bool()
        rows.append([batch[key][r][keep] for key in ("input_ids", "prompt_mask", "completion_mask")])
    used = []
    for b, want in enumerate(lengths):
        h_ids, _, h_comp = rows[gh * B + b]
        prefix = h_ids[h_comp][: max(min(int(want), int(h_comp.sum()) - 1), 0)]
        used.append(len(prefix))
        if not len(prefix):
            continue
        ids, pm, cm = rows[gr * B + b]
        p = int(pm.sum())  # the prompt leads every row (see PromptCompletionCollator)
        off = torch.zeros(len(prefix), dtype=torch.bool)
        rows[gr * B + b] = [torch.cat([ids[:p], prefix, ids[p:]]), torch.cat([pm[:p], off, pm[p:]]),
                            torch.cat([cm[:p], off, cm[p:]])]
    T = max(len(r[0]) for r in rows)
    out = {key: torch.full((n, T), pad_id, dtype=torch.long) if key == "input_ids" else
           torch.zeros((n, T), dtype=torch.bool if key.endswith("_mask") and key != "attention_mask" else torch.long)
           for key in ("input_ids", "attention_mask", "prompt_mask", "completion_mask")}
    for b in range(B):
        longest = max(len(rows[g * B + b][0]) for g in range(k))
        start = 0 if padding_side == "right" else T - longest
        for g in range(k):
            ids, pm, cm = rows[g * B + b]
            r, span = g * B + b, slice(start, start + len(ids))
            out["input_ids"][r, span] = ids
            out["attention_mask"][r, span] = 1
            out["prompt_mask"][r, span] = pm
            out["completion_mask"][r, span] = cm
    out["position_ids"] = (out["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    out["prefix_lengths"] = used
    return {**batch, **out}
