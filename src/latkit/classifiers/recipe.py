"""The classifier recipe: one YAML file for a classifier run (``kind: classifier``), schema-validated.

Same style as :mod:`latkit.train.recipe` (strict keys, ``--set`` overrides, errors that name the key).
The ``model:`` and ``data:`` sections are the modality's own (``modality: image`` → the image sections),
the rest is shared::

    kind: classifier
    modality: image
    model: {arch: small_cnn}            # the modality's model section
    data: {source: synthetic}           # the modality's data section
    method: {kind: lat, site: layer1, norm: l2, epsilon: 0.1, relative: true, steps: 5}
    train: {steps: 300, batch_size: 64, lr: 0.05, optimizer: sgd}
    backdoor: {trigger: patch, target: 0, poison_fraction: 0.1}
    eval: {pgd_epsilons: [0.0157, 0.0314], pgd_norm: linf}
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from latkit.classifiers.modality import ClassifierError, modality_class
from latkit.config import StrictModel, format_validation_error

M = TypeVar("M")
D = TypeVar("D")

METHOD_KINDS = ("plain", "at", "lat", "rlp")


class PlainMethod(StrictModel):
    """Plain fine-tuning: cross-entropy on the clean batch."""

    kind: Literal["plain"] = "plain"


class _Perturbed(StrictModel):
    norm: Literal["l2", "linf"] = "l2"
    epsilon: float = Field(..., gt=0, description="radius of δ's ball, per example")
    clean_weight: float = Field(0.0, ge=0, le=1, description="loss = w·CE(clean) + (1−w)·CE(perturbed)")


class _Pgd(_Perturbed):
    steps: int = Field(5, ge=1)
    step_size: float | None = Field(None, gt=0, description="PGD step; null: 2.5·ε/steps")


class _Latent(StrictModel):
    site: str | None = Field(None, description="module path of δ (e.g. layer1); null: the modality's default")
    relative: bool = Field(False, description="ε in units of the batch's mean per-example activation norm at the site")


class AtMethod(_Pgd):
    """Adversarial training: input-space PGD (pixels, or embeddings for text) maximising the task loss."""

    kind: Literal["at"]


class LatMethod(_Pgd, _Latent):
    """Latent adversarial training: PGD on δ at a module's output, maximising the task loss."""

    kind: Literal["lat"]


class RlpMethod(_Perturbed, _Latent):
    """Random latent perturbations: δ of norm ε in a random direction at the site (no optimisation)."""

    kind: Literal["rlp"]


MethodSection = Annotated[Union[PlainMethod, AtMethod, LatMethod, RlpMethod], Field(discriminator="kind")]


class TrainSection(StrictModel):
    steps: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(5.0, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    init_from: str | None = Field(None, description="a classifier run directory whose final model to start from "
                                  "(e.g. the backdoored model to fine-tune)")


class BackdoorSection(StrictModel):
    """A trigger implanted in a fraction of the training data (relabelled to ``target``), and measured at eval.
    ``poison_fraction: 0`` trains clean but still measures the trigger (a clean fine-tune of a poisoned model)."""

    trigger: str = "patch"
    target: int = Field(0, ge=0)
    poison_fraction: float = Field(0.1, ge=0, lt=1)
    params: dict[str, Any] = Field(default_factory=dict, description="the trigger's settings (see the modality)")


class EvalSection(StrictModel):
    batch_size: int = Field(128, ge=1)
    limit: int | None = Field(None, ge=1, description="evaluate on at most this many test examples")
    pgd_norm: Literal["l2", "linf"] | None = Field(None, description="null: the AT method's norm, else the modality's")
    pgd_epsilons: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="seen-attack radii; null: [ε, 2ε] of an AT method, else the modality's defaults")
    pgd_steps: int = Field(10, ge=1)
    attacks: list[str] | None = Field(None, description="novel attacks to run; null: all of the modality's")
    seed: int = 0


class ClassifierRecipe(StrictModel, Generic[M, D]):
    """A classifier run: Plain / AT / LAT / RLP training of an image or text classifier."""

    kind: Literal["classifier"]
    modality: str
    name: str = "classifier"
    description: str = ""
    model: M
    data: D
    method: MethodSection = Field(default_factory=PlainMethod)
    train: TrainSection = Field(default_factory=TrainSection)
    backdoor: BackdoorSection | None = None
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _consistent(self):
        if self.backdoor is not None:
            triggers = modality_class(self.modality).triggers()
            if self.backdoor.trigger not in triggers:
                raise ValueError(f"backdoor.trigger: {self.backdoor.trigger!r} is not a {self.modality} trigger "
                                 f"({', '.join(triggers)})")
            known = triggers[self.backdoor.trigger].defaults
            unknown = [k for k in self.backdoor.params if k not in known]
            if unknown:
                raise ValueError(f"backdoor.params: unknown key(s) {unknown} for the {self.backdoor.trigger} trigger "
                                 f"(its settings: {', '.join(known) or 'none'})")
        if self.eval.attacks is not None:
            known = modality_class(self.modality).attack_names()
            bad = [a for a in self.eval.attacks if a not in known]
            if bad:
                raise ValueError(f"eval.attacks: unknown {self.modality} attack(s) {bad} (known: {', '.join(known)})")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def is_classifier_recipe(data) -> bool:
    return isinstance(data, dict) and data.get("kind") == "classifier"


def recipe_class(modality: str) -> type[ClassifierRecipe]:
    cls = modality_class(modality)
    return ClassifierRecipe[cls.model_section, cls.data_section]


def recipe_from_dict(data: dict, overrides: list[str] | None = None) -> ClassifierRecipe:
    from latkit.train.recipe import apply_overrides, non_finite

    data = apply_overrides(copy.deepcopy(dict(data or {})), overrides or [])  # the caller's dict stays as it was
    if not is_classifier_recipe(data):
        raise ClassifierError("a classifier recipe needs `kind: classifier`")
    modality = data.get("modality")
    if not isinstance(modality, str):
        raise ClassifierError("invalid recipe: modality: give the input modality (image or text)")
    cls = recipe_class(modality)
    try:
        recipe = cls.model_validate(data)
    except ValidationError as e:
        raise ClassifierError(f"invalid recipe: {format_validation_error(e, root='recipe', tags=METHOD_KINDS)}") from None
    bad = non_finite(recipe.model_dump(mode="python"))
    if bad:
        raise ClassifierError(f"invalid recipe: {bad[0]}: must be a finite number, got {bad[1]}")
    return recipe


def read_yaml(path: str | Path) -> dict:
    """The mapping in a recipe file or shipped recipe (:func:`latkit.train.recipe.read_recipe_yaml`)."""
    from latkit.train.recipe import read_recipe_yaml

    return read_recipe_yaml(path, ClassifierError)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> ClassifierRecipe:
    return recipe_from_dict(read_yaml(path), overrides)
