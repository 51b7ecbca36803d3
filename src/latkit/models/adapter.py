"""Where the layers are: an architecture-neutral view of a Hugging Face decoder.

The adapter never hard-codes module paths or sizes. It asks the model
(``get_input_embeddings``, ``config``) and otherwise searches the module tree
for the ``nn.ModuleList`` that holds exactly ``num_hidden_layers`` blocks of one
class. It sees through PEFT wrappers (``PeftModel``), DDP's ``.module`` and
accelerate/FSDP wrappers (FSDP1 ``_fsdp_wrapped_module``; FSDP2 shards in place).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latkit.errors import LatkitError

_WRAPPER_ATTRS = ("module", "_fsdp_wrapped_module", "_orig_mod")


class AdapterError(LatkitError, ValueError):
    """The model's structure could not be understood."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / FSDP1 / torch.compile / PEFT wrappers, returning the HF ``PreTrainedModel``."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
            continue
        for attr in _WRAPPER_ATTRS:
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module) and not hasattr(model, "config"):
                model = inner
                break
        else:
            break
    return model


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


@dataclass(frozen=True)
class ModelAdapter:
    """An architecture-neutral handle on a decoder: embedding, blocks, sizes.

    ``layers[i]`` is decoder block ``i``; the residual stream "after block i" is
    that block's output. Site names used across latkit: ``"embed"`` for the
    embedding output, ``"layer.<i>"`` for the output of block ``i`` (0-based).
    """

    model: nn.Module  # the model as given (may be wrapped)
    base: nn.Module  # the unwrapped HF model
    embedding: nn.Module
    layers: nn.ModuleList
    layers_path: str
    hidden_size: int
    num_layers: int
    family: str

    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelAdapter":
        base = unwrap_model(model)
        config = getattr(base, "config", None)
        if config is None:
            raise AdapterError(f"{type(base).__name__} has no `config`: not a Hugging Face model")
        text = _text_config(config)
        num_layers = getattr(text, "num_hidden_layers", None)
        hidden = getattr(text, "hidden_size", None)
        embedding = base.get_input_embeddings()
        if embedding is None:
            raise AdapterError(f"{type(base).__name__} has no input embeddings")
        if hidden is None:
            hidden = getattr(embedding, "embedding_dim", None) or embedding.weight.shape[1]
        path, layers = _find_layers(base, num_layers)
        return cls(
            model=model,
            base=base,
            embedding=embedding,
            layers=layers,
            layers_path=path,
            hidden_size=int(hidden),
            num_layers=len(layers),
            family=str(getattr(text, "model_type", type(base).__name__)),
        )

    def site_module(self, site: str) -> nn.Module:
        """The module whose output is the residual stream at ``site``."""
        if site == "embed":
            return self.embedding
        if site.startswith("layer."):
            try:
                idx = int(site.split(".", 1)[1])
            except ValueError:
                raise AdapterError(f"bad site {site!r}: expected 'embed' or 'layer.<int>'") from None
            if not -self.num_layers <= idx < self.num_layers:
                raise AdapterError(f"site {site!r} out of range: the model has {self.num_layers} layers")
            return self.layers[idx]
        raise AdapterError(f"bad site {site!r}: expected 'embed' or 'layer.<int>'")

    def site_depth(self, site: str) -> int:
        """Order of a site along the forward pass: embed = -1, layer.i = i."""
        if site == "embed":
            return -1
        idx = int(site.split(".", 1)[1])
        return idx % self.num_layers

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    def describe(self) -> dict:
        return {
            "family": self.family,
            "class": type(self.base).__name__,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "layers_path": self.layers_path,
            "embedding": type(self.embedding).__name__,
            "parameters": sum(p.numel() for p in self.base.parameters()),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def _find_layers(base: nn.Module, num_layers: int | None) -> tuple[str, nn.ModuleList]:
    candidates = []
    for name, mod in base.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            inner = [unwrap_model(m) if not hasattr(m, "config") else m for m in mod]
            kinds = {type(_strip(m)).__name__ for m in inner}
            if len(kinds) == 1:
                candidates.append((name, mod))
    if num_layers is not None:
        exact = [(n, m) for n, m in candidates if len(m) == num_layers]
        if exact:
            # the outermost list of the right length is the decoder stack
            return min(exact, key=lambda nm: nm[0].count("."))
    if not candidates:
        raise AdapterError(f"could not find decoder layers in {type(base).__name__}")
    if num_layers is None:
        return max(candidates, key=lambda nm: len(nm[1]))
    raise AdapterError(
        f"could not find a list of {num_layers} decoder layers in {type(base).__name__} "
        f"(found lists of lengths {sorted({len(m) for _, m in candidates})})"
    )


def _strip(module: nn.Module) -> nn.Module:
    for attr in _WRAPPER_ATTRS:
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module):
            return _strip(inner)
    return module
