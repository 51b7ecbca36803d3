"""Configuration of the latent adversary (a schema: unknown keys are errors)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Constraint = Literal["l2_token", "l2_sequence", "linf"]
Optimizer = Literal["sign", "l2", "adam"]
Positions = Literal["prompt", "completion", "all"]
Init = Literal["zero", "random"]


class AdversaryConfig(BaseModel):
    """The latent adversary: where δ goes, how big it may be, how it is optimised.

    - ``sites``: ``"embed"`` and/or ``"layer.<i>"`` (output of decoder block i,
      0-based; negative i counts from the end). Several sites are attacked jointly.
    - ``epsilon``: radius of the constraint (per token for ``l2_token``, per
      example for ``l2_sequence``, per coordinate for ``linf``); one value for all
      sites, or a dict site → radius.
    - ``optimizer``: ``sign`` (sign-gradient PGD), ``l2`` (gradient normalised in
      the constraint's norm), ``adam`` (Adam on δ then projection, as the LAT
      reference). ``step_size`` is the PGD step / Adam learning rate.
    - ``positions``: which tokens are perturbed.
    - ``clamp_to_clean_range``: clamp perturbed activations, per site and hidden
      unit, to the [min, max] seen on the clean batch (Casper et al.).
    - ``prefix_cache`` (default on): compute the clean blocks below the earliest site
      once per attack and reuse them at every PGD step (same δ-gradients; no effect
      when a site is ``embed``). See :mod:`latkit.adversary.prefix`.
    - ``share_prompt`` (default on): run the PGD forwards on one row per example holding the
      prompt once and every completion after it (custom attention mask; same
      logits and δ-gradients), instead of one row per completion group. Applies
      with ``positions: prompt`` on the collator's right-padded batches; otherwise
      the grouped forward is used. See :func:`latkit.objectives.forward.pack_shared_prompt`.
      Both are proven equal to the plain path (losses and δ-gradients, fp32 and bf16)
      on every tested family; set them false to run the plain path.
    - ``merge_lora``: during the attack (parameters frozen) run each PEFT LoRA linear layer as
      one matmul with ``W + scale·B·A`` instead of base + two thin LoRA matmuls
      (:func:`latkit.models.lora.merged_lora`; same function up to rounding). ``auto``: only
      where it costs no memory, i.e. under autocast with fp32 master weights, where the attack
      holds a cast copy of the weights anyway; ``true``: always (one extra copy of the
      LoRA-targeted weights while attacking); ``false``: never.
    """

    model_config = ConfigDict(extra="forbid")

    sites: list[str] = Field(default_factory=lambda: ["layer.4"], min_length=1)
    epsilon: float | dict[str, float] = 1.0
    constraint: Constraint = "l2_token"
    optimizer: Optimizer = "adam"
    step_size: float = Field(0.05, gt=0)
    steps: int = Field(16, ge=0)
    init: Init = "zero"
    positions: Positions = "prompt"
    clamp_to_clean_range: bool = False
    prefix_cache: bool = True
    share_prompt: bool = True
    merge_lora: bool | Literal["auto"] = "auto"

    @field_validator("sites")
    @classmethod
    def _sites(cls, v):
        for s in v:
            if s != "embed" and not (s.startswith("layer.") and s[6:].lstrip("-").isdigit()):
                raise ValueError(f"bad site {s!r}: use 'embed' or 'layer.<int>'")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate sites in {v}")
        return v

    @field_validator("epsilon")
    @classmethod
    def _eps(cls, v):
        vals = v.values() if isinstance(v, dict) else [v]
        if any(e < 0 for e in vals):
            raise ValueError("epsilon must be >= 0")
        return v

    def eps_for(self, site: str) -> float:
        if isinstance(self.epsilon, dict):
            if site not in self.epsilon:
                raise ValueError(f"epsilon has no entry for site {site!r}")
            return float(self.epsilon[site])
        return float(self.epsilon)
