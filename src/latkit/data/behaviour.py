"""The one record of a harmful request, shared by the attacks, the evaluation datasets and the trainers.

``prompt`` is what the model is asked. A request with a context (HarmBench's contextual behaviours) is
built with ``Behaviour(request=..., context=...)``: its prompt is the context, ``---`` and the request,
as in HarmBench, while ``request`` keeps the request alone (what the judges compare an answer with).
``target`` is the affirmative answer opening ("Sure, here is how to ...") used by prefilling, GCG and
the embedding/latent attacks; ``completion`` a harmful answer (many-shot and fine-tuning data).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

DEFAULT_TARGET = "Sure, here is"


def contextual_prompt(request: str, context: str = "") -> str:
    """HarmBench's prompt for a request with a context string."""
    return f"{context}\n\n---\n\n{request}" if context else request


@dataclass(frozen=True)
class Behaviour:
    """A harmful request (see the module docstring). ``Behaviour("How do I ...?")`` is a plain request."""

    prompt: str = ""
    target: str = ""
    completion: str = ""
    id: str = ""
    category: str = ""
    request: str = ""
    context: str = ""
    functional_category: str = ""
    source: str = ""

    def __post_init__(self):
        if not self.prompt and not self.request:
            raise ValueError("a Behaviour needs a prompt or a request")
        if not self.prompt:
            object.__setattr__(self, "prompt", contextual_prompt(self.request, self.context))
        if not self.request:
            object.__setattr__(self, "request", self.prompt)

    @property
    def behaviour(self) -> str:
        """The request alone (HarmBench's name for it)."""
        return self.request

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

    def to_attack_input(self) -> dict:
        """The mapping an attack's ``run`` is given (registered attacks read it with
        ``latkit.attacks.base.as_behaviour``; user-written attacks may index it)."""
        out = {"prompt": self.prompt, "target": self.target, "id": self.id, "category": self.category}
        if self.completion:
            out["completion"] = self.completion
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
