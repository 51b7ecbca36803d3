"""Reading and replacing a module's hidden-state output: the one primitive every forward hook of latkit
uses (the adversary's δ, the refusal direction, RMU activations, the analysis).

A decoder block returns a tensor, a tuple (hidden states first) or a ``ModelOutput`` with
``last_hidden_state``, depending on the family and version; :func:`split_output` /
:func:`join_output` handle all three. A block is called with its hidden states positionally or
as ``hidden_states=``; :func:`block_input` / :func:`replace_block_input` read and replace them in a
forward pre-hook (``with_kwargs=True``). :func:`record` stores a site's output while active (the
hooks are always removed, even when the body raises).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from latkit.models.adapter import AdapterError, ModelAdapter


def split_output(output):
    """``(hidden states, the original output)`` of a decoder block or embedding: a tensor, a tuple/list
    whose first item is the hidden states, or a ``ModelOutput`` with ``last_hidden_state``."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0], output
    hs = getattr(output, "last_hidden_state", None)
    if hs is None:
        raise TypeError(f"cannot find the hidden states in a {type(output).__name__} output")
    return hs, output


def join_output(hidden, original):
    """``original`` (as split by :func:`split_output`) with its hidden states replaced by ``hidden``."""
    if original is None:
        return hidden
    if isinstance(original, tuple):
        return (hidden,) + tuple(original[1:])
    if isinstance(original, list):
        return [hidden] + list(original[1:])
    original.last_hidden_state = hidden
    return original


def block_input(args, kwargs):
    """The hidden states a decoder block was called with (positional or ``hidden_states=``)."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise AdapterError("a decoder block was called without hidden states")


def replace_block_input(args, kwargs, hidden):
    """``(args, kwargs)`` of a block call with its hidden states replaced by ``hidden`` (a pre-hook's return)."""
    if args:
        return (hidden, *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    raise AdapterError("a decoder block was called without hidden states")


@contextmanager
def record(adapter: ModelAdapter, sites, store: dict, detach: bool = True):
    """Record the output activations of ``sites`` into ``store[site]`` while active."""
    handles = []

    def make(site):
        def hook(module, args, output):
            hidden, _ = split_output(output)
            store[site] = hidden.detach() if detach else hidden

        return hook

    try:
        for site in sites:
            handles.append(adapter.site_module(site).register_forward_hook(make(site)))
        yield store
    finally:
        for h in handles:
            h.remove()
