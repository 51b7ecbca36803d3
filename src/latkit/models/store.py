"""Writing a model directory: :func:`save_model` (safetensors, a PEFT adapter or a full model, its tokenizer
and model card) and :func:`atomic_save` (into a temporary directory, fsynced, renamed into place, so a
kill never leaves half a model). The floor under loading (its GGUF cache) and saving (runs, exports)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CARD = "README.md"


def atomic_save(model, tokenizer, target: Path, **kw) -> Path:
    """``save_pretrained`` (safetensors) of model + tokenizer into a temp dir, renamed into ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_model(model, tokenizer, tmp, **kw)
        for f in tmp.iterdir():  # durable before the rename
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_model(model, tokenizer, directory: Path, *, base: str | None = None, card: str | None = None,
               state_dict: dict | None = None) -> None:
    """Save a PEFT adapter (with ``base`` as its base) or a full model, its tokenizer and model card.

    ``state_dict``: full tensors to write instead of the model's own (e.g. gathered from FSDP shards)."""
    directory = Path(directory)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    if hasattr(model, "peft_config"):
        if base is not None:
            for cfg in model.peft_config.values():
                cfg.base_model_name_or_path = base
        # save_embedding_layers=False: no hub lookup of the base's config (latkit never resizes embeddings)
        model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False, **extra)
    else:
        model.save_pretrained(directory, safe_serialization=True, **extra)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if card is not None:
        (directory / CARD).write_text(card, encoding="utf-8")
