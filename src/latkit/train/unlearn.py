"""Unlearning in the one trainer loop: GA, RMU and generic-label (WHP-style) training, with or without LAT.

A recipe with an ``unlearn:`` section trains on forget / retain *text* corpora
instead of harmful triples and benign pairs. Per micro-batch:

- the adversary (if any) attacks the forget batch with the targeted objective
  *toward* the forget text (it tries to bring the knowledge back through δ) and,
  when ``adversary.objective.away`` > 0, *away from* retain text: as in the
  reference's targeted WMDP collator, forget text ``i`` is paired with retain text
  ``i`` (padded to one length) and the pair shares one δ, which is pushed to make
  the forget text likely and the retain text unlikely (``away · −log(1 − p)``), so
  δ has to recall the forgotten knowledge rather than raise the likelihood of all text;
- the defender unlearns on the forget batch **under δ**:
  ``ga``: gradient ascent (−CE or unlikelihood) on the forget tokens;
  ``rmu``: MSE between the activations at ``rmu.layer`` and the corpus' random
  control vector (Li et al. 2024, WMDP); ``generic``: CE toward the user's generic
  labels (Eldan & Russinovich 2023);
- and keeps the retain corpus clean (no δ): CE on the retain text (``ga``,
  ``generic``) or, for ``rmu``, MSE to the frozen model's activations at the same layer.

``total = forget_weight · L_forget(δ) + retain_weight · L_retain``. Several forget
corpora take turns (one per outer step), each with its own RMU control vector.

This module is the recipe's ``unlearn:`` section; the task that trains it is
:class:`latkit.train.tasks.unlearn.UnlearnTask`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from latkit.config import StrictModel


class TextSource(StrictModel):
    """A text corpus: ``.txt`` (one text per line) or CSV/JSONL/JSON with a ``column``.
    ``generic_column``: the generic-label version of each text (for ``method: generic``)."""

    source: str
    column: str = "text"
    generic_column: str | None = None
    limit: int | None = Field(None, ge=1)
    name: str | None = None


class RMUSettings(StrictModel):
    """RMU as in the WMDP code: activations at ``layer`` (the output of that decoder block);
    the control vector ``u = rand(H)/‖·‖ · steering_coeff`` per forget corpus; under full
    fine-tuning only ``param_patterns`` of ``trainable_layers`` (default: ``layer-2 .. layer``)
    train (WMDP: layers 5-7, the MLP down-projection; alpha 1200, steering 6.5 on Zephyr-7B)."""

    layer: int = Field(7, ge=0)
    steering_coeff: float = Field(20.0, gt=0)
    trainable_layers: list[int] | None = None
    param_patterns: list[str] | None = None


class UnlearnSection(StrictModel):
    forget: list[TextSource]
    retain: TextSource
    method: Literal["ga", "rmu", "generic"] = "ga"
    ga_kind: Literal["ascent", "unlikelihood"] = "ascent"
    forget_weight: float = Field(1.0, ge=0)
    retain_weight: float = Field(1.0, ge=0)
    rmu: RMUSettings = Field(default_factory=RMUSettings)
    max_length: int = Field(128, ge=4)
    seed: int = 0

    @field_validator("forget", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, dict) else v

    @field_validator("forget")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("unlearn.forget needs at least one corpus")
        names = [s.name or f"forget{i}" for i, s in enumerate(v)]
        if len(set(names)) != len(names):
            raise ValueError(f"unlearn.forget corpus names must be distinct, got {names}")
        return v

    def forget_names(self) -> list[str]:
        return [s.name or f"forget{i}" for i, s in enumerate(self.forget)]
