"""Tokenise (prompt, completion…) records into aligned, masked batches.

One record with ``k`` completion fields (e.g. ``harmful`` and ``refusal``)
becomes ``k`` rows, stacked group by group: rows ``[g*B:(g+1)*B]`` hold
completion ``g`` of every example. The prompt of an example sits at the *same
positions* in all its rows, so one per-example perturbation δ of shape
``(B, T, H)`` applies to every row of that example (``delta.repeat(k, 1, 1)``).

Padding side:
- ``right``: sequences start at position 0 and are padded on the right;
- ``left``: each example's longest row ends at the last position; its other rows
  share the same start and are padded on the right of their completion.
``position_ids`` are always derived from the attention mask, so losses do not
depend on the padding side.

Loss masks are over *tokens*: ``completion_mask[r, t]`` is 1 where token ``t``
of row ``r`` is a completion token (it is predicted by the logits at ``t - 1``).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from latkit.errors import LatkitError
from latkit.models.chat import encode_pair

log = logging.getLogger(__name__)


class CollateError(LatkitError, ValueError):
    """A record cannot be turned into a training sequence."""


def _field(record: Any, name: str) -> str:
    value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
    if value is None:
        raise CollateError(f"record has no field {name!r}: {record!r}"[:300])
    if not isinstance(value, str) and not (name == "prompt" and isinstance(value, list)):
        raise CollateError(f"field {name!r} must be a string, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise CollateError(f"field {name!r} is empty in record {record!r}"[:300])
    return value


@dataclass
class PromptCompletionCollator:
    """Callable turning a list of records into a batch dict of tensors.

    Returned keys: ``input_ids``, ``attention_mask``, ``position_ids`` (``(k*B, T)``
    long), ``prompt_mask`` and ``completion_mask`` (``(k*B, T)`` bool), and
    ``n_groups`` (int ``k``) and ``groups`` (the completion field names, in row order).
    """

    tokenizer: Any
    completions: Sequence[str] = ("harmful", "refusal")
    max_length: int = 512
    padding_side: str = "right"
    system: str | None = None

    def __post_init__(self):
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not self.completions:
            raise ValueError("at least one completion field is needed")
        self.completions = tuple(self.completions)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self._truncated = 0

    @property
    def truncated(self) -> int:
        """How many completions were truncated so far."""
        return self._truncated

    def encode(self, record) -> tuple[list[int], list[list[int]]]:
        prompt = _field(record, "prompt")
        comps = [_field(record, c) for c in self.completions]
        p_ids, c_ids = encode_pair(self.tokenizer, prompt, comps, self.system)
        if len(p_ids) >= self.max_length:
            raise CollateError(
                f"prompt of {len(p_ids)} tokens leaves no room for a completion within max_length="
                f"{self.max_length}: {str(prompt)[:80]!r}"
            )
        room = self.max_length - len(p_ids)
        out = []
        for name, ids in zip(self.completions, c_ids):
            if len(ids) > room:
                self._truncated += 1
                if self._truncated == 1:  # once per collator; `truncated` counts the rest
                    warnings.warn(
                        f"{name} completion truncated from {len(ids)} to {room} tokens (max_length="
                        f"{self.max_length}); further truncations are counted in collator.truncated",
                        stacklevel=3,
                    )
                ids = ids[:room]
            out.append(ids)
        return p_ids, out

    def __call__(self, records: Sequence[Any]) -> dict:
        encoded = [self.encode(r) for r in records]
        k, B = len(self.completions), len(encoded)
        T = max(len(p) + max(len(c) for c in cs) for p, cs in encoded)
        shape = (k * B, T)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        attention = torch.zeros(shape, dtype=torch.long)
        prompt_mask = torch.zeros(shape, dtype=torch.bool)
        completion_mask = torch.zeros(shape, dtype=torch.bool)
        for b, (p, cs) in enumerate(encoded):
            longest = len(p) + max(len(c) for c in cs)
            start = 0 if self.padding_side == "right" else T - longest
            for g, c in enumerate(cs):
                r = g * B + b
                seq = p + c
                input_ids[r, start : start + len(seq)] = torch.tensor(seq)
                attention[r, start : start + len(seq)] = 1
                prompt_mask[r, start : start + len(p)] = True
                completion_mask[r, start + len(p) : start + len(seq)] = True
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids,
            "prompt_mask": prompt_mask,
            "completion_mask": completion_mask,
            "n_groups": k,
            "groups": self.completions,
        }


def model_inputs(batch: dict) -> dict:
    """The subset of a collated batch that goes into ``model(**inputs)``."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}


def group_slice(batch: dict, g: int) -> slice:
    """Rows of completion group ``g``."""
    B = batch["input_ids"].shape[0] // batch["n_groups"]
    return slice(g * B, (g + 1) * B)
