"""Fine-tuning attack: a few LoRA steps on harmful (prompt, completion) pairs, then answer.

LoRA adapters (PEFT, all linear layers of the decoder by default) are trained with
the library's own collator and completion-only cross-entropy; base weights are
frozen and never change. A plain model is adapted in place and restored with
PEFT's ``unload()`` (the original modules come back, and their ``requires_grad``
flags and train/eval mode are reset); a model that is already a PEFT model is
merged into a copy first, which is then attacked.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass

from latkit.attacks.base import Attack, AttackConfig, AttackError, AttackOutput, Behaviour, CostMeter, generate_chunks


@dataclass
class FinetuneConfig(AttackConfig):
    """Budget: ``steps`` = 20 optimizer steps of ``train_batch_size`` = 4 examples drawn from at most
    ``n_examples`` pairs (``None``: all), AdamW at ``learning_rate`` = 2e-4, LoRA rank 8 / alpha 16.

    ``pairs``: (prompt, harmful completion) training pairs; default: the behaviours'
    ``completion`` fields. ``target_modules``: LoRA targets (default every linear layer
    of the decoder).
    """

    steps: int = 20
    n_examples: int | None = None
    train_batch_size: int = 4
    learning_rate: float = 2e-4
    lora_r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None
    max_length: int = 256
    pairs: tuple[tuple[str, str], ...] = ()


class FinetuneAttack(Attack):
    """LoRA fine-tuning on harmful pairs within a small step budget."""

    name = "finetune"
    config_class = FinetuneConfig

    def training_pairs(self, behaviours: list[Behaviour]) -> list[tuple[str, str]]:
        c = self.config
        pairs = [(str(p), str(a)) for p, a in c.pairs] or [(b.prompt, b.completion) for b in behaviours
                                                             if b.completion.strip()]
        if not pairs:
            raise AttackError("finetune needs harmful (prompt, completion) pairs: set config.pairs or give "
                              "behaviours with a completion")
        return pairs[: c.n_examples] if c.n_examples else pairs

    @contextmanager
    def finetuned(self, model, tokenizer, pairs: list[tuple[str, str]], meter: CostMeter | None = None):
        """Yield ``(peft_model, info)``: the model with trained LoRA adapters; undone on exit."""
        from latkit.data.collator import PromptCompletionCollator
        from latkit.models.lora import LoraSettings, fresh_lora
        from latkit.objectives.finetune import finetune_steps

        c = self.config
        if c.steps < 0 or c.train_batch_size < 1:
            raise AttackError("steps must be >= 0 and train_batch_size >= 1")
        settings = LoraSettings(r=c.lora_r, alpha=c.lora_alpha, dropout=0.0,
                                target_modules=list(c.target_modules) if c.target_modules else "all-linear")
        with fresh_lora(model, settings, c.seed) as (peft_model, copied):
            if meter is not None and copied:
                meter.watch(peft_model)
            collate = PromptCompletionCollator(tokenizer, completions=("harmful",), max_length=c.max_length,
                                               system=c.system)
            rng = random.Random(c.seed)
            order: list[int] = []

            def next_batch():
                nonlocal order
                batch_idx = []
                while len(batch_idx) < c.train_batch_size:
                    if not order:
                        order = list(range(len(pairs)))
                        rng.shuffle(order)
                    batch_idx.append(order.pop())
                return collate([{"prompt": pairs[i][0], "harmful": pairs[i][1]} for i in batch_idx])

            losses, n_trainable = finetune_steps(
                peft_model, next_batch, c.steps, learning_rate=c.learning_rate,
                after_step=(lambda s, loss: meter.backward()) if meter is not None else None)
            peft_model.eval()
            info = {"train_losses": losses, "steps": c.steps, "n_pairs": len(pairs),
                    "trainable_parameters": n_trainable, "copied_model": copied}
            yield peft_model, info

    def _run(self, model, tokenizer, behaviours: list[Behaviour]) -> list[AttackOutput]:
        pairs = self.training_pairs(behaviours)
        with CostMeter(model) as meter:
            with self.finetuned(model, tokenizer, pairs, meter) as (ft, info):
                answers = generate_chunks(ft, tokenizer, [b.prompt for b in behaviours], self.config)
        cost = meter.cost(shared_by=len(behaviours))
        return [AttackOutput(self.name, b, b.prompt, a, system=self.config.system, cost=cost, extras=dict(info))
                for b, (a, _) in zip(behaviours, answers)]
