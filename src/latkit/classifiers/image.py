"""The image modality: a small in-project CNN (or any ``nn.Module`` classifier by import path), generated or
ImageFolder data, pixel-space δ for AT, the first conv block for LAT, the novel image attacks and triggers."""
from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from latkit.classifiers.image_attacks import image_attacks, image_triggers
from latkit.classifiers.image_data import image_folder, synthetic_shapes
from latkit.classifiers.modality import ClassifierError, Modality, Splits
from latkit.config import StrictModel


class ImageModelSection(StrictModel):
    """``arch: small_cnn`` (blocks ``layer1`` … ``layerK`` of conv-bn-relu ×2 + max-pool, then ``fc``), or
    ``factory: "pkg.module:fn"`` called as ``fn(num_classes=N, **kwargs)`` (e.g. ``torchvision.models:resnet18``)."""

    arch: Literal["small_cnn"] = "small_cnn"
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    mean: list[float] | None = Field(None, description="per-channel normalisation applied inside the model's forward "
                                     "(e.g. ImageNet's for a pretrained torchvision model); δ stays in pixel space")
    std: list[float] | None = None


class ImageDataSection(StrictModel):
    """``source: synthetic`` (generated shapes) or a directory in ImageFolder layout."""

    source: str = "synthetic"
    classes: int = Field(6, ge=2, description="synthetic: number of shape classes (2..8)")
    train_size: int = Field(3000, ge=1, description="synthetic: training images")
    test_size: int = Field(600, ge=1, description="synthetic: test images")
    image_size: int = Field(32, ge=8)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="ImageFolder without train/ and test/: held-out share")


class SmallCNN(nn.Module):
    """conv-bn-relu ×2 + max-pool per block (``layer1`` …), global average pool, linear head ``fc``."""

    def __init__(self, num_classes: int, widths=(16, 32, 64), in_channels: int = 3):
        super().__init__()
        c = in_channels
        for i, w in enumerate(widths, 1):
            self.add_module(f"layer{i}", nn.Sequential(
                nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)))
            c = w
        self.depth = len(widths)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        for i in range(1, self.depth + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


def _import_factory(spec: str):
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ClassifierError(f"model.factory must be 'package.module:function', got {spec!r}")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ClassifierError(f"model.factory {spec!r}: cannot import {module} ({e})") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ClassifierError(f"model.factory {spec!r}: {module} has no callable {attr!r}")
    return fn


def _normaliser(mean, std):
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def pre_hook(module, args):
        x, *rest = args
        return ((x - m.to(x.device, x.dtype)) / s.to(x.device, x.dtype), *rest)

    return pre_hook


class ImageModality(Modality):
    name = "image"
    model_section = ImageModelSection
    data_section = ImageDataSection
    default_pgd = ("linf", (4 / 255, 8 / 255))

    # -- model --------------------------------------------------------------------------------------
    def load_model(self, num_classes: int) -> nn.Module:
        cfg = self.recipe.model
        if cfg.factory:
            model = _import_factory(cfg.factory)(num_classes=num_classes, **cfg.kwargs)
            if not isinstance(model, nn.Module):
                raise ClassifierError(f"model.factory {cfg.factory!r} returned {type(model).__name__}, not an nn.Module")
        else:
            model = SmallCNN(num_classes, cfg.widths)
        if (cfg.mean is None) != (cfg.std is None):
            raise ClassifierError("model.mean and model.std go together")
        if cfg.mean is not None:  # before any perturbation pre-hook (those are prepended): δ stays in pixel space
            model.register_forward_pre_hook(_normaliser(cfg.mean, cfg.std))
        return model.to(self.device)

    def save_model(self, model: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({"modality": "image",
                                                           "model": self.recipe.model.model_dump(mode="json")}))

    def load_saved(self, directory: Path, num_classes: int) -> nn.Module:
        from safetensors.torch import load_file

        path = Path(directory) / "model.safetensors"
        if not path.is_file():
            raise ClassifierError(f"{directory} has no model.safetensors (not a finished classifier run?)")
        model = self.load_model(num_classes)
        model.load_state_dict(load_file(str(path), device=str(self.device)))
        return model

    # -- data -----------------------------------------------------------------------------------------
    def load_data(self, seed: int) -> Splits:
        d = self.recipe.data
        if d.source == "synthetic":
            from latkit.classifiers.image_data import SHAPES

            train = synthetic_shapes(d.train_size, d.classes, seed=2 * seed + 1, size=d.image_size)
            test = synthetic_shapes(d.test_size, d.classes, seed=2 * seed + 2, size=d.image_size)
            return Splits(train, test, list(SHAPES[: d.classes]))
        train, test, names = image_folder(d.source, d.image_size, seed, d.test_fraction)
        return Splits(train, test, names)

    def collate(self, raw):
        return raw.to(self.device)

    def forward(self, model, inputs):
        return model(inputs)

    # -- adversaries ------------------------------------------------------------------------------------
    def input_delta(self, model, inputs):
        return torch.zeros(inputs.shape, dtype=torch.float32, device=inputs.device)

    @contextmanager
    def perturb_input(self, model, delta):
        """A forward pre-hook on the model: its input becomes ``clamp(x + δ, 0, 1)``."""

        def pre_hook(module, args):
            x, *rest = args
            if x.shape != delta.shape:
                from latkit.adversary import PerturbationError

                raise PerturbationError(f"δ has shape {tuple(delta.shape)} but the input is {tuple(x.shape)}")
            return ((x.float() + delta).clamp(0, 1).to(x.dtype), *rest)

        handle = model.register_forward_pre_hook(pre_hook, prepend=True)
        try:
            yield
        finally:
            handle.remove()

    def default_latent_site(self, model) -> str:
        """``layer1`` when the model has one (SmallCNN, torchvision ResNets), else the first top-level module
        holding a convolution (the paper's "first post-convolutional layer")."""
        names = dict(model.named_children())
        if "layer1" in names:
            return "layer1"
        for name, child in names.items():
            if any(isinstance(m, nn.modules.conv._ConvNd) for m in child.modules()):
                return name
        raise ClassifierError(f"{type(model).__name__} has no convolutional block to perturb: set method.site")

    @classmethod
    def novel_attacks(cls):
        return image_attacks()

    @classmethod
    def triggers(cls):
        return image_triggers()
