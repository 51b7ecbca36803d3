"""Unlearning losses: gradient ascent, RMU and WHP-style generic labels.

All losses are to be *minimised* and are token-weighted means over the positions
a ``mask`` marks, so padding (left or right) never counts. Token losses follow
:mod:`latkit.objectives.losses` (logits at ``t`` predict token ``t + 1``; ``offset``
= leading positions whose logits were not computed). Activation losses take the
``(B, T, H)`` output of one decoder block (see :func:`layer_activations`) and a
``(B, T)`` mask of valid tokens (the attention mask).

RMU follows the WMDP reference (Li et al. 2024, ``rmu/unlearn.py``): one random
control vector per forget corpus, ``u = rand(1, 1, H) / ‖·‖ · c``; the forget loss
is the MSE between the updated model's activations at layer ``ℓ`` and ``u``, the
retain loss the MSE against a frozen copy's activations at the same layer; only
the MLP down-projections of a few layers before ``ℓ`` are trained. The reference
averages over every position, padding included; here only valid tokens count
(identical without padding).
"""
from __future__ import annotations

import fnmatch
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from latkit.objectives.losses import _shifted, cross_entropy, unlikelihood

#: Names (relative to a decoder block) of the MLP down-projection weight across families:
#: Llama/Qwen2/Mistral/Gemma/Phi-3, GPT-NeoX, GPT-2, OPT/Phi.
DOWN_PROJ_PATTERNS: tuple[str, ...] = (
    "mlp.down_proj.weight", "mlp.dense_4h_to_h.weight", "mlp.c_proj.weight", "fc2.weight", "mlp.fc2.weight",
)


# --------------------------------------------------------------------------- gradient ascent / WHP
def gradient_ascent_loss(logits, input_ids, mask, offset: int = 0,
                         kind: Literal["ascent", "unlikelihood"] = "ascent") -> torch.Tensor:
    """Forget-text loss whose minimisation *raises* the model's loss on the forget tokens.

    ``kind="ascent"``: ``−CE`` (plain gradient ascent; unbounded below, so it is
    usually paired with a retain loss and few steps). ``kind="unlikelihood"``:
    mean ``−log(1 − p)`` (bounded below by 0; its gradient vanishes as ``p → 0``).
    """
    if kind == "ascent":
        return -cross_entropy(logits, input_ids, mask, offset)
    if kind == "unlikelihood":
        return unlikelihood(logits, input_ids, mask, offset)
    raise ValueError(f"unknown gradient-ascent kind {kind!r}: expected 'ascent' or 'unlikelihood'")


def generic_label_loss(logits, generic, mask, offset: int = 0) -> torch.Tensor:
    """Cross-entropy toward *generic* predictions (Eldan & Russinovich 2023, "Who's Harry Potter?").

    ``generic`` is either token ids ``(B, T)`` aligned like ``input_ids`` (the token
    at ``t`` is the target of the logits at ``t − 1``: a generic completion), or a
    float tensor shaped like ``logits`` (same ``offset``) of generic logits or
    log-probabilities (soft targets: ``−Σ_v q(v) log p_θ(v)`` with ``q = softmax``).
    """
    if not torch.is_floating_point(generic):
        return cross_entropy(logits, generic, mask, offset)
    if generic.shape != logits.shape:
        raise ValueError(f"generic logits of shape {tuple(generic.shape)} do not match logits {tuple(logits.shape)}")
    ids = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)  # only positions are read
    lg, _ = _shifted(logits, ids, mask, offset)
    q, _ = _shifted(generic, ids, mask, offset)
    if not lg.shape[0]:
        return lg.sum()
    return -(F.softmax(q.float(), -1) * F.log_softmax(lg.float(), -1)).sum(-1).mean()


def whp_generic_logits(baseline_logits, reinforced_logits, alpha: float = 1.0) -> torch.Tensor:
    """WHP's generic prediction ``v_base − α·ReLU(v_reinforced − v_base)``: less of what the reinforced model boosts."""
    return baseline_logits - alpha * F.relu(reinforced_logits - baseline_logits)


# --------------------------------------------------------------------------- RMU
def rmu_control_vector(hidden_size: int, generator: torch.Generator | None = None, steering_coeff: float = 20.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``u = rand(1, 1, H) / ‖·‖ · steering_coeff`` (the WMDP reference's control vector), ``(1, 1, H)``."""
    u = torch.rand(1, 1, hidden_size, generator=generator, dtype=torch.float32)
    return (u / u.norm() * steering_coeff).to(dtype)


def rmu_control_vectors(names: Sequence[str], hidden_size: int, seed: int = 0, steering_coeff: float | Sequence[float]
                        = 20.0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One control vector per forget corpus, drawn in order from one generator seeded with ``seed``.

    ``steering_coeff``: one value, or one per corpus (the reference's
    ``--steering_coeffs``). Deterministic per seed; distinct per corpus.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"forget corpus names must be distinct, got {names!r}")
    coeffs = [steering_coeff] * len(names) if isinstance(steering_coeff, (int, float)) else list(steering_coeff)
    if len(coeffs) != len(names):
        raise ValueError(f"{len(coeffs)} steering coefficients for {len(names)} forget corpora")
    g = torch.Generator().manual_seed(seed)
    return {n: rmu_control_vector(hidden_size, g, c, dtype) for n, c in zip(names, coeffs)}


def masked_mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid tokens of ``mask`` (``(B, T)``) and all hidden units.

    ``target`` broadcasts against ``activations`` (a ``(1, 1, H)`` control vector or
    ``(B, T, H)`` activations). Equals ``F.mse_loss`` when every token is valid.
    """
    m = mask.bool()
    if m.shape != activations.shape[:2]:
        raise ValueError(f"mask of shape {tuple(m.shape)} does not match activations {tuple(activations.shape)}")
    diff = activations.float() - target.float().to(activations.device)
    sq = diff.pow(2)[m]
    return sq.mean() if sq.numel() else sq.sum()


def rmu_forget_loss(activations, control_vec, mask) -> torch.Tensor:
    """RMU forget loss: MSE between the updated model's activations and the control vector ``u``."""
    return masked_mse(activations, control_vec, mask)


def rmu_retain_loss(activations, frozen_activations, mask) -> torch.Tensor:
    """RMU retain loss: MSE between the updated model's and the frozen model's activations (same layer)."""
    return masked_mse(activations, frozen_activations.detach(), mask)


def rmu_trainable(model, layer_ids: Sequence[int], param_patterns: Sequence[str] = DOWN_PROJ_PATTERNS) -> list[str]:
    """Freeze every parameter of ``model`` except the ``param_patterns`` of decoder blocks ``layer_ids``.

    Patterns are glob patterns on parameter names relative to a block (a PEFT
    ``.base_layer`` is ignored when matching), by default the MLP down-projection
    weight (the WMDP reference trains ``param_ids=[6]`` of layers ``5, 6, 7``: the
    down-projection of Zephyr). Blocks are found by
    :class:`~latkit.models.adapter.ModelAdapter`. Returns the trained parameters'
    names as in ``model.named_parameters()``.
    """
    from latkit.models.adapter import ModelAdapter

    if not layer_ids:
        raise ValueError("rmu_trainable needs at least one layer id")
    adapter = ModelAdapter.from_model(model)
    chosen: dict[int, None] = {}
    for i in layer_ids:
        block = adapter.site_module(f"layer.{i}")  # validates the range
        hits = [p for n, p in block.named_parameters()
                if any(fnmatch.fnmatchcase(n.replace(".base_layer", ""), pat) for pat in param_patterns)]
        if not hits:
            names = ", ".join(n for n, _ in block.named_parameters())
            raise ValueError(f"no parameter of layer {i} matches {list(param_patterns)!r}; its parameters: {names}")
        chosen.update(dict.fromkeys(id(p) for p in hits))
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) in chosen:
            trained.append(name)
    return trained


# --------------------------------------------------------------------------- activations
def layer_activations(model, batch: dict, layer: int | str, *, grad: bool = True, adapter=None) -> torch.Tensor:
    """The output of decoder block ``layer`` (or a site name like ``"layer.7"``) for ``batch``: ``(B, T, H)``.

    One forward of ``model`` on ``input_ids`` / ``attention_mask`` / ``position_ids``
    (the LM head computes only the last position), recorded with
    :func:`latkit.models.hooks.record`; ``grad=False`` runs under ``torch.no_grad``
    (for the frozen model of RMU's retain loss). ``adapter``: the model's
    :class:`~latkit.models.adapter.ModelAdapter`, if the caller keeps one.
    """
    from latkit.models.adapter import ModelAdapter
    from latkit.models.hooks import record

    site = layer if isinstance(layer, str) else f"layer.{layer}"
    store: dict = {}
    keys = ("input_ids", "attention_mask", "position_ids")
    inputs = {k: batch[k] for k in keys if k in batch}
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()), \
            record(adapter or ModelAdapter.from_model(model), [site], store, detach=not grad):
        model(**inputs, use_cache=False, logits_to_keep=1)
    return store[site]
