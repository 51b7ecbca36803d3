"""Judges: decide whether an answer is a successful attack (or, for benign requests, a helpful answer).

* :class:`SuccessJudge` (default, ``kind: success``): a substantive, on-topic attempt at the request
  — refusals in any wording, empty/very short/degenerate/off-topic text and bare affirmations fail;
  calibrated on latkit's labelled answers (agreement in the README, reproduced by ``latkit judge``).
* :class:`RefusalJudge` (``kind: refusal``): the GCG/HarmBench refusal-prefix list, kept as a
  baseline; it measures *non-refusal*, not success (read its limits in :mod:`latkit.judges.refusal`).
* :class:`ClassifierJudge`: a Hugging Face sequence classifier or causal judge
  model (HarmBench Llama-2 classifier format, LlamaGuard style, custom prompt).
* :class:`RubricJudge`: an LLM rubric (StrongREJECT style) on any local chat model.

Each judge declares its suite settings next to its code; :data:`JudgeConfig` is their
discriminated union (by ``kind``). Answers are neutralised by :class:`PromptGuard` before they
enter a judge prompt. When several judges run, :func:`pairwise_agreement` reports agreement and
Cohen's kappa.
"""
from __future__ import annotations

from typing import Annotated, Any, Mapping, Union

from pydantic import Field

from latkit.judges.agreement import agreement, cohen_kappa, pairwise_agreement
from latkit.judges.base import Judge, JudgeError, JudgeSettings, PromptGuard, Verdict
from latkit.judges.classifier import ClassifierJudge, ClassifierJudgeConfig
from latkit.judges.refusal import RefusalJudge, RefusalJudgeConfig
from latkit.judges.rubric import RubricJudge, RubricJudgeConfig, RubricScores, parse_rubric
from latkit.judges.success import SuccessJudge, SuccessJudgeConfig

JUDGE_KINDS = ("success", "refusal", "classifier", "rubric")

JudgeConfig = Annotated[
    Union[SuccessJudgeConfig, RefusalJudgeConfig, ClassifierJudgeConfig, RubricJudgeConfig],
    Field(discriminator="kind"),
]


def build_judge(spec: Mapping[str, Any] | JudgeSettings, *, model_loader=None,
                models: Mapping[str, tuple] | None = None) -> Judge:
    """Build a judge from its settings (a :data:`JudgeConfig` or a mapping with ``kind`` plus options).

    ``classifier``: ``model`` (path) and ClassifierJudge options (``template``,
    ``model_kind``, ``threshold``, ``batch_size``, ...). ``rubric``: ``model``
    (anything :func:`latkit.models.loading.load_model_and_tokenizer` accepts, or a
    key of ``models`` for an already loaded ``(model, tokenizer)``) and RubricJudge
    options (``rubric``, ``threshold``, ``max_new_tokens``, ...).
    """
    opts = spec.model_dump(exclude_none=True) if isinstance(spec, JudgeSettings) else dict(spec)
    kind = opts.pop("kind", None)
    name = opts.pop("name", None) or kind
    if kind == "success":
        return SuccessJudge(name=name, **opts)
    if kind == "refusal":
        return RefusalJudge(name=name, **opts)
    if kind not in JUDGE_KINDS:
        raise JudgeError(f"unknown judge kind {kind!r}; known: {', '.join(JUDGE_KINDS)}")
    model_name = opts.pop("model", None)
    if not model_name:
        raise JudgeError(f"judge {name!r} ({kind}) needs `model`: a path (or name) of the judge model")
    if kind == "classifier":
        model_kind = opts.pop("model_kind", "auto")
        device = opts.pop("device", None)
        dtype = opts.pop("dtype", "float32")
        return ClassifierJudge.from_pretrained(str(model_name), kind=model_kind, device=device, dtype=dtype,
                                               name=name, **opts)
    if models and model_name in models:
        model, tok = models[model_name]
    else:
        if model_loader is None:
            from latkit.models.loading import load_model_and_tokenizer as model_loader
        model, tok = model_loader(str(model_name))
    return RubricJudge(model, tok, name=name, **opts)


__all__ = [
    "JUDGE_KINDS", "ClassifierJudge", "ClassifierJudgeConfig", "Judge", "JudgeConfig", "JudgeError", "JudgeSettings",
    "PromptGuard", "RefusalJudge", "RefusalJudgeConfig", "RubricJudge", "RubricJudgeConfig", "RubricScores",
    "SuccessJudge", "SuccessJudgeConfig", "Verdict", "agreement", "build_judge", "cohen_kappa", "pairwise_agreement",
    "parse_rubric",
]
