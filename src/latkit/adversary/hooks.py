"""Forward hooks that add δ to the residual stream, installed by context managers.

The hooks are pure functions of the stored δ and masks (no state changes on
call), so they are safe under gradient checkpointing (recomputation gives the
same output) and KV-cache generation (a decode step of length 1 lies beyond
the positions δ covers and is left untouched). They are always removed, even
when the body raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import torch

from latkit.errors import LatkitError
from latkit.models.adapter import ModelAdapter
from latkit.models.hooks import join_output, split_output


class PerturbationError(LatkitError, RuntimeError):
    """δ does not fit the activations it is applied to."""


def _make_full_hook(delta: torch.Tensor):
    """Add δ shaped like the module's whole output (no position mask): any module, any output shape."""

    def hook(module, args, output):
        hidden, original = split_output(output)
        if hidden.shape != delta.shape:
            raise PerturbationError(f"δ has shape {tuple(delta.shape)} but the output is {tuple(hidden.shape)}")
        return join_output((hidden.float() + delta).to(hidden.dtype), original)

    return hook


def _make_hook(delta: torch.Tensor, mask: torch.Tensor, clamp=None):
    B, T = delta.shape[:2]

    def hook(module, args, output):
        hidden, original = split_output(output)
        N, L = hidden.shape[:2]
        if L != T:
            if L == 1:
                return output  # a KV-cache decode step: beyond the positions δ covers
            raise PerturbationError(f"δ covers {T} positions but the forward has {L}")
        if N % B:
            raise PerturbationError(f"forward batch of {N} rows is not a multiple of δ's batch {B}")
        reps = N // B
        d = delta.repeat(reps, 1, 1) if reps > 1 else delta
        m = mask if mask.shape[0] == N else mask.repeat(reps, 1)
        d = d * m.unsqueeze(-1).to(d.dtype)
        new = hidden.float() + d
        if clamp is not None:
            lo, hi = clamp
            new = torch.where(m.unsqueeze(-1), torch.maximum(torch.minimum(new, hi), lo), new)
        return join_output(new.to(hidden.dtype), original)

    return hook


@contextmanager
def perturb(
    adapter: ModelAdapter,
    deltas: Mapping[str, torch.Tensor],
    mask: torch.Tensor | None,
    clamp: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
):
    """Add ``deltas[site]`` (``(B, T, H)``, fp32) to the output of each site while active.

    ``mask`` (``(B, T)`` or ``(N, T)`` bool) selects perturbed positions. A forward
    with ``N = k·B`` rows (k completion groups of the same examples) applies each
    example's δ to all its rows. With ``mask=None`` each δ has the shape of its site's whole output
    (``adapter`` may then be a :class:`latkit.adversary.modules.ModuleSites` on any module).
    """
    handles = []
    try:
        for site, delta in deltas.items():
            module = adapter.site_module(site)
            hook = _make_full_hook(delta) if mask is None else \
                _make_hook(delta, mask, None if clamp is None else clamp.get(site))
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
