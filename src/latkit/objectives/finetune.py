"""The one short language-model fine-tuning loop: AdamW on the completion-token cross-entropy of the
batches it is given. Used by the fine-tuning attack (harmful pairs), the relearning attack and knowledge
implanting (texts); the model is usually a fresh LoRA (:func:`latkit.models.lora.fresh_lora`). The
LAT trainer has its own loop (adversary, accelerate, checkpoints)."""
from __future__ import annotations

from typing import Callable

import torch

from latkit.objectives.forward import forward_logits, to_device
from latkit.objectives.losses import cross_entropy


def finetune_steps(model, next_batch: Callable[[], dict], steps: int, *, learning_rate: float,
                   weight_decay: float = 0.0, max_grad_norm: float | None = None,
                   before_step: Callable[[int], None] | None = None,
                   after_step: Callable[[int, float], None] | None = None) -> tuple[list[float], int]:
    """Take ``steps`` AdamW steps on ``model``'s trainable parameters; return ``(losses, trainable numel)``.

    Each step draws ``next_batch()`` (a collated batch with a ``completion_mask``), runs the model in
    train mode and minimises the cross-entropy of the counted tokens, clipping the gradient norm to
    ``max_grad_norm`` if set. ``before_step(s)`` runs before step ``s`` and once more with ``s = steps``
    at the end (e.g. to evaluate after ``s`` steps); ``after_step(s, loss)`` after each update.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    device = next(model.parameters()).device
    losses: list[float] = []
    for step in range(steps + 1):
        if before_step is not None:
            before_step(step)
        if step == steps:
            break
        model.train()
        batch = to_device(next_batch(), device)
        logits, off = forward_logits(model, batch)
        loss = cross_entropy(logits, batch["input_ids"], batch["completion_mask"], off)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step, losses[-1])
    opt.zero_grad(set_to_none=True)
    return losses, sum(p.numel() for p in params)
