"""Safety-recovery augmentation in a recipe (``recovery:``; ``null`` = off): the refusal is trained after a
random-length prefix of the harmful answer (Qi et al. 2024), with RT or with LAT. The task that does it is
:class:`latkit.train.tasks.recovery.RecoveryTask`; the batch rewrite is :func:`latkit.data.recovery.prefix_refusals`."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RecoverySettings(BaseModel):
    """``probability``: share of harmful examples whose refusal follows a harmful prefix; its length is
    uniform in ``1 .. min(max_prefix_tokens, harmful tokens − 1)`` (Qi et al. sample it over the answer)."""

    model_config = ConfigDict(extra="forbid")

    probability: float = Field(0.5, gt=0, le=1)
    max_prefix_tokens: int = Field(16, ge=1)
    seed: int = 0
