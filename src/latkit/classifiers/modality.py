"""What a classifier modality (images, text) supplies to the modality-generic trainer, methods and evaluation.

A :class:`Modality` is built from a classifier recipe and owns everything that depends on the kind of input:
the model (and, for text, its tokenizer), the data, how a batch of raw examples becomes model inputs, where
an *input-space* δ goes (AT), the default *latent* site (LAT/RLP: a module path, see
:class:`latkit.adversary.modules.ModuleSites`), the novel attacks and the backdoor triggers. The trainer,
:mod:`latkit.classifiers.methods` and :mod:`latkit.classifiers.evaluate` only call the methods below.

Raw examples: for images an ``(N, C, H, W)`` float tensor in [0, 1]; for text a list of strings. Novel attacks
and triggers act on raw examples (a character edit happens before tokenisation); :meth:`Modality.collate`
turns a raw batch into the model's inputs (a tensor, or a dict of tensors).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from latkit.errors import LatkitError


class ClassifierError(LatkitError, ValueError):
    """Bad classifier input (recipe, data, model, run directory): one line, exit code 2."""


@dataclass
class Examples:
    """Raw examples and their integer labels (``labels``: ``(N,)`` long)."""

    raw: Any  # images: (N, C, H, W) float tensor in [0, 1]; text: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, idx) -> "Examples":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Examples(select_raw(self.raw, idx), self.labels[idx])


def select_raw(raw, idx: torch.Tensor):
    """Rows ``idx`` of raw examples (a tensor or a list)."""
    if isinstance(raw, torch.Tensor):
        return raw[idx]
    return [raw[int(i)] for i in idx]


@dataclass
class Splits:
    train: Examples
    test: Examples
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class NovelAttack:
    """An attack not seen in training: ``fn(raw, severity, generator, context) -> raw`` at each severity.

    ``severities`` are increasing (severity ``i`` is ``severities[i]``, a strength in the attack's own
    unit); ``context`` is the :class:`AttackContext` (model access, for attacks that need the classifier,
    e.g. a token-level attack on text); most attacks ignore it."""

    name: str
    fn: Callable[..., Any]
    severities: Sequence[float]
    description: str = ""
    needs_model: bool = False

    def __call__(self, raw, severity: float, generator: torch.Generator, context=None):
        return self.fn(raw, severity, generator, context)


@dataclass
class AttackContext:
    """What a model-aware novel attack may use: the modality, the model and the labels of the batch."""

    modality: "Modality"
    model: nn.Module
    labels: torch.Tensor


@dataclass
class Trigger:
    """A backdoor trigger: ``fn(raw, params, generator) -> raw`` with the trigger applied to every example."""

    name: str
    fn: Callable[..., Any]
    defaults: dict = field(default_factory=dict)

    def __call__(self, raw, params: dict, generator: torch.Generator):
        return self.fn(raw, {**self.defaults, **(params or {})}, generator)


class Modality(ABC):
    """One input modality. Subclasses set ``name``, ``model_section`` and ``data_section`` (pydantic
    :class:`~latkit.config.StrictModel` classes: the recipe's ``model:`` and ``data:`` for this modality)."""

    name: ClassVar[str]
    model_section: ClassVar[type]
    data_section: ClassVar[type]
    #: the seen attack's norm and radii at evaluation when the recipe gives none and the method is not AT
    default_pgd: ClassVar[tuple[str, tuple[float, ...]]]

    def __init__(self, recipe, device: str | torch.device = "cpu"):
        self.recipe = recipe
        self.device = torch.device(device)

    # -- model ------------------------------------------------------------------------------------
    @abstractmethod
    def load_model(self, num_classes: int) -> nn.Module:
        """A fresh (or pretrained, per ``recipe.model``) classifier with ``num_classes`` outputs."""

    @abstractmethod
    def save_model(self, model: nn.Module, directory: Path) -> None:
        """Write the final model to ``directory`` (safetensors weights, buffers included)."""

    @abstractmethod
    def load_saved(self, directory: Path, num_classes: int) -> nn.Module:
        """The model :meth:`save_model` wrote."""

    # -- data -------------------------------------------------------------------------------------
    @abstractmethod
    def load_data(self, seed: int) -> Splits:
        """Train and test examples (deterministic given ``recipe.data`` and ``seed``)."""

    @abstractmethod
    def collate(self, raw) -> Any:
        """Model inputs for a batch of raw examples (on ``self.device``): a tensor or a dict of tensors."""

    @abstractmethod
    def forward(self, model: nn.Module, inputs) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""

    # -- where the adversaries act ---------------------------------------------------------------------
    @abstractmethod
    def input_delta(self, model: nn.Module, inputs) -> torch.Tensor:
        """A zero fp32 δ shaped like the input-space perturbation AT optimises (pixels, or embeddings)."""

    @abstractmethod
    def perturb_input(self, model: nn.Module, delta: torch.Tensor) -> AbstractContextManager:
        """While active, every forward of ``model`` sees its input perturbed by ``delta`` (a hook,
        removed on exit even on an exception; images clamp to the valid pixel range)."""

    @abstractmethod
    def default_latent_site(self, model: nn.Module) -> str:
        """The module path LAT/RLP perturb when the recipe names none (the paper: the first
        post-convolutional block of a CNN, a relatively early transformer layer)."""

    # -- unforeseen failure modes -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def novel_attacks(cls) -> dict[str, NovelAttack]:
        """The evaluation's novel attacks by name."""

    @classmethod
    @abstractmethod
    def triggers(cls) -> dict[str, Trigger]:
        """The backdoor triggers by name (``backdoor.trigger`` in the recipe)."""

    @classmethod
    def attack_names(cls) -> list[str]:
        return list(cls.novel_attacks())

    @classmethod
    def trigger_names(cls) -> list[str]:
        return list(cls.triggers())


#: modality name → "module:Class" (imported on first use, so text needs no image code and vice versa)
MODALITIES: dict[str, str] = {
    "image": "latkit.classifiers.image:ImageModality",
    "text": "latkit.classifiers.text:TextModality",
}


def modality_class(name: str) -> type[Modality]:
    if name not in MODALITIES:
        raise ClassifierError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")
    module, _, cls = MODALITIES[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ClassifierError(f"modality {name!r} is not available in this latkit ({module} is missing)") from None
        raise
