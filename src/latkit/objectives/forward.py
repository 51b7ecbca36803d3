"""One forward pass that computes logits only where a loss needs them."""
from __future__ import annotations

import torch


def completion_offset(batch: dict) -> int:
    """First position whose logits predict a counted (completion) token."""
    m = batch["completion_mask"]
    cols = m.any(0).nonzero()
    return max(int(cols[0]) - 1, 0) if cols.numel() else m.shape[1] - 1


def group_rows(batch: dict, name: str) -> slice:
    """Rows of completion group ``name`` in a group-major batch (``batch["groups"]``, equal-sized groups)."""
    groups = tuple(batch["groups"])
    if name not in groups:
        raise KeyError(f"a loss needs completion group {name!r}; the batch has {groups}")
    B = batch["input_ids"].shape[0] // len(groups)
    g = groups.index(name)
    return slice(g * B, (g + 1) * B)


def forward_logits(model, batch: dict, rows: slice | None = None):
    """``(logits, offset)`` for ``batch`` (optionally only ``rows``), logits from ``offset`` on.

    Uses the model's ``logits_to_keep`` so the LM head (the largest matmul of a
    small model) runs only on positions that a completion loss reads.
    """
    sel = (lambda t: t[rows]) if rows is not None else (lambda t: t)
    offset = completion_offset({"completion_mask": sel(batch["completion_mask"])})
    T = batch["input_ids"].shape[1]
    out = model(
        input_ids=sel(batch["input_ids"]),
        attention_mask=sel(batch["attention_mask"]),
        position_ids=sel(batch["position_ids"]),
        use_cache=False,
        logits_to_keep=T - offset,
    )
    return out.logits, offset


def run_under(perturbation, model, batch: dict, rows: slice | None = None):
    """``(logits, offset)`` of ``rows`` under ``perturbation``: its own ``forward`` when it has one
    (:class:`latkit.adversary.latent.Under`, which may share each prompt across completions), else a
    grouped :func:`forward_logits` inside ``perturbation(rows)``."""
    forward = getattr(perturbation, "forward", None)
    if forward is not None:
        return forward(model, batch, rows)
    with perturbation(rows):
        return forward_logits(model, batch, rows)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def pack_shared_prompt(batch: dict, attn_implementation: str = "sdpa", dtype=torch.float32) -> dict | None:
    """One row per example holding its prompt once and every completion after it: ``[p, c_0, c_1, …]``.

    Completion ``g`` attends to the prompt and to itself (causally), never to another
    completion, and its position ids continue from the prompt's end, so every token sees
    exactly the context it has in the grouped layout: logits and δ-gradients are those of
    :func:`forward_logits`, while the prompt is computed once instead of once per group.
    The attention mask is a custom 4D mask (bool for SDPA, additive float otherwise; a
    Gemma sliding window is not applied, so sequences must be shorter than the window).

    Returns ``None`` when the batch is not in the collator's right-padded layout with the
    prompt shared at the same positions in every group (then use the grouped forward).
    Keys: ``input_ids``, ``attention_mask`` (4D), ``position_ids``, ``prompt_mask`` (``(B, T')``)
    and ``index`` (``(k·B, T)``: packed position of each grouped position).
    """
    k = batch.get("n_groups", 1)
    ids = batch["input_ids"]
    N, T = ids.shape
    if k < 2 or N % k:
        return None
    B = N // k
    att = batch["attention_mask"].bool()
    pm = batch["prompt_mask"].bool() & att
    plen = pm.sum(1)
    tlen = att.sum(1)
    ar = torch.arange(T, device=ids.device)
    # right padding, prompt first, the same prompt in every group
    if not torch.equal(att, ar < tlen[:, None]) or not torch.equal(pm, ar < plen[:, None]):
        return None
    g_ids = ids.view(k, B, T)
    if not bool((plen.view(k, B) == plen[:B]).all()):
        return None
    for g in range(1, k):
        if not bool(((g_ids[g] == g_ids[0]) | ~pm.view(k, B, T)[0]).all()):
            return None
    p = plen[:B].tolist()
    c = (tlen - plen).view(k, B).tolist()
    Tp = max(p[b] + sum(c[g][b] for g in range(k)) for b in range(B))
    dev = ids.device
    p_ids = torch.zeros(B, Tp, dtype=ids.dtype, device=dev)
    pos = torch.zeros(B, Tp, dtype=torch.long, device=dev)
    seg = torch.full((B, Tp), -1, dtype=torch.long, device=dev)  # -1 padding, 0 prompt, g+1 completion g
    index = torch.zeros(N, T, dtype=torch.long, device=dev)
    for b in range(B):
        pb = p[b]
        p_ids[b, :pb] = ids[b, :pb]
        pos[b, :pb] = torch.arange(pb, device=dev)
        seg[b, :pb] = 0
        start = pb
        for g in range(k):
            r, cg = g * B + b, c[g][b]
            p_ids[b, start:start + cg] = ids[r, pb:pb + cg]
            pos[b, start:start + cg] = torch.arange(pb, pb + cg, device=dev)
            seg[b, start:start + cg] = g + 1
            index[r, :pb] = torch.arange(pb, device=dev)
            index[r, pb:pb + cg] = torch.arange(start, start + cg, device=dev)
            start += cg
    i = torch.arange(Tp, device=dev)
    causal = i[None, :, None] >= i[None, None, :]
    sq, sk = seg[:, :, None], seg[:, None, :]
    allowed = causal & (sq >= 0) & (sk >= 0) & ((sk == 0) | (sk == sq))
    allowed = allowed | torch.eye(Tp, dtype=torch.bool, device=dev)[None]  # padding attends to itself: no NaN
    mask4 = allowed[:, None]
    if attn_implementation != "sdpa":
        mask4 = torch.zeros(mask4.shape, dtype=dtype, device=dev).masked_fill(~mask4, torch.finfo(dtype).min)
    return {"input_ids": p_ids, "attention_mask": mask4, "position_ids": pos, "prompt_mask": seg == 0,
            "index": index, "n_groups": k}


def forward_logits_packed(model, batch: dict, packed: dict):
    """:func:`forward_logits` for the grouped ``batch``, computed on its :func:`pack_shared_prompt` layout.

    Returns ``(logits, offset)`` in the grouped layout (rows ``k·B``, positions ``offset..T-1``), so
    objectives written for :func:`forward_logits` apply unchanged.
    """
    offset = completion_offset(batch)
    Tp = packed["input_ids"].shape[1]
    out = model(
        input_ids=packed["input_ids"],
        attention_mask=packed["attention_mask"],
        position_ids=packed["position_ids"],
        use_cache=False,
        logits_to_keep=Tp - offset,
    )
    lp = out.logits
    N = batch["input_ids"].shape[0]
    B = packed["input_ids"].shape[0]
    idx = (packed["index"][:, offset:] - offset).clamp(min=0)
    rows = (torch.arange(N, device=idx.device) % B)[:, None]
    return lp[rows, idx], offset
