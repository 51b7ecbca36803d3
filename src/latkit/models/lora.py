"""LoRA through PEFT, or full fine-tuning."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    """PEFT LoRA settings; ``target_modules="all-linear"`` = every linear layer of the decoder (not the LM head)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


def apply_lora(model, settings: LoraSettings):
    """Wrap ``model`` in a PEFT ``PeftModel`` whose only trainable weights are the LoRA ones."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, cfg)


def trainable_parameters(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextmanager
def fresh_lora(model, settings: LoraSettings, seed: int = 0, *, merge: bool = False):
    """Yield ``(peft_model, copied)``: ``model`` with a new LoRA (initialised from ``seed``); on exit the
    LoRA is removed (``unload``) or, with ``merge=True``, merged into the weights (``merge_and_unload``).

    ``copied`` is True when ``model`` was a PEFT model, merged into a copy that
    carries the new LoRA instead.
    """
    copied = is_peft(model)
    work = copy.deepcopy(model).merge_and_unload() if copied else model
    flags = {n: p.requires_grad for n, p in work.named_parameters()}
    was_training = work.training
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = apply_lora(work, settings)
    try:
        yield peft_model, copied
    finally:
        base = peft_model.merge_and_unload() if merge else peft_model.unload()
        for n, p in base.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
        base.train(was_training)


def _mergeable_lora_linear(module) -> bool:
    """A PEFT LoRA ``Linear`` whose active adapters are plain, frozen and dropout-free right now."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    if type(module) is not LoraLinear or module.merged or module.disable_adapters:
        return False
    base = module.get_base_layer()
    if not isinstance(base, torch.nn.Linear) or type(base.weight) is not torch.nn.Parameter:
        return False  # quantised / sharded (DTensor) base weights: leave them to their own machinery
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return False
    active = [a for a in module.active_adapters if a in module.lora_A]
    for a in active:
        if a in module.lora_variant or module.lora_bias.get(a, False):
            return False  # DoRA & co., LoRA biases: not a plain B @ A
        if module.lora_A[a].weight.requires_grad or module.lora_B[a].weight.requires_grad:
            return False
        if module.training and not isinstance(module.lora_dropout[a], torch.nn.Identity):
            return False  # dropout on the LoRA input is not a weight
    return bool(active)


@contextmanager
def merged_lora(model, dtype: torch.dtype | None = None, *, only_when_casting: bool = False):
    """While active, each frozen PEFT LoRA linear layer runs as one matmul with ``W + Σ scale·B·A``.

    For inner loops that only read the model (the adversary's PGD steps, with the parameters
    frozen): a LoRA layer otherwise costs two extra thin matmuls, an add and their backward at
    every forward. The merged weight is computed once in fp32 and held in ``dtype`` (default: the
    base weight's); the adapter is switched off meanwhile (PEFT's ``disable_adapters`` flag, so the
    layer calls its base layer). Exact up to rounding: in fp32 the sum is formed in another order;
    in bf16 one rounding of ``W + BA`` replaces autocast's roundings of ``W``, ``A`` and ``B``.
    Nothing is written to the master weights; everything is restored on exit, also on error.
    Layers that are trainable, dropout-active, DoRA or quantised are left as they are; with
    ``only_when_casting``, also those whose base weight already has ``dtype`` (merging them would
    add a copy of the weight instead of replacing a cast copy).
    """
    swapped = []
    try:
        for module in model.modules():
            if not _mergeable_lora_linear(module):
                continue
            base = module.get_base_layer()
            w = base.weight
            if only_when_casting and (dtype is None or w.dtype == dtype):
                continue
            with torch.no_grad():
                merged = w.detach().float()
                for a in module.active_adapters:
                    if a in module.lora_A:
                        merged = merged + module.get_delta_weight(a).float()
                merged = merged.to(dtype or w.dtype)
            swapped.append((module, base, w, module._disable_adapters))
            base._parameters["weight"] = torch.nn.Parameter(merged, requires_grad=False)
            module._disable_adapters = True
        yield len(swapped)
    finally:
        for module, base, w, flag in reversed(swapped):
            base._parameters["weight"] = w
            module._disable_adapters = flag
