"""Build LAT training data: harmful triples (refusal vs. harmful completion) and self-distilled benign pairs."""
from __future__ import annotations

import random
import re
import warnings
from collections.abc import Sequence
from typing import TypeVar

from latkit.data.refusals import opens_with_refusal, refusal_for
from latkit.data.schemas import BenignPair, DataError, HarmfulTriple
from latkit.models.generate import generate

T = TypeVar("T")

_HOW_Q = re.compile(r"^how (?:do|can|could|would|should|might|does|did) (?:i|you|one|someone|we|people|a person) (.+)$", re.I)
_HOW_TO = re.compile(r"^how to (.+)$", re.I)
_BEST_WAY = re.compile(
    r"^what(?:'s| is| are) the (best|easiest|fastest|quickest|simplest|cheapest|most effective) (ways?|methods?) to (.+)$",
    re.I,
)
_MAKE_VERBS = frozenset(
    "write create develop generate provide give produce design draft compose outline suggest offer share "
    "publish build craft list prepare propose devise formulate construct code program".split()
)
_EXPLAIN_VERBS = {"explain": "an explanation of", "describe": "a description of", "summarize": "a summary of",
                  "summarise": "a summary of", "detail": "the details of"}
_TEACH_VERBS = frozenset("teach instruct show tell demonstrate guide educate train illustrate help".split())
_AUDIENCE = frozenset("me us someone somebody people users children kids readers others them".split())
_PLURAL_START = frozenset(
    "instructions steps step-by-step tips ways ideas examples some several suggestions guidelines methods "
    "strategies techniques reasons".split()
)
_ADJECTIVES = frozenset("detailed specific clear simple practical concrete precise".split())


def _here(rest: str) -> str:
    words = rest.split()
    first = words[0].lower()
    plural = first in _PLURAL_START or (
        first in _ADJECTIVES and len(words) > 1 and words[1].lower().endswith("s") and not words[1].lower().endswith("ss")
    )
    return f"Sure, here {'are' if plural else 'is'} {rest}"


def affirmative_target(prompt: str) -> str:
    """A deterministic AdvBench-style affirmative opening for ``prompt``.

    "Write a script that X" -> "Sure, here is a script that X"; "How do I X?" -> "Sure, here is how to X";
    other imperatives -> "Sure, here is how to <request>". Multi-part prompts use their last paragraph
    (HarmBench puts the behavior after the context).
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", prompt.strip()) if p.strip() and p.strip() != "---"]
    if not paragraphs:
        raise DataError("cannot build a target for an empty prompt")
    text = " ".join(paragraphs[-1].split()).rstrip(" .!?;:,")
    text = re.sub(r"^(?:please|kindly)\s+", "", text, flags=re.I)
    text = re.sub(r"^(?:can|could|would|will) you(?: please)?\s+", "", text, flags=re.I)
    if m := _HOW_Q.match(text):
        return f"Sure, here is how to {m.group(1)}"
    if m := _HOW_TO.match(text):
        return f"Sure, here is how to {m.group(1)}"
    if m := _BEST_WAY.match(text):
        return f"Sure, here {'are' if m.group(2).endswith('s') else 'is'} the {m.group(1).lower()} {m.group(2)} to {m.group(3)}"
    words = text.split()
    verb = words[0].lower()
    rest_words = words[1:]
    if verb in _MAKE_VERBS | set(_EXPLAIN_VERBS) | _TEACH_VERBS and rest_words and rest_words[0].lower() in _AUDIENCE:
        rest_words = rest_words[1:]
    if rest_words and rest_words[0].lower() in ("on", "about") and len(rest_words) > 1 and rest_words[1].lower() == "how":
        rest_words = rest_words[1:]
    rest = " ".join(rest_words)
    if rest:
        if rest_words[0].lower() == "how":
            return f"Sure, here is {rest}"
        if verb in _MAKE_VERBS:
            return _here(rest)
        if verb in _EXPLAIN_VERBS:
            return f"Sure, here is {_EXPLAIN_VERBS[verb]} {rest}"
    if verb.isalpha() and not text.endswith("?") and verb not in {"what", "why", "who", "where", "when", "which", "is", "are", "do", "does", "can", "i"}:
        first = words[0] if words[0].isupper() and len(words[0]) > 1 else verb
        return f"Sure, here is how to {' '.join([first] + words[1:])}"
    return "Sure, here is a detailed answer to your request"


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise DataError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise DataError(f"prompts[{i}] is empty or not a string: {p!r}")
    return list(prompts)


def build_triples(
    prompts: Sequence[str],
    *,
    targets: Sequence[str] | None = None,
    harmful_from: str = "target",
    model=None,
    tokenizer=None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
) -> list[HarmfulTriple]:
    """Make (prompt, refusal, harmful) triples; refusals come from the seeded templates.

    ``harmful_from="target"``: the harmful completion is ``targets[i]`` (e.g. AdvBench's ``target``), or
    :func:`affirmative_target` of the prompt when ``targets`` is None.
    ``harmful_from="model"``: it is the model's greedy answer (``targets``, if given, are used as assistant
    prefills and kept at the start of the completion); empty answers and answers that
    :func:`~latkit.data.refusals.opens_with_refusal` flags are dropped with a warning.
    """
    prompts = _check_prompts(prompts)
    if targets is not None:
        targets = list(targets)
        if len(targets) != len(prompts):
            raise DataError(f"targets has {len(targets)} entries but prompts has {len(prompts)}")
        for i, t in enumerate(targets):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"targets[{i}] is empty or not a string: {t!r}")
    rng = random.Random(seed)
    refusals = [refusal_for(p, rng) for p in prompts]
    if harmful_from == "target":
        harmful = targets if targets is not None else [affirmative_target(p) for p in prompts]
        return [HarmfulTriple(p, r, h) for p, r, h in zip(prompts, refusals, harmful)]
    if harmful_from != "model":
        raise DataError(f"harmful_from must be 'target' or 'model', got {harmful_from!r}")
    if model is None or tokenizer is None:
        raise DataError("harmful_from='model' needs both model and tokenizer")
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, prefills=targets)
    out, dropped = [], 0
    for i, (p, r, a) in enumerate(zip(prompts, refusals, answers)):
        if not a.strip() or opens_with_refusal(a):
            dropped += 1
            continue
        out.append(HarmfulTriple(p, r, f"{targets[i].rstrip()} {a}" if targets is not None else a))
    if dropped:
        warnings.warn(
            f"build_triples: dropped {dropped} of {len(prompts)} model generations that were empty or refusals",
            stacklevel=2,
        )
    return out


def self_distill(
    prompts: Sequence[str],
    model,
    tokenizer,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    drop_refusals: bool = False,
) -> list[BenignPair]:
    """Pair each prompt with the base model's own greedy answer (utility data that keeps its behaviour).

    Empty answers (and, with ``drop_refusals``, refusals) are dropped with a warning.
    """
    prompts = _check_prompts(prompts)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    out, dropped = [], 0
    for p, a in zip(prompts, answers):
        if not a.strip() or (drop_refusals and opens_with_refusal(a)):
            dropped += 1
            continue
        out.append(BenignPair(p, a))
    if dropped:
        what = "empty or refusals" if drop_refusals else "empty"
        warnings.warn(f"self_distill: dropped {dropped} of {len(prompts)} generations that were {what}", stacklevel=2)
    return out


def split_train_eval(items: Sequence[T], eval_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split ``items`` into (train, eval) at random (seeded); both keep the original order.

    ``round(len * eval_fraction)`` items go to eval, but at least one on each side when
    ``0 < eval_fraction`` and there are two or more items.
    """
    if isinstance(eval_fraction, bool) or not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    items = list(items)
    n = len(items)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    chosen = set(random.Random(seed).sample(range(n), n_eval))
    return [x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen]
