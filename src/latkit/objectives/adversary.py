"""What the adversary minimises (targeted, untargeted, dpo) — or how it is replaced (random, none).

Each kind is a class with its own fields and validation; :data:`AdversaryObjective` is their
discriminated union on ``kind`` (what a recipe's ``adversary.objective`` holds). Every objective is
called as ``objective(logits, batch, offset) -> (loss, parts)`` and says how a latent adversary
uses it (:meth:`Objective.perturb`: optimise δ against it, draw a random δ, or nothing), so the
trainer needs no branch per kind. A new objective is a new class here plus its member in the union.
"""
from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, model_validator

from latkit.objectives.forward import group_rows
from latkit.objectives.losses import cross_entropy, unlikelihood

# fields every kind accepted before objectives were classes: a stored recipe (``RUN/recipe.yaml``) holds them
# whatever its kind, and ``--set adversary.objective.kind=random`` on a targeted recipe keeps toward / away;
# where they do not apply they are dropped (with a warning when not at these, their old defaults)
_LEGACY_DEFAULTS = {"toward": 1.0, "away": 1.0, "harmful_group": "harmful", "refusal_group": "refusal",
                    "desirable_group": "refusal"}


class Objective(BaseModel):
    """The base of every adversary objective."""

    model_config = ConfigDict(extra="forbid")

    #: whether δ is optimised against this objective (False: a random δ, or no adversary)
    optimised: ClassVar[bool] = True
    #: whether the run has a latent adversary at all
    uses_adversary: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_fields(cls, data: Any):
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields)
        out = {}
        for k, v in data.items():
            if k in own or k not in _LEGACY_DEFAULTS:
                out[k] = v
            elif v != _LEGACY_DEFAULTS[k]:
                warnings.warn(f"adversary.objective.{k} does not apply to kind {data.get('kind')!r} and is ignored "
                              f"(its settings: {', '.join(sorted(own - {'kind'})) or 'none'})", stacklevel=2)
        return out

    def __call__(self, logits, batch: dict, offset: int = 0):
        """Return ``(loss, parts)``; ``parts`` holds detached components for logging."""
        raise ValueError(f"objective kind {self.kind!r} is not optimised")

    def perturb(self, adversary, batch: dict, generator=None, autocast=None):
        """The perturbation of ``batch`` this objective asks of ``adversary`` (a ``LatentAdversary``):
        PGD against ``self``, by default (``autocast``: a context-manager factory for the forwards)."""
        from contextlib import nullcontext

        with (autocast or nullcontext)():
            return adversary.attack(batch, self, generator)


class TargetedObjective(Objective):
    """``toward · CE(harmful) + away · UL(refusal)`` (Sheshadri et al.): make the harmful completion
    likely and the refusal unlikely."""

    kind: Literal["targeted"] = "targeted"
    toward: float = Field(1.0, ge=0)
    away: float = Field(1.0, ge=0)
    harmful_group: str = "harmful"
    refusal_group: str = "refusal"

    @model_validator(mode="after")
    def _something_to_optimise(self):
        if not (self.toward or self.away):
            raise ValueError("a targeted objective needs toward > 0 or away > 0 (no adversary: kind: none)")
        return self

    def __call__(self, logits, batch: dict, offset: int = 0):
        ids, mask = batch["input_ids"], batch["completion_mask"]
        h = group_rows(batch, self.harmful_group)
        toward = cross_entropy(logits[h], ids[h], mask[h], offset)
        loss, parts = self.toward * toward, {"toward": toward.detach()}
        if self.away:
            r = group_rows(batch, self.refusal_group)
            away = unlikelihood(logits[r], ids[r], mask[r], offset)
            loss = loss + self.away * away
            parts["away"] = away.detach()
        return loss, parts


class UntargetedObjective(Objective):
    """``−CE(desirable)`` (Casper et al.): maximise the loss of the desirable completion (the
    ``desirable`` group, e.g. the refusal)."""

    kind: Literal["untargeted"] = "untargeted"
    desirable_group: str = "refusal"

    def __call__(self, logits, batch: dict, offset: int = 0):
        d = group_rows(batch, self.desirable_group)
        ce = cross_entropy(logits[d], batch["input_ids"][d], batch["completion_mask"][d], offset)
        return -ce, {"desirable_ce": ce.detach()}


class DPOObjective(Objective):
    """DPO with chosen and rejected swapped (DPO-LAT, Sheshadri et al. §backdoors): the adversary prefers
    the rejected (harmful) answer. Its β and loss type are a
    :class:`~latkit.objectives.preference.PreferenceLoss` (in a recipe: ``defender.preference``),
    bound with :meth:`with_loss`; the reference's ``(chosen, rejected)`` log-probs of the batch are
    read from ``batch["ref_logps"]`` (:func:`latkit.objectives.preference.reference_logps`)."""

    kind: Literal["dpo"] = "dpo"
    _loss: Any = PrivateAttr(default=None)

    def with_loss(self, loss) -> "DPOObjective":
        """A copy of this objective that scores with ``loss`` (a ``PreferenceLoss``)."""
        out = self.model_copy()
        out._loss = loss
        return out

    def __call__(self, logits, batch: dict, offset: int = 0):
        if self._loss is None:
            raise ValueError("the dpo objective needs its preference loss: objective.with_loss(PreferenceLoss(...)) "
                             "(a recipe takes it from defender.preference)")
        if "ref_logps" not in batch:
            raise ValueError("the dpo objective needs the reference's log-probs of the batch in batch['ref_logps'] "
                             "(latkit.objectives.preference.reference_logps)")
        return self._loss(logits, batch, offset, reference=batch["ref_logps"], swap=True)


class RandomObjective(Objective):
    """RLP: no optimisation; δ is random with norm ε."""

    kind: Literal["random"] = "random"
    optimised: ClassVar[bool] = False

    def perturb(self, adversary, batch: dict, generator=None, autocast=None):
        return adversary.random(batch, generator)


class NoObjective(Objective):
    """No adversary (RT)."""

    kind: Literal["none"] = "none"
    optimised: ClassVar[bool] = False
    uses_adversary: ClassVar[bool] = False

    def perturb(self, adversary, batch: dict, generator=None, autocast=None):
        return None


AdversaryObjective = Annotated[
    Union[TargetedObjective, UntargetedObjective, DPOObjective, RandomObjective, NoObjective],
    Field(discriminator="kind"),
]
OBJECTIVES = {c.model_fields["kind"].default: c
              for c in (TargetedObjective, UntargetedObjective, DPOObjective, RandomObjective, NoObjective)}
_ADAPTER = TypeAdapter(AdversaryObjective)


def default_objective() -> TargetedObjective:
    return TargetedObjective()


def make_objective(kind: str = "targeted", **settings) -> Objective:
    """The objective of ``kind`` with ``settings`` (validated as in a recipe)."""
    return _ADAPTER.validate_python({"kind": kind, **settings})
