"""Plain-text corpora and their batches: :func:`load_texts` (forget / retain / relearn text from
``.txt``, CSV/JSONL/JSON or a list) and :class:`TextCollator` (texts into batches that
:func:`latkit.objectives.forward.forward_logits` and the token losses take unchanged).
Used by unlearning runs, the relearning attack and text fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from latkit.data.loaders import Source, load_records
from latkit.data.schemas import DataError
from latkit.models.chat import encode_text


def load_texts(source: Source | Sequence[str], *, column: str = "text", limit: int | None = None) -> list[str]:
    """Texts from a ``.txt`` file (one per non-empty line), a CSV/JSONL/JSON file or list of records
    (the ``column`` field), or a list of strings. Empty texts and a missing column are errors."""
    if isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source):
        texts = list(source[:limit] if limit is not None else source)
        for i, t in enumerate(texts, start=1):
            if not t.strip():
                raise DataError(f"texts list, row {i}: empty text")
        if not texts:
            raise DataError("texts list: no texts")
        return texts
    if isinstance(source, (str, Path)) and Path(source).expanduser().suffix.lower() == ".txt":
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"{path}: no text lines")
        return lines[:limit] if limit is not None else lines
    return [r["text"] for r in load_records(source, columns={"text": column}, limit=limit)]


@dataclass
class TextCollator:
    """Callable turning raw texts into a batch whose loss counts every token but the first.

    Keys as :class:`~latkit.data.collator.PromptCompletionCollator` with one group:
    ``input_ids``, ``attention_mask``, ``position_ids`` (from the mask, so
    activations do not depend on ``padding_side``), ``prompt_mask`` (all False),
    ``completion_mask`` (the tokens a language-model loss counts), ``n_groups`` = 1
    and ``groups`` = ``("text",)``. Texts are tokenized with one BOS (where the
    tokenizer uses one) and cut to ``max_length`` tokens from the right.
    """

    tokenizer: Any
    max_length: int = 512
    padding_side: str = "right"

    def __post_init__(self):
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    def __call__(self, texts: Sequence[str | Mapping[str, Any]]) -> dict:
        if not texts:
            raise DataError("no texts to collate")
        seqs = []
        for t in texts:
            text = t.get("text") if isinstance(t, Mapping) else t
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"cannot collate an empty or non-text item: {t!r}"[:200])
            seqs.append(encode_text(self.tokenizer, text, is_start=True)[: self.max_length])
        B, T = len(seqs), max(len(s) for s in seqs)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        for r, s in enumerate(seqs):
            start = 0 if self.padding_side == "right" else T - len(s)
            input_ids[r, start : start + len(s)] = torch.tensor(s)
            attention[r, start : start + len(s)] = 1
        counted = attention.bool()
        counted &= attention.cumsum(-1) > 1  # the first token is predicted by nothing
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
            "prompt_mask": torch.zeros((B, T), dtype=torch.bool),
            "completion_mask": counted,
            "n_groups": 1,
            "groups": ("text",),
        }
