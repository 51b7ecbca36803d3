"""The interaction basis on the residual stream of Hugging Face decoders.

Node ``l`` is the residual stream entering decoder layer ``l`` (``l == num_layers``:
the last layer's output, before the final norm). It is read and replaced by a
forward hook on layer ``l-1`` (for ``l == 0`` a forward pre-hook on layer 0, so
embedding scalings such as Gemma's are included). A section ``l -> l'`` re-runs
the model with node ``l`` replaced and stops once node ``l'`` is captured.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

from latkit.analysis.edges import chain_edges
from latkit.analysis.interaction_basis import LayerBasis, fit_chain, gram_moments, jacobian_metric
from latkit.models.adapter import ModelAdapter
from latkit.models.hooks import block_input, join_output, replace_block_input, split_output

__all__ = [
    "residual_hook",
    "ResidualChain",
    "valid_mask",
    "fit_interaction_basis",
    "interaction_edges",
    "residual_metric",
    "frozen_params",
]


class _Stop(Exception):
    """Raised inside a hook to end a forward pass early."""


@contextlib.contextmanager
def residual_hook(adapter: ModelAdapter, layer: int, fn: Callable[[Tensor], Optional[Tensor]]):
    """Call ``fn(h)`` on the residual stream entering ``layer``; a returned tensor replaces it."""
    L = adapter.num_layers
    if not 0 <= layer <= L:
        raise ValueError(f"layer {layer} out of range: residual nodes are 0..{L}")
    if layer == 0:
        def pre(mod, args, kwargs):
            new = fn(block_input(args, kwargs))
            return None if new is None else replace_block_input(args, kwargs, new)

        handle = adapter.layers[0].register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(mod, args, out):
            hidden, original = split_output(out)
            new = fn(hidden)
            return None if new is None else join_output(new, original)

        handle = adapter.layers[layer - 1].register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def frozen_params(model: torch.nn.Module):
    """Temporarily set ``requires_grad=False`` on every parameter (and eval mode)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, r in flags:
            p.requires_grad_(r)
        model.train(was_training)


def valid_mask(batch: dict, bos_token_id: Optional[int]) -> Tensor:
    """Non-padding positions, minus a leading BOS token of each sequence."""
    am = batch.get("attention_mask")
    ids = batch["input_ids"]
    mask = torch.ones_like(ids, dtype=torch.bool) if am is None else am.bool()
    if bos_token_id is not None:
        first = mask.int().argmax(dim=1)
        rows = torch.arange(ids.shape[0], device=ids.device)
        is_bos = ids[rows, first] == bos_token_id
        mask = mask.clone()
        mask[rows[is_bos], first[is_bos]] = False
    return mask


def _model_inputs(batch: dict, device) -> dict:
    kw = {"input_ids": batch["input_ids"].to(device), "use_cache": False}
    if batch.get("attention_mask") is not None:
        kw["attention_mask"] = batch["attention_mask"].to(device)
    return kw


class ResidualChain:
    """A :class:`~latkit.analysis.interaction_basis.Chain` over residual nodes of a HF decoder.

    ``readout="logits"`` appends the logits as readout (identity coordinates);
    ``None`` makes the last listed layer the last node.
    """

    def __init__(self, model, layers: Sequence[int], *, readout: Optional[str] = "logits",
                 bos_token_id: Optional[int] = None):
        self.model = model
        self.adapter = ModelAdapter.from_model(model)
        L = self.adapter.num_layers
        self.layers = sorted({int(l) if int(l) >= 0 else L + int(l) for l in layers})
        if readout not in (None, "logits"):
            raise ValueError(f"readout must be 'logits' or None, got {readout!r}")
        self.has_readout = readout == "logits"
        self.names = [f"resid.{l}" for l in self.layers]
        self.bos_token_id = bos_token_id

    @property
    def device(self):
        return self.adapter.device

    def mask(self, batch) -> Tensor:
        return valid_mask(batch, self.bos_token_id).to(self.device)

    def activations(self, batch):
        got: dict[int, Tensor] = {}
        deepest = self.layers[-1]
        stack = contextlib.ExitStack()
        for l in self.layers:
            def cap(h, l=l):
                got[l] = h.detach()
                if l == deepest:
                    raise _Stop
            stack.enter_context(residual_hook(self.adapter, l, cap))
        with stack, torch.no_grad(), frozen_params(self.model):
            try:
                self.model(**_model_inputs(batch, self.device))
            except _Stop:
                pass
        return [got[l] for l in self.layers], self.mask(batch)

    def section(self, i: int, f: Tensor, batch) -> Tensor:
        l = self.layers[i]
        stack = contextlib.ExitStack()
        stack.enter_context(residual_hook(self.adapter, l, lambda h: f.to(h.dtype)))
        captured: list[Tensor] = []
        nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
        if nxt is None and not self.has_readout:
            raise IndexError(f"node {self.names[i]} has no downstream section")
        if nxt is not None:
            def cap(h):
                captured.append(h)
                raise _Stop
            stack.enter_context(residual_hook(self.adapter, nxt, cap))
        with stack, frozen_params(self.model):
            try:
                out = self.model(**_model_inputs(batch, self.device))
            except _Stop:
                return captured[0]
        return out.logits

    def output_mask(self, i, batch, mask):
        return mask


def _as_batches(batches: Iterable) -> list[dict]:
    out = []
    for b in batches:
        if not isinstance(b, dict) or "input_ids" not in b:
            raise TypeError("each batch must be a dict with 'input_ids' (and 'attention_mask')")
        out.append(b)
    if not out:
        raise ValueError("no batches given")
    return out


def _bos(model, tokenizer=None, bos_token_id=None):
    if bos_token_id is not None:
        return bos_token_id
    if tokenizer is not None:
        return getattr(tokenizer, "bos_token_id", None)
    return getattr(getattr(model, "config", None), "bos_token_id", None)


def fit_interaction_basis(model, batches: Iterable[dict], layers: Sequence[int], *, readout: Optional[str] = "logits",
                          probes: Optional[int] = 2, probe_mode: str = "positions", readout_probes: int = 16,
                          chunk: int = 32, rtol_gram: float = 1e-8, rtol_lambda: float = 1e-8,
                          tokenizer=None, bos_token_id: Optional[int] = None, seed: int = 0,
                          progress: Optional[Callable[[str], None]] = None) -> dict[int, LayerBasis]:
    """Interaction bases of the residual stream entering each of ``layers``: ``{layer: LayerBasis}``.

    With ``readout="logits"`` every listed layer gets an interaction basis (the last one
    w.r.t. the logits, estimated with ``readout_probes`` full sign probes); with
    ``readout=None`` the last listed layer gets a PCA rotation. ``probes=None`` is exact.
    """
    chain = ResidualChain(model, layers, readout=readout, bos_token_id=_bos(model, tokenizer, bos_token_id))
    bases = fit_chain(chain, _as_batches(batches), probes=probes, probe_mode=probe_mode,
                      readout_probes=readout_probes, readout_probe_mode="full", chunk=chunk,
                      rtol_gram=rtol_gram, rtol_lambda=rtol_lambda, seed=seed, progress=progress)
    out = {}
    for l, name in zip(chain.layers, chain.names):
        b = bases[name]
        b.meta["layer"] = l
        out[l] = b
    return out


def interaction_edges(model, batches: Iterable[dict], bases: dict[int, LayerBasis], layer: int, next_layer: int, *,
                      probes: Optional[int] = 2, chunk: int = 32, tokenizer=None, bos_token_id: Optional[int] = None,
                      seed: int = 0) -> Tensor:
    """Edges ``(k_next, k)`` from ``bases[layer]`` to ``bases[next_layer]`` in ``model`` (float64)."""
    chain = ResidualChain(model, [layer, next_layer], readout=None,
                          bos_token_id=_bos(model, tokenizer, bos_token_id))
    return chain_edges(chain, 0, bases[layer], bases[next_layer], _as_batches(batches), probes=probes, chunk=chunk,
                       seed=seed)


def residual_metric(model, batches: Iterable[dict], layer: int, next_layer: Optional[int] = None,
                    readout: Optional[Tensor] = None, *, probes: Optional[int] = 2, probe_mode: str = "positions",
                    chunk: int = 32, tokenizer=None, bos_token_id: Optional[int] = None, seed: int = 0) -> Tensor:
    """``M'`` at ``layer`` in ``model`` w.r.t. coordinates ``readout`` of ``next_layer`` (or the logits)."""
    layers = [layer] if next_layer is None else [layer, next_layer]
    chain = ResidualChain(model, layers, readout="logits" if next_layer is None else None,
                          bos_token_id=_bos(model, tokenizer, bos_token_id))
    batches = _as_batches(batches)
    _, cache = gram_moments(chain, batches)
    Mp, _ = jacobian_metric(chain, 0, batches, readout, probes=probes, probe_mode=probe_mode, chunk=chunk, seed=seed,
                            cache=cache)
    return Mp
