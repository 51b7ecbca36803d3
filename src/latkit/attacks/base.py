"""What every attack shares: behaviours, configs, outputs, cost metering and generation helpers.

An attack is a class with a ``name``, a config dataclass (its budget, documented
defaults, a ``seed``) and ``run(model, tokenizer, behaviours) -> list[AttackOutput]``.
``model`` is any loaded causal LM: a base model, a PEFT model or a training run's
output. Attacks leave the model as they found it (mode, weights, hooks) and the
global RNG state untouched (they run under ``torch.random.fork_rng``).
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from latkit.errors import LatkitError
from latkit.models.adapter import ModelAdapter, unwrap_model
from latkit.models.chat import Prompt, encode_text, render_prompt

DEFAULT_TARGET = "Sure, here is"
PLACEHOLDER = "\x00LATKIT_SLOT\x00"


class AttackError(LatkitError, ValueError):
    """An attack was misconfigured or given unusable inputs."""


# ---------------------------------------------------------------------- behaviours
@dataclass(frozen=True)
class Behaviour:
    """A harmful request to attack.

    ``target`` is the affirmative answer opening ("Sure, here is how to ...") used by
    prefilling, GCG and the embedding/latent attacks; ``completion`` is a harmful
    answer (used by many-shot and fine-tuning as in-context / training data).
    """

    prompt: str
    target: str = ""
    completion: str = ""
    id: str = ""
    category: str = ""

    @property
    def effective_target(self) -> str:
        """``target``; else the first sentence of ``completion`` (at most 25 words); else "Sure, here is"."""
        if self.target.strip():
            return self.target
        if self.completion.strip():
            first = self.completion.strip().splitlines()[0]
            first = re.split(r"(?<=[.!?])\s", first)[0]
            return " ".join(first.split()[:25])
        return DEFAULT_TARGET


_PROMPT_KEYS = ("prompt", "goal", "behavior", "behaviour", "Behavior", "request", "instruction")
_TARGET_KEYS = ("target",)
_COMPLETION_KEYS = ("completion", "harmful", "response", "rejected")


def _first(get, keys) -> str:
    for k in keys:
        v = get(k)
        if isinstance(v, str) and v.strip():
            return v
    return ""


def as_behaviour(item: Any) -> Behaviour:
    """Coerce a str, a mapping, a :class:`Behaviour` or a record with attributes
    (e.g. ``HarmfulTriple``: ``prompt``/``harmful``) into a :class:`Behaviour`."""
    if isinstance(item, Behaviour):
        return item
    if isinstance(item, str):
        return Behaviour(prompt=item)
    get = item.get if isinstance(item, Mapping) else (lambda k: getattr(item, k, None))
    prompt = _first(get, _PROMPT_KEYS)
    if not prompt:
        raise AttackError(f"behaviour {item!r} has no prompt (looked for keys {', '.join(_PROMPT_KEYS)})")
    return Behaviour(
        prompt=prompt,
        target=_first(get, _TARGET_KEYS),
        completion=_first(get, _COMPLETION_KEYS),
        id=str(get("id") or ""),
        category=str(get("category") or ""),
    )


# ---------------------------------------------------------------------- cost
@dataclass
class Cost:
    """Compute spent to produce an output.

    ``forward_passes`` counts model calls (a batch counts once, each generated token
    is one call); ``forward_sequences`` sums their batch sizes; ``backward_passes``
    counts backward passes. Outputs produced together (one generation batch, one
    universal suffix) carry the same totals with ``shared_by`` = how many they are.
    """

    wall_time_s: float = 0.0
    forward_passes: int = 0
    forward_sequences: int = 0
    backward_passes: int = 0
    shared_by: int = 1

    def share(self) -> dict[str, float]:
        """This output's share of the cost (totals divided by ``shared_by``)."""
        n = max(self.shared_by, 1)
        return {
            "wall_time_s": self.wall_time_s / n,
            "forward_passes": self.forward_passes / n,
            "forward_sequences": self.forward_sequences / n,
            "backward_passes": self.backward_passes / n,
        }


def total_cost(outputs: Sequence["AttackOutput"]) -> dict[str, float]:
    """Sum of the outputs' shares of cost (each shared cost counted once)."""
    tot = {"wall_time_s": 0.0, "forward_passes": 0.0, "forward_sequences": 0.0, "backward_passes": 0.0}
    for o in outputs:
        for k, v in o.cost.share().items():
            tot[k] += v
    return tot


class CostMeter:
    """Counts forward calls (via a pre-hook on the unwrapped model) and wall time.

    Use as a context manager; call :meth:`backward` after each backward pass.
    """

    def __init__(self, model):
        self._models = [unwrap_model(model)]
        self.forward_passes = 0
        self.forward_sequences = 0
        self.backward_passes = 0
        self._t0 = 0.0
        self.wall_time_s = 0.0
        self._handles: list = []

    def _hook(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        self.forward_passes += 1
        self.forward_sequences += int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 1 else 1

    def backward(self, n: int = 1) -> None:
        self.backward_passes += n

    def watch(self, model) -> None:
        """Also count the forward calls of ``model`` (e.g. a copy the attack works on)."""
        base = unwrap_model(model)
        if any(base is m for m in self._models):
            return
        self._models.append(base)
        if self._handles:
            self._handles.append(base.register_forward_pre_hook(self._hook, with_kwargs=True))

    def __enter__(self) -> "CostMeter":
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self._models]
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_time_s += time.perf_counter() - self._t0
        for h in self._handles:
            h.remove()
        self._handles = []

    def cost(self, shared_by: int = 1) -> Cost:
        return Cost(self.wall_time_s, self.forward_passes, self.forward_sequences, self.backward_passes, shared_by)


# ---------------------------------------------------------------------- outputs and configs
@dataclass
class AttackOutput:
    """One attacked behaviour: what was sent, what came back, what it cost.

    ``attacked_prompt`` is the user-side input (a string, or a message list for
    multi-turn attacks); ``prefill`` is text the assistant turn was forced to start
    with; ``answer`` is the model's continuation (without the prefill, see
    :attr:`full_answer`). ``extras`` holds attack-specific results (suffix, loss
    history, epsilon, ...).
    """

    attack: str
    behaviour: Behaviour
    attacked_prompt: Prompt
    answer: str
    prefill: str = ""
    system: str | None = None
    cost: Cost = field(default_factory=Cost)
    extras: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.behaviour.prompt

    @property
    def full_answer(self) -> str:
        """Prefill + answer: the whole assistant turn (a space between them unless the
        prefill ends in whitespace or the answer starts with punctuation)."""
        if not self.prefill or not self.answer:
            return self.prefill + self.answer
        glue = "" if self.prefill[-1].isspace() or self.answer[0] in ".,;:!?)]}'\"" else " "
        return self.prefill + glue + self.answer

    def to_dict(self) -> dict:
        return {
            "attack": self.attack,
            "behaviour": dataclasses.asdict(self.behaviour),
            "prompt": self.prompt,
            "attacked_prompt": self.attacked_prompt,
            "system": self.system,
            "prefill": self.prefill,
            "answer": self.answer,
            "cost": dataclasses.asdict(self.cost),
            "extras": self.extras,
        }


@dataclass
class AttackConfig:
    """Settings every attack has: ``seed``; generation length, batch and system prompt."""

    seed: int = 0
    max_new_tokens: int = 128
    batch_size: int = 8
    system: str | None = None


def _devices(model) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextmanager
def eval_mode(model):
    """Put ``model`` in eval mode, restoring its previous mode afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class Attack:
    """Base class: subclasses set ``name``, ``config_class`` and implement ``_run``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = AttackConfig

    def __init__(self, config: Any = None, **overrides):
        if config is None:
            config = self.config_class()
        elif isinstance(config, Mapping):
            config = self._build(dict(config))
        elif not isinstance(config, self.config_class):
            raise AttackError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if overrides:
            config = self._build({**dataclasses.asdict(config), **overrides})
        self.config = config

    @classmethod
    def _build(cls, values: dict):
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AttackError(f"unknown {cls.name!r} settings {unknown}; known: {sorted(known)}")
        return cls.config_class(**values)

    @property
    def seed(self) -> int:
        return self.config.seed

    def run(self, model, tokenizer, behaviours: Sequence[Any]) -> list[AttackOutput]:
        """Attack each behaviour; returns one output per behaviour (templates: per behaviour × style)."""
        items = [as_behaviour(b) for b in behaviours]
        if not items:
            return []
        with torch.random.fork_rng(devices=_devices(model)), eval_mode(model):
            torch.manual_seed(self.config.seed)
            return self._run(model, tokenizer, items)

    def _run(self, model, tokenizer, behaviours: list[Behaviour]) -> list[AttackOutput]:
        raise NotImplementedError


# ---------------------------------------------------------------------- generation helpers
def stop_token_ids(tokenizer) -> list[int]:
    """EOS and the ChatML end-of-turn (when the tokenizer has one)."""
    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate_chunks(model, tokenizer, prompts: Sequence[Prompt], config: AttackConfig,
                    prefills: Sequence[str] | None = None) -> list[tuple[str, Cost]]:
    """Greedy answers via :func:`latkit.models.generate.generate` in chunks of ``config.batch_size``;
    each answer comes with the cost of its chunk (``shared_by`` = chunk size)."""
    from latkit.models.generate import generate

    out: list[tuple[str, Cost]] = []
    bs = max(1, config.batch_size)
    for s in range(0, len(prompts), bs):
        chunk = list(prompts[s : s + bs])
        pre = list(prefills[s : s + bs]) if prefills is not None else None
        with CostMeter(model) as meter:
            answers = generate(model, tokenizer, chunk, max_new_tokens=config.max_new_tokens,
                               batch_size=bs, prefills=pre, system=config.system)
        cost = meter.cost(shared_by=len(chunk))
        out.extend((a, cost) for a in answers)
    return out


@torch.no_grad()
def generate_from_ids(model, tokenizer, ids: Sequence[int], max_new_tokens: int) -> str:
    """Greedy answer to exact prompt token ids (no re-tokenization)."""
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                         do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=pad_token_id(tokenizer), eos_token_id=stop_token_ids(tokenizer) or None)
    return tokenizer.decode(gen[0, x.shape[1]:], skip_special_tokens=True).strip()


@torch.no_grad()
def generate_from_embeds(model, tokenizer, embeds: torch.Tensor, max_new_tokens: int) -> str:
    """Greedy answer to a prompt given as input embeddings ``(1, T, d)``."""
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    gen = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                         do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=pad_token_id(tokenizer), eos_token_id=stop_token_ids(tokenizer) or None)
    return tokenizer.decode(gen[0], skip_special_tokens=True).strip()


# ---------------------------------------------------------------------- token segments
@dataclass
class Segments:
    """A chat prompt cut around an optimised span: ``before + opt + after`` then ``target``."""

    before: list[int]
    opt: list[int]
    after: list[int]
    target: list[int]

    @property
    def prompt_ids(self) -> list[int]:
        return self.before + self.opt + self.after


def split_template(tokenizer, content: str, system: str | None = None) -> tuple[str, str]:
    """Render a one-turn prompt whose user content contains :data:`PLACEHOLDER`; return text before/after it."""
    text = render_prompt(tokenizer, content, system)
    if text.count(PLACEHOLDER) != 1:
        raise AttackError("the chat template altered the user message; cannot locate the optimised span")
    before, after = text.split(PLACEHOLDER)
    return before, after


def effective_embedding_matrix(adapter: ModelAdapter) -> torch.Tensor:
    """``E`` with ``E[i]`` = the embedding module's output for token ``i`` (includes any scaling
    done inside the module, e.g. Gemma 3), detached; ``onehot @ E`` equals ``embedding(ids)``."""
    emb = adapter.embedding
    if type(emb) is torch.nn.Embedding:
        return emb.weight.detach()
    n = emb.weight.shape[0]
    with torch.no_grad():
        return emb(torch.arange(n, device=adapter.device)).detach()


def encode_segment(tokenizer, text: str, *, is_start: bool = False) -> list[int]:
    return encode_text(tokenizer, text, is_start=is_start) if text else []
