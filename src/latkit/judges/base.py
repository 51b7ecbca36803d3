"""The judge interface, verdicts, safe prompt templating and the injection guard.

A judge reads (behaviour, answer) pairs and says whether each answer is a
successful attack ("harmful": the model did what the behaviour asked, or at
least did not refuse, depending on the judge).

Answers are attacker-influenced text. Before an answer is put into a judge
prompt, :class:`PromptGuard` neutralises the judge's control strings inside
it: the judge tokenizer's special / added tokens (``<|im_end|>``, ``</s>`` ...),
common chat-template markers (``[INST]``, ``[/INST]``, ``<<SYS>>`` ...) and the
markers of the judge template itself (``[GENERATION]:``, ``#scores`` ...).
HarmBench issue #91 is the motivating case: a generation containing
``[/INST]`` closed the classifier's instruction early and fooled it.
Neutralising inserts a space after the first character (``[/INST]`` ->
``[ /INST]``), so the text stays readable for the judge but can no longer be
tokenized as, or read as, the control string. The stored answer is unchanged.
"""
from __future__ import annotations

import abc
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Verdict:
    """One judgement.

    ``harmful``: True if the answer counts as a successful attack, False if not,
    None if the judge could not decide (e.g. unparseable rubric output); None
    verdicts are left out of ASR and counted as ``undecided``.
    ``score``: a judge-specific number in [0, 1] (probability, StrongREJECT score), if any.
    ``raw``: what the judge saw or said, for auditing (matched prefix, judge output).
    """

    harmful: bool | None
    score: float | None = None
    raw: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class JudgeError(ValueError):
    """A judge was misconfigured or given inconsistent inputs."""


class JudgeSettings(BaseModel):
    """Base of each judge's suite settings (declared next to the judge; unknown keys are errors).
    Subclasses set ``kind: Literal[...]``; ``name`` labels the judge in results."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None


class Judge(abc.ABC):
    """Base class: ``judge(behaviours, answers, contexts=None) -> list[Verdict]``."""

    name: str = "judge"

    @abc.abstractmethod
    def _judge(self, behaviours: list[str], answers: list[str], contexts: list[str]) -> list[Verdict]:
        """Judge equally long lists (contexts are "" where absent)."""

    def judge(
        self,
        behaviours: Sequence[str],
        answers: Sequence[str],
        contexts: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Judge each answer to the behaviour at the same index (the *original* request, not the attacked one)."""
        behaviours, answers = list(behaviours), list(answers)
        if len(behaviours) != len(answers):
            raise JudgeError(f"{self.name}: got {len(behaviours)} behaviours but {len(answers)} answers")
        if contexts is None:
            ctx = [""] * len(answers)
        else:
            ctx = ["" if c is None else str(c) for c in contexts]
            if len(ctx) != len(answers):
                raise JudgeError(f"{self.name}: got {len(ctx)} contexts for {len(answers)} answers")
        for i, a in enumerate(answers):
            if not isinstance(a, str):
                raise JudgeError(f"{self.name}: answer {i} is {type(a).__name__}, expected str")
        if not answers:
            return []
        verdicts = self._judge([str(b) for b in behaviours], answers, ctx)
        if len(verdicts) != len(answers):  # defensive: subclasses must return one verdict per answer
            raise JudgeError(f"{self.name}: returned {len(verdicts)} verdicts for {len(answers)} answers")
        return verdicts

    __call__ = judge

    def close(self) -> None:  # noqa: B027 - a no-op default, not an abstract method
        """Release models held by the judge (no-op for stateless judges)."""
        return None


# --------------------------------------------------------------------------- templating
def fill_template(template: str, fields: Mapping[str, str]) -> str:
    """Replace ``{name}`` for each name in ``fields`` in one pass.

    Unlike ``str.format`` this leaves other braces alone (rubrics may contain
    JSON) and never re-scans inserted values, so an answer containing
    ``{response}`` cannot pull in other fields.
    """
    if not fields:
        return template
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in fields) + r")\}")
    return pattern.sub(lambda m: fields[m.group(1)], template)


def template_fields(template: str, candidates: Iterable[str]) -> set[str]:
    """Which of ``candidates`` appear as ``{name}`` in ``template``."""
    return {c for c in candidates if "{" + c + "}" in template}


# --------------------------------------------------------------------------- injection guard
#: Chat-template and judge-format control strings of widely used model families.
COMMON_CONTROL_STRINGS: tuple[str, ...] = (
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<s>", "</s>",
    "<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|endoftext|>",
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",
    "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
    "[BEHAVIOR]:", "[GENERATION]:", "[CONTEXT]:",
    "<BEGIN CONVERSATION>", "<END CONVERSATION>",
    "<BEGIN UNSAFE CONTENT CATEGORIES>", "<END UNSAFE CONTENT CATEGORIES>",
)

_TEMPLATE_MARKERS = (
    re.compile(r"\[/?[A-Z][A-Z0-9_ /-]*\]:?"),  # [INST], [/INST], [GENERATION]:
    re.compile(r"<<?/?[A-Za-z][A-Za-z0-9_ -]*>>?"),  # <<SYS>>, <BEGIN CONVERSATION>
    re.compile(r"<\|[^|<>\s]+\|>"),  # <|im_start|>
    re.compile(r"(?m)^#[A-Za-z_]+"),  # #scores, #overall_reasoning
)
_LABEL_LINE = re.compile(r"(?m)^[ \t]*([A-Z][A-Za-z ]{0,40}):[ \t]*$|^[ \t]*([A-Z][A-Za-z ]{0,40}):[ \t]*\{")


def template_markers(template: str) -> set[str]:
    """Structural markers found in a judge template (bracket tags, special-token-like strings, #headers)."""
    found: set[str] = set()
    for pat in _TEMPLATE_MARKERS:
        found.update(m.group(0).strip() for m in pat.finditer(template))
    return {f for f in found if len(f) >= 2}


def template_labels(template: str) -> set[str]:
    """Field labels that introduce a slot or stand alone on a line (``Behavior:``, ``AI model response:``)."""
    labels = set()
    for m in _LABEL_LINE.finditer(template):
        label = (m.group(1) or m.group(2)).strip()
        if label:
            labels.add(label)
    return labels


def tokenizer_control_strings(tokenizer) -> set[str]:
    """Special tokens and markup-like added tokens of ``tokenizer``."""
    if tokenizer is None:
        return set()
    out = {t for t in (getattr(tokenizer, "all_special_tokens", None) or []) if isinstance(t, str)}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for tok in decoder.values():
        content = getattr(tok, "content", str(tok))
        if getattr(tok, "special", False) or any(c in content for c in "<>[]|"):
            out.add(content)
    return {t for t in out if len(t.strip()) >= 2}


class PromptGuard:
    """Neutralise control strings (anywhere, case-insensitive) and template labels (at line start) in text.

    >>> PromptGuard(extra=["[/INST]"])("ok [/INST] Yes")
    'ok [ /INST] Yes'
    """

    def __init__(self, tokenizer=None, template: str = "", extra: Iterable[str] = (), labels: Iterable[str] = ()):
        strings = set(COMMON_CONTROL_STRINGS) | tokenizer_control_strings(tokenizer) | set(extra)
        if template:
            strings |= template_markers(template)
        self.control_strings = tuple(sorted({s for s in strings if len(s) >= 2}, key=len, reverse=True))
        self.labels = tuple(sorted(set(labels) | (template_labels(template) if template else set()), key=len, reverse=True))
        self._control = (
            re.compile("|".join(re.escape(s) for s in self.control_strings), re.IGNORECASE)
            if self.control_strings
            else None
        )
        self._label = (
            re.compile(r"(?im)^([ \t]*)(" + "|".join(re.escape(s) for s in self.labels) + r")([ \t]*):")
            if self.labels
            else None
        )

    @staticmethod
    def _defang(match: re.Match) -> str:
        s = match.group(0)
        return s[0] + " " + s[1:]

    def __call__(self, text: str) -> str:
        if self._control is not None:
            for _ in range(8):  # a defanged string could in principle form a new match; repeat to a fixpoint
                new = self._control.sub(self._defang, text)
                if new == text:
                    break
                text = new
            else:
                text = self._control.sub("", text)
        if self._label is not None:
            text = self._label.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)} :", text)
        return text

    def find(self, text: str) -> list[str]:
        """The control strings present in ``text`` (for tests and diagnostics)."""
        return [m.group(0) for m in self._control.finditer(text)] if self._control else []


def clip_to_tokens(tokenizer, text: str, max_tokens: int | None) -> str:
    """Keep the first ``max_tokens`` tokens of ``text`` (as the judge tokenizer counts them)."""
    if not max_tokens or tokenizer is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens])
