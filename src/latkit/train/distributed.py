"""Distributed engines the trainer meets beyond plain DDP: FSDP2 where accelerate does not apply it, sharded
weights in checkpoints, and engines that cannot run here.

``accelerate`` turns ``ACCELERATE_USE_FSDP`` (set by ``accelerate launch`` with an FSDP config) into FSDP
only on an accelerator; on CPU it silently falls back to DDP over gloo, and it ignores
``ACCELERATE_USE_DEEPSPEED`` on CPU the same way. So that an FSDP2 run on CPU (the tests: 2 gloo
processes) is really sharded, :func:`fsdp2_settings` reads the same environment and
:func:`fully_shard_model` applies ``torch.distributed.fsdp.fully_shard`` the way accelerate's
``TRANSFORMER_BASED_WRAP`` does: one FSDP unit per decoder block, then the root. A DeepSpeed config on a
machine where accelerate cannot honour it is an error (:func:`check_engine`), not a silent DDP run.

Sharded parameters are DTensors. :func:`full` gathers one (a collective: every rank calls it) and
:func:`shard_as` cuts a full tensor back into the local shard of a parameter, so checkpoints and
``model/`` keep the single-process layout: full tensors under the same names.

Gradient accumulation: :func:`gradient_sync` is the context of one defender micro-batch's forward. DDP skips its
all-reduce when the *forward* runs under ``no_sync``; FSDP2 reads its flag
(``FSDPModule.set_requires_gradient_sync``) in the *backward*, so for an FSDP2 module the flag is set for the
coming backward and stays set until the next micro-batch sets it (the last one of each step sets it back on).
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch

_TRUE = {"1", "true", "yes", "y", "on"}


class EngineError(RuntimeError):
    """The distributed engine asked for cannot run on this machine (the message says what is missing)."""


def _flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in _TRUE


def fsdp2_settings(accelerator) -> dict | None:
    """``{"reshard_after_forward": bool}`` when FSDP was asked for and latkit must apply it itself (the
    accelerator is not FSDP, i.e. CPU), else ``None``. FSDP1 on CPU is an :class:`EngineError`."""
    if not _flag("ACCELERATE_USE_FSDP") or accelerator.num_processes < 2:
        return None
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return None  # accelerate applies it (GPU)
    version = os.environ.get("FSDP_VERSION", "1").strip()
    if version != "2":
        raise EngineError(f"FSDP version {version} on {accelerator.device.type}: latkit applies FSDP itself "
                          "only for fsdp_version: 2 (torch fully_shard); set fsdp_version: 2")
    return {"reshard_after_forward": _flag("FSDP_RESHARD_AFTER_FORWARD", "true")}


def check_engine() -> None:
    """Refuse a DeepSpeed launch (``ACCELERATE_USE_DEEPSPEED``, set by ``accelerate launch`` with a DeepSpeed
    config) that cannot run: without the package accelerate fails deep inside, and without CUDA it silently
    runs plain DDP instead (accelerate honours DeepSpeed only on accelerators)."""
    if not _flag("ACCELERATE_USE_DEEPSPEED"):
        return
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip() == "3":
        raise EngineError("DeepSpeed ZeRO-3 is not supported: latkit's checkpoints and model/ read the weights "
                          "directly, which ZeRO-3 partitions away (they would be saved empty); use FSDP2 "
                          "(benchmarks/accelerate/fsdp2_lora.yaml) to shard weights")
    import importlib.util

    missing = []
    if importlib.util.find_spec("deepspeed") is None:
        missing.append("the `deepspeed` package (pip install deepspeed)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (accelerate runs DeepSpeed only on GPUs; on CPU it would silently run DDP)")
    if missing:
        raise EngineError("a DeepSpeed config was launched (ACCELERATE_USE_DEEPSPEED=true) but this machine lacks "
                          + " and ".join(missing) + "; on CPU use benchmarks/accelerate/ddp.yaml or fsdp2_lora.yaml")


def fully_shard_model(model, layers, reshard_after_forward: bool = True):
    """FSDP2 in place: each block of ``layers`` is one unit, the root holds the rest (embeddings, norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = torch.distributed.get_world_size()
    dev = next(model.parameters()).device.type
    mesh = init_device_mesh(dev, (world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


@contextmanager
def gradient_sync(accelerator, model, sync: bool):
    """Around the forward of one defender micro-batch whose backward follows it: ``sync=False`` (all but the
    last micro-batch of a step) accumulates the gradients locally, with no collective. FSDP2 (latkit's on CPU,
    accelerate's on GPU): ``set_requires_gradient_sync(sync)`` on every FSDP unit, read by its post-backward
    (reduce-scatter once per step, of the accumulated unsharded gradients); if the micro-batch fails, sync is
    switched back on. Anything else: ``accelerator.no_sync`` (DDP; a no-op for one process)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
        try:
            yield
        except BaseException:
            model.set_requires_gradient_sync(True)
            raise
        return
    with nullcontext() if sync else accelerator.no_sync(model):
        yield


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter or state, detached (collective for a DTensor)."""
    t = t.detach()
    return t.full_tensor() if is_sharded(t) else t


def shard_as(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor) laid out as ``like``: this rank's shard when ``like`` is a DTensor."""
    if not is_sharded(like):
        return value
    from torch.distributed.tensor import distribute_tensor

    # every rank holds the same full tensor: cut locally instead of scattering from rank 0
    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements,
                             src_data_rank=None)


def full_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered (collective): the layout a
    single process saves."""
    sd = optimizer.state_dict()
    return {**sd, "state": {k: {n: full(v) if isinstance(v, torch.Tensor) else v for n, v in s.items()}
                            for k, s in sd["state"].items()}}


def shard_optimizer_state(sd: dict, optimizer) -> dict:
    """A saved full optimiser state, cut to this rank's shards of ``optimizer``'s parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not any(is_sharded(p) for p in params):
        return sd
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    by_id = dict(zip(ids, params))
    state = {}
    for k, s in sd["state"].items():
        p = by_id[int(k)]
        state[k] = {n: shard_as(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape and v.dim() else v
                    for n, v in s.items()}
    return {**sd, "state": state}
