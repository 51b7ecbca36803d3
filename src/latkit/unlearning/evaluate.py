"""How much a model knows: 4-way multiple-choice accuracy on facts, beside chance (25%).

Two ways to score a question (``scoring=``):

- ``"cloze"`` (the default): the context is the item's cloze sentence (for a
  fictional fact, :attr:`~latkit.unlearning.facts.Fact.cloze`, e.g. "The founder
  of the city of Quendrath in Vask was") or, for a question without one,
  ``question + "\\nAnswer:"``; the continuations are ``" " + choice``; the
  prediction is the choice with the highest summed log-likelihood
  (:func:`latkit.evaluation.utility.score_continuations`). This asks the model to
  *produce* the fact, which a small model can do for facts it was trained on;
- ``"letter"``: MMLU style, the log-likelihood of the answer letter after the
  lettered choices (:func:`latkit.evaluation.utility.multiple_choice_accuracy`).
  It also tests the skill of answering a lettered multiple-choice question, which
  models below ~1B parameters lack (SmolLM2-135M scores ~25% on MMLU): it stays at
  chance even on facts the model knows, so it cannot show unlearning there.

Successful unlearning brings the forget questions down to chance while the
retain questions stay where they were.
"""
from __future__ import annotations

from typing import Literal, Sequence

from latkit.evaluation.utility import LETTERS, choice_accuracy, multiple_choice_accuracy, score_continuations
from latkit.unlearning.facts import Fact, ForgetRetainSplit, fact_mcqs

CHANCE = 1.0 / len(LETTERS)
SCORINGS = ("cloze", "letter")
Scoring = Literal["cloze", "letter"]


def cloze_context(item) -> str:
    """What each ``" " + choice`` continues: the item's ``cloze`` sentence, else ``question + "\\nAnswer:"``."""
    context = getattr(item, "cloze", "") or ""
    return context if context.strip() else item.question.strip() + "\nAnswer:"


def cloze_accuracy(model, tokenizer, items: Sequence, *, batch_size: int = 8, max_length: int | None = None) -> dict:
    """Accuracy of the choice with the highest summed log-likelihood after :func:`cloze_context`."""
    if not items:
        raise ValueError("no multiple-choice items to evaluate")
    contexts = [cloze_context(it) for it in items]
    conts = [[" " + str(c).strip() for c in it.choices] for it in items]
    scores = score_continuations(model, tokenizer, contexts, conts, batch_size=batch_size, max_length=max_length)
    return choice_accuracy(scores, items, scoring="cloze")


def mcq_accuracy(model, tokenizer, items: Sequence, *, scoring: Scoring = "cloze", batch_size: int = 8,
                 chat: bool = False, few_shot: Sequence = (), k: int = 0, max_length: int | None = None) -> dict:
    """Accuracy on 4-way ``items`` (MCQ items or :class:`~latkit.unlearning.facts.Fact` objects) by ``scoring``,
    plus ``chance`` and ``above_chance``. ``chat``, ``few_shot`` and ``k`` apply to letter scoring only."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    items = [it.mcq() if isinstance(it, Fact) else it for it in items]
    if scoring == "cloze":
        if chat or k:
            raise ValueError("chat and few-shot prompts apply to letter scoring only (scoring='letter')")
        out = cloze_accuracy(model, tokenizer, items, batch_size=batch_size, max_length=max_length)
    else:
        out = multiple_choice_accuracy(model, tokenizer, items, few_shot=few_shot, k=k, batch_size=batch_size,
                                       chat=chat, max_length=max_length)
        out["scoring"] = "letter"
    out["chance"] = CHANCE
    out["above_chance"] = out["accuracy"] - CHANCE
    return out


def knowledge_report(model, tokenizer, split: ForgetRetainSplit, *, parts: Sequence[str] = ("forget", "retain",
                     "forget_eval"), **kwargs) -> dict:
    """``{part: mcq_accuracy(...)}`` for the questions of each named part of ``split`` (empty parts are skipped).

    ``parts`` are names from :meth:`ForgetRetainSplit.parts` (``forget``, ``retain``,
    ``relearn``, ``forget_eval``); ``kwargs`` (``scoring``, ``batch_size`` …) go to
    :func:`mcq_accuracy`.
    """
    available = split.parts()
    unknown = [p for p in parts if p not in available]
    if unknown:
        raise ValueError(f"unknown split part(s) {unknown!r}; available: {', '.join(available)}")
    return {p: mcq_accuracy(model, tokenizer, fact_mcqs(available[p]), **kwargs) for p in parts if available[p]}
