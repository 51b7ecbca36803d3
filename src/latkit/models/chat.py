"""Chat formatting, only through the tokenizer's chat template.

Rules latkit follows everywhere:
- a prompt is rendered with ``apply_chat_template(..., add_generation_prompt=True)``;
- a completion is the text the template puts after that prompt when the
  assistant turn is filled in (so end-of-turn tokens are the template's own);
- BOS appears exactly once: if the rendered text does not already start with it
  and the tokenizer normally prepends one, it is prepended; never twice.
"""
from __future__ import annotations

from typing import Sequence, Union

from latkit.errors import LatkitError

Messages = list[dict]
Prompt = Union[str, Messages]


class ChatTemplateError(LatkitError, ValueError):
    """The tokenizer has no chat template (and none was given)."""


def ensure_chat_template(tokenizer, template: str | None = None) -> None:
    """Install ``template`` if given; raise :class:`ChatTemplateError` if the tokenizer has none."""
    if template:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"tokenizer {name!r} has no chat template; pass one (recipe key model.chat_template) "
            "or use an instruction-tuned model"
        )


def as_messages(prompt: Prompt, system: str | None = None) -> Messages:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


def render_prompt(tokenizer, prompt: Prompt, system: str | None = None) -> str:
    """The text of the conversation up to (and including) the start of the assistant turn."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(as_messages(prompt, system), tokenize=False, add_generation_prompt=True)


def render_completion(tokenizer, prompt: Prompt, completion: str, system: str | None = None) -> str:
    """The text the template appends after :func:`render_prompt` for an assistant answer ``completion``."""
    head = render_prompt(tokenizer, prompt, system)
    msgs = as_messages(prompt, system) + [{"role": "assistant", "content": completion}]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if full.startswith(head):
        return full[len(head):]
    # Templates that rewrite earlier turns (rare): fall back to completion + EOS.
    return completion + (tokenizer.eos_token or "")


def _bos_prepended_by_default(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def encode_text(tokenizer, text: str, *, is_start: bool) -> list[int]:
    """Tokenize ``text`` without special tokens; at the start of a sequence ensure exactly one BOS."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if is_start and _bos_prepended_by_default(tokenizer):
        bos = tokenizer.bos_token_id
        while len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        if not ids or ids[0] != bos:
            ids = [bos] + ids
    return ids


def encode_prompt(tokenizer, prompt: Prompt, system: str | None = None, prefill: str = "") -> list[int]:
    """Token ids of the rendered prompt (plus an optional assistant prefill), with one BOS."""
    return encode_text(tokenizer, render_prompt(tokenizer, prompt, system) + prefill, is_start=True)


def encode_pair(tokenizer, prompt: Prompt, completions: Sequence[str], system: str | None = None):
    """Prompt ids and, for each completion, its ids (including the template's end-of-turn)."""
    p_ids = encode_prompt(tokenizer, prompt, system)
    c_ids = [
        encode_text(tokenizer, render_completion(tokenizer, prompt, c, system), is_start=False)
        for c in completions
    ]
    return p_ids, c_ids
