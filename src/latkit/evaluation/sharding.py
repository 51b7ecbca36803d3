"""Evaluation across processes (``accelerate launch`` / ``torchrun``): which behaviours a rank attacks, and the
deterministic merge of the ranks' attack outputs into the order one process produces.

Only the attack (generation, the expensive part) is sharded; judging and aggregation then run on the merged
outputs, so ``results.json`` is the one-process result (all but wall-clock times). A rank takes behaviours
``rank, rank + world, …`` (balanced to within one). Attacks whose output for one behaviour depends on the
others (fine-tuning and many-shot learn from the other behaviours, refusal_direction computes its direction
from them, GCG/latent/embedding share randomness and cost across a batch) are *not* sharded: every rank runs
them whole, as one process would. ``SHARDABLE`` lists the rest.

The merge sorts each output by ``(epsilon group, behaviour position, occurrence)``: behaviours in their
dataset order, several outputs of one behaviour (templates: one per style) in the order the attack gave
them, and attacks that report a split key (``extras["epsilon"]``) grouped by it, in the order the values
first appear — the order a single process writes.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from latkit.evaluation.records import SPLIT_KEYS

SHARDABLE = frozenset({"direct", "prefill", "templates"})


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_processes():
    """Join the process group ``torchrun`` / ``accelerate launch`` describes in the environment (via
    accelerate's ``PartialState``); returns ``(rank, world, device)`` — ``(0, 1, None)`` for one process."""
    if world_size() < 2:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def gather_objects(obj: Any) -> list:
    """``obj`` from every rank, in rank order (``[obj]`` without a process group)."""
    dist = _dist()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The positions (of ``n`` behaviours) that rank ``rank`` of ``world`` attacks."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(range(rank, n, world))


def _field(obj, key, default=None):
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def _position(output, by_id: dict, by_prompt: dict) -> int:
    beh = _field(output, "behaviour")
    bid, prompt = str(_field(beh, "id", "") or ""), _field(beh, "prompt")
    if bid and bid in by_id:
        return by_id[bid]
    if prompt in by_prompt:
        return by_prompt[prompt]
    raise ValueError(f"attack output for behaviour {bid or prompt!r} matches no behaviour of this shard")


def keyed(outputs: Sequence, inputs: Sequence[dict], positions: Sequence[int]) -> list[tuple[tuple, Any]]:
    """Tag this rank's outputs (for ``inputs``, which sit at global ``positions``) with their merge keys."""
    by_id = {str(d.get("id") or ""): p for d, p in zip(inputs, positions) if d.get("id")}
    by_prompt = {d["prompt"]: p for d, p in zip(inputs, positions)}
    seen: dict = {}
    out = []
    for o in outputs:
        extras = _field(o, "extras") or {}
        split = next((extras[k] for k in SPLIT_KEYS if k in extras), None)
        pos = _position(o, by_id, by_prompt)
        occ = seen[(split, pos)] = seen.get((split, pos), -1) + 1
        out.append(((split, pos, occ), o))
    return out


def merge(parts: Sequence[Sequence[tuple[tuple, Any]]]) -> list:
    """The ranks' keyed outputs as one list, in one-process order (see the module docstring)."""
    first_split: dict = {}
    for part in parts:  # split values in order of first appearance (each rank sees them in the same order)
        for (split, _, _), _o in part:
            first_split.setdefault(split, len(first_split))
    flat = [(first_split[s], pos, occ, o) for part in parts for (s, pos, occ), o in part]
    keys = [(a, b, c) for a, b, c, _ in flat]
    if len(set(keys)) != len(keys):
        raise ValueError("two ranks returned an output for the same behaviour: the shards overlap")
    return [o for *_, o in sorted(flat, key=lambda t: t[:3])]


def run_sharded(name: str, run: Callable[[list], list], inputs: Sequence[dict], *,
                rank: int | None = None, world: int | None = None, gather: Callable = gather_objects) -> list:
    """``run(inputs)`` split across the processes when attack ``name`` is shardable, merged in order; else
    ``run(inputs)`` on every rank."""
    dist = _dist()
    if rank is None or world is None:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)
    inputs = list(inputs)
    if world < 2 or name not in SHARDABLE:
        return run(inputs)
    positions = shard_indices(len(inputs), rank, world)
    mine = [inputs[p] for p in positions]
    outputs = run(mine) if mine else []
    return merge(gather(keyed(outputs, mine, positions)))
