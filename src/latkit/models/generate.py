"""Batched generation from chat prompts (greedy by default), left-padded.

A faster engine can stand in for the Hugging Face loop: inside ``with generation_backend(engine)``, greedy
:func:`generate` calls for the model the engine mirrors (``engine.serves(model)``) are answered by
``engine.generate(prompts, max_new_tokens=, prefills=, system=)`` (e.g.
:class:`latkit.models.vllm_engine.VLLMGenerator`).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Sequence

import torch

from latkit.models.chat import Prompt, encode_prompt


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int):
    """Left-pad token lists into ``(input_ids, attention_mask)`` long tensors."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        input_ids[r, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        attention[r, width - len(s):] = 1
    return input_ids, attention


_BACKEND: ContextVar = ContextVar("latkit_generation_backend", default=None)


@contextmanager
def generation_backend(engine):
    """Route greedy :func:`generate` calls for ``engine``'s model to ``engine`` while active (None: no-op)."""
    token = _BACKEND.set(engine)
    try:
        yield engine
    finally:
        _BACKEND.reset(token)


def stop_ids(tokenizer) -> list[int]:
    """The ids generation stops at: EOS and ChatML's ``<|im_end|>`` (where the vocabulary has them)."""
    ids = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted({i for i in ids if isinstance(i, int) and i >= 0})


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    prefills: Sequence[str] | None = None,
    system: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    progress: bool = False,
) -> list[str]:
    """Generate an answer for each prompt.

    ``prefills[i]`` (if given) is text the assistant turn starts with; it is part
    of the prompt and *not* repeated in the returned answer. Answers are decoded
    without special tokens.
    """
    if prefills is not None and len(prefills) != len(prompts):
        raise ValueError("prefills must have one entry per prompt")
    engine = _BACKEND.get()
    if engine is not None and not do_sample and engine.serves(model):
        return engine.generate(prompts, max_new_tokens=max_new_tokens, prefills=prefills, system=system)
    encoded = [
        encode_prompt(tokenizer, p, system, prefill=(prefills[i] if prefills else ""))
        for i, p in enumerate(prompts)
    ]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # length bucketing
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="generate", leave=False)
    for idx in iterator:
        input_ids, attention = left_pad([encoded[i] for i in idx], pad_id)
        width = input_ids.shape[1]
        gen = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_id,
            eos_token_id=stop_ids(tokenizer) or None,
        )
        for r, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[r, width:], skip_special_tokens=True).strip()
    return out
