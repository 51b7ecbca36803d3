"""Checkpoints as a trusted store: trainable weights (safetensors), optimiser, scheduler, RNG, data position.

Layout: ``checkpoints/step-000010/`` holding ``trainable.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``rng-<rank>.pt``, ``state.json`` and
``manifest.json`` (and, from the trainer, the model in ``from_pretrained`` form: adapter + tokenizer +
card, so a checkpoint loads and evaluates). A checkpoint is written to a temporary directory, every file
``fsync``-ed, then ``manifest.json`` (size and SHA-256 of every other file) is
written last and the directory renamed into place (and the parent directory
``fsync``-ed), so a kill or a full disk mid-write leaves the previous checkpoint
intact. :func:`intact_checkpoints` trusts a checkpoint only when its manifest
matches the files; the trainer resumes from the newest intact one (with a warning
when it had to skip newer ones). Everything is loaded with ``weights_only=True``
(no pickled code).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from latkit.errors import LatkitError
from latkit.train.distributed import shard_as, shard_optimizer_state

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REQUIRED = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json")


class CheckpointError(LatkitError, RuntimeError):
    """A checkpoint cannot be written or trusted; the message says which and why."""


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


# ----------------------------------------------------------------------------- durable files
def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def make_readable(path: Path) -> None:
    """Give ``path`` (a tree made by ``mkdtemp`` / libraries) the permissions the umask allows, not 0700/0600."""
    mask = os.umask(0)
    os.umask(mask)
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    path.chmod(dir_mode if path.is_dir() else file_mode)
    if path.is_dir():
        for p in path.rglob("*"):
            if not p.is_symlink():
                p.chmod(dir_mode if p.is_dir() else file_mode)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a fsync-ed temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(directory: Path) -> dict:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    return {"files": {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}}


def verify_checkpoint(path: Path, rank: int = 0) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted, or None when it is intact for ``rank``."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        return "no manifest.json (an unfinished or pre-manifest checkpoint)"
    try:
        files = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    for name in (*REQUIRED, f"rng-{rank}.pt"):
        if name not in files:
            return f"{name} is missing" if name.startswith("rng-") else f"{name} is not in its manifest"
    for name, meta in files.items():
        p = path / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {meta['size']}"
        if _sha256(p) != meta["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


# ----------------------------------------------------------------------------- save / find / load
def save_checkpoint(root: Path, step: int, *, trainable: dict, optimizer, scheduler, state: dict,
                    rng: dict, rank: int = 0, is_main: bool = True, barrier=lambda: None, keep: int = 2,
                    write_extra=None) -> Path:
    """Write checkpoint ``step`` under ``root`` (every rank calls this; rank 0 owns shared files).

    ``write_extra(tmp_dir)`` (main process) adds files before the manifest vouches for the checkpoint:
    the trainer writes the model there in ``from_pretrained`` form, so a checkpoint loads and evaluates.
    ``optimizer`` is an optimiser or an already gathered state dict (FSDP). A full disk raises
    :class:`CheckpointError` (the previous checkpoints are left intact)."""
    final = step_dir(root, step)
    tmp = root / f".tmp-step-{step:06d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier()
        torch.save(rng, tmp / f"rng-{rank}.pt")
        fsync_file(tmp / f"rng-{rank}.pt")
        if is_main:
            save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()},
                      str(tmp / "trainable.safetensors"))
            torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, **state}))
            if write_extra is not None:
                write_extra(tmp)
            for f in tmp.iterdir():
                if f.is_file() and not f.name.startswith("rng-"):
                    fsync_file(f)
        barrier()
        if is_main:
            atomic_write_text(tmp / MANIFEST, json.dumps(_manifest(tmp), indent=1))  # last: it vouches for the rest
            make_readable(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root)
            for old in sorted(root.glob("step-*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if is_main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"no space left on the device while writing checkpoint step {step} under {root}; the earlier "
                "checkpoints are intact: free space and rerun with --resume") from None
        raise CheckpointError(f"could not write checkpoint step {step} under {root}: {e}") from None
    except RuntimeError as e:  # torch.save / safetensors wrap a full disk in RuntimeError
        if is_main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if "No space left" in str(e) or "file write failed" in str(e) or "unexpected pos" in str(e):
            raise CheckpointError(
                f"no space left on the device while writing checkpoint step {step} under {root}; the earlier "
                "checkpoints are intact: free space and rerun with --resume") from None
        raise
    barrier()
    return final


def checkpoint_dirs(root: Path) -> list[Path]:
    """Finished checkpoint directories (renamed into place), oldest first."""
    return [p for p in sorted(root.glob("step-*")) if p.is_dir()]


def latest_checkpoint(root: Path, rank: int = 0) -> Path | None:
    """The newest intact checkpoint under ``root`` (see :func:`verify_checkpoint`), or None."""
    for p in reversed(checkpoint_dirs(root)):
        if verify_checkpoint(p, rank) is None:
            return p
    return None


def load_checkpoint(path: Path, *, model, optimizer, scheduler, rank: int = 0, device="cpu") -> tuple[dict, dict]:
    """Restore weights, optimiser and scheduler in place; return ``(state, rng)``.

    A missing ``rng-<rank>.pt`` is a :class:`CheckpointError`: resuming without it diverges silently."""
    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {rng_file.name}: resuming without the RNG state "
                              "would not reproduce the run")
    device = torch.device(device)  # safetensors and torch.load reject "cpu:0" (a distributed CPU run's device)
    device = "cpu" if device.type == "cpu" else str(device)
    weights = load_file(str(path / "trainable.safetensors"), device=device)
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing:
        raise CheckpointError(f"checkpoint {path} has weights the model lacks: {missing[:3]}")
    optim_state = torch.load(path / "optimizer.pt", weights_only=True, map_location=device)
    sched_state = torch.load(path / "scheduler.pt", weights_only=True)
    rng = torch.load(rng_file, weights_only=True)
    state = json.loads((path / "state.json").read_text())
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(shard_as(v, params[k]))  # FSDP: this rank's shard of the full tensor
    optimizer.load_state_dict(shard_optimizer_state(optim_state, optimizer))
    scheduler.load_state_dict(sched_state)
    return state, rng
