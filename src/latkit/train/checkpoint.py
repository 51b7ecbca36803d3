"""Atomic checkpoints: trainable weights (safetensors), optimiser, scheduler, RNG and data position.

Layout: ``checkpoints/step-000010/`` holding ``trainable.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``rng-<rank>.pt``, ``state.json`` (and, from the trainer, the model in
``from_pretrained`` form: ``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer + card). A
checkpoint is written to a temporary directory and renamed into place, so a
kill mid-write leaves the previous checkpoint intact; ``state.json`` is the last
file written. Everything is loaded with ``weights_only=True`` (no pickled code).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from latkit.train.distributed import shard_as, shard_optimizer_state


def rng_state(generator: torch.Generator | None = None) -> dict:
    """All RNG states as plain containers and tensors (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def save_checkpoint(root: Path, step: int, *, trainable: dict, optimizer, scheduler, state: dict,
                    rng: dict, rank: int = 0, is_main: bool = True, barrier=lambda: None, keep: int = 2,
                    write_extra=None) -> Path:
    """Write checkpoint ``step`` under ``root`` (every rank calls this; rank 0 owns shared files).

    ``write_extra(tmp_dir)`` (main process) adds files before ``state.json`` marks the checkpoint complete:
    the trainer writes the model there in ``from_pretrained`` form, so a checkpoint loads and evaluates."""
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-step-{step:06d}"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    torch.save(rng, tmp / f"rng-{rank}.pt")
    if is_main:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if write_extra is not None:
            write_extra(tmp)
    barrier()
    if is_main:
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(root: Path) -> Path | None:
    done = [p for p in sorted(root.glob("step-*")) if (p / "state.json").exists()]
    return done[-1] if done else None


def load_checkpoint(path: Path, *, model, optimizer, scheduler, rank: int = 0, device="cpu") -> tuple[dict, dict]:
    """Restore weights, optimiser and scheduler in place; return ``(state, rng)``."""
    device = torch.device(device)  # safetensors and torch.load reject "cpu:0" (a distributed CPU run's device)
    device = "cpu" if device.type == "cpu" else str(device)
    weights = load_file(str(path / "trainable.safetensors"), device=device)
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing:
        raise RuntimeError(f"checkpoint {path} has weights the model lacks: {missing[:3]}")
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(shard_as(v, params[k]))  # FSDP: this rank's shard of the full tensor
    optimizer.load_state_dict(shard_optimizer_state(
        torch.load(path / "optimizer.pt", weights_only=True, map_location=device), optimizer))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{rank}.pt"
    rng = torch.load(rng_file, weights_only=True) if rng_file.exists() else {}
    return json.loads((path / "state.json").read_text()), rng
