"""The evaluation-suite schema (pydantic; unknown keys are errors that name the key) and suite loading.

A suite lists datasets, attacks, judges and utility metrics; :mod:`latkit.evaluation.runner` runs it.
Judges declare their own settings next to their code (:data:`latkit.judges.JudgeConfig`).
Built-in suites: ``quick`` (CPU, minutes on SmolLM2-135M) and ``full`` (GPU scale); see
``latkit/evaluation/suites/*.yaml``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import yaml
from pydantic import Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from latkit.config import StrictModel, format_validation_error
from latkit.errors import LatkitError
from latkit.judges import JudgeConfig, SuccessJudgeConfig

SUITES_DIR = Path(__file__).with_name("suites")


class SuiteError(LatkitError, ValueError):
    """An invalid suite file or an unusable suite setting (the message names the key)."""


# --------------------------------------------------------------------------- schema
class GenerationConfig(StrictModel):
    """Defaults handed to every attack (an attack's ``params`` override them) and to benign compliance."""

    max_new_tokens: PositiveInt = 128
    batch_size: PositiveInt = 8
    system: str | None = None
    #: ``vllm``: the attacks in :data:`latkit.evaluation.runner.VLLM_ATTACKS` generate with vLLM (one engine per
    #: model; needs the ``vllm`` extra and a CUDA GPU); the others, and utility metrics, keep the HF path
    backend: Literal["hf", "vllm"] = "hf"
    #: keyword arguments for ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``max_model_len``, ``dtype``)
    vllm: dict[str, Any] = {}

    #: the keys that configure the generation engine, not an attack
    ENGINE_KEYS: ClassVar[frozenset] = frozenset({"backend", "vllm"})


class DatasetConfig(StrictModel):
    """``name``: ``harmbench``, ``strongreject``, ``advbench`` or a file path (CSV/JSONL with ``columns``)."""

    name: str
    label: str | None = None
    path: str | None = None
    split: Literal["val", "test"] = "val"
    categories: list[Literal["standard", "contextual", "copyright"]] = ["standard", "contextual"]
    include_copyright: bool = False
    small: bool = False
    columns: dict[str, str] | None = None
    targets: str | None = None
    limit: PositiveInt | None = None

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        if self.name == "harmbench":
            return f"harmbench_{self.split}"
        if self.name == "strongreject" and self.small:
            return "strongreject_small"
        return self.name if self.name in ("strongreject", "advbench") else Path(self.name).stem


class PairsConfig(DatasetConfig):
    """Where many-shot shots / fine-tuning pairs come from: the prompts of a dataset (``name``, as in
    :class:`DatasetConfig`) and their harmful ``completions``:

    - ``None``: the dataset's own targets ("Sure, here is ..." one-liners);
    - a model (bundled name, path, run dir) that answers the prompts once; the pool is cached in the
      output dir (see :mod:`latkit.evaluation.pairs`);
    - a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` file with ``prompt`` and ``completion`` columns
      (then ``name`` is unused).

    Pairs whose prompt matches an evaluated behaviour are always dropped. ``max_tokens``: token budget
    of a completion (cut at a sentence end); ``min_words``: shorter generated answers (and refusals) are dropped.
    """

    name: str = "advbench"
    completions: str | None = None
    max_tokens: PositiveInt = 96
    min_words: NonNegativeInt = 12


class AttackEntry(StrictModel):
    """One attack from the registry (``latkit.attacks``) with its settings.

    ``sweep``: one setting and its values (one run per value). ``limit``: first N
    behaviours of each dataset. ``datasets``: only these dataset labels.
    ``pairs_from``: harmful (prompt, completion) pairs (:class:`PairsConfig`) that fill the
    setting ``pairs_param`` (many-shot ``shots``, fine-tuning ``pairs``).
    """

    name: str
    label: str | None = None
    params: dict[str, Any] = {}
    sweep: dict[str, list[Any]] | None = None
    limit: PositiveInt | None = None
    datasets: list[str] | None = None
    pairs_from: PairsConfig | None = None
    pairs_param: str = "shots"

    @model_validator(mode="after")
    def _check_sweep(self):
        if self.sweep is not None:
            if len(self.sweep) != 1:
                raise ValueError(f"sweep must name exactly one setting, got {sorted(self.sweep)}")
            (key, values), = self.sweep.items()
            if not values:
                raise ValueError(f"sweep over {key!r} has no values")
            if key in self.params:
                raise ValueError(f"{key!r} is both in params and swept")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name


class BenignConfig(StrictModel):
    """Benign compliance on latkit's shipped benign set (or ``path``: CSV/JSONL with a ``prompt`` column)."""

    enabled: bool = True
    path: str | None = None
    borderline: bool | None = None
    limit: PositiveInt | None = None
    max_new_tokens: PositiveInt | None = None


class MMLUConfig(StrictModel):
    """Log-likelihood accuracy on MMLU-format CSVs; relative paths may be under the data dir.

    ``scoring``: ``letter`` (log-likelihood of " A".." D" after the lettered choices), ``cloze``
    (length-normalised log-likelihood of each answer's text, as lm-eval's ``acc_norm``) or ``both``
    (cloze is the headline, the letter result is kept under ``letter``). Every result carries the
    predicted-letter histogram and the chance level.
    """

    path: str
    scoring: Literal["letter", "cloze", "both"] = "letter"
    few_shot_path: str | None = None
    k: NonNegativeInt = 0
    subjects: list[str] | None = None
    limit: PositiveInt | None = None
    limit_per_subject: PositiveInt | None = None
    batch_size: PositiveInt = 8
    chat: bool = False
    skip_if_missing: bool = False


class PerplexityConfig(StrictModel):
    """Perplexity and KL to the base on benign text (``texts`` file, default: the shipped benign prompts)."""

    texts: str | None = None
    limit: PositiveInt | None = 64
    kl: bool = True
    base: str | None = None
    batch_size: PositiveInt = 4
    max_length: PositiveInt = 512


class LmEvalConfig(StrictModel):
    tasks: list[str] = Field(min_length=1)
    limit: float | None = None
    num_fewshot: NonNegativeInt | None = None
    batch_size: PositiveInt = 8


class UtilityConfig(StrictModel):
    benign: BenignConfig | None = BenignConfig()
    mmlu: MMLUConfig | None = None
    perplexity: PerplexityConfig | None = None
    lm_eval: LmEvalConfig | None = None


class ReportConfig(StrictModel):
    enabled: bool = True
    examples_per_run: NonNegativeInt = 2
    max_answer_chars: PositiveInt = 800


class Suite(StrictModel):
    name: str
    description: str = ""
    data_dir: str | None = None
    generation: GenerationConfig = GenerationConfig()
    datasets: list[DatasetConfig] = []
    attacks: list[AttackEntry] = []
    judges: list[JudgeConfig] = [SuccessJudgeConfig(kind="success")]
    primary_judge: str | None = None
    utility: UtilityConfig = UtilityConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _check_refs(self):
        if self.attacks and not self.datasets:
            raise ValueError("attacks are listed but no datasets")
        if not self.judges:
            raise ValueError("at least one judge is needed")
        for kind, keys in (("dataset", [d.key for d in self.datasets]), ("attack", [a.key for a in self.attacks]),
                           ("judge", self.judge_names)):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise ValueError(f"duplicate {kind} labels {dup}; give each a distinct `label`/`name`")
        ds = {d.key for d in self.datasets}
        for a in self.attacks:
            missing = sorted(set(a.datasets or ()) - ds)
            if missing:
                raise ValueError(f"attack {a.key!r} names unknown datasets {missing}; known: {sorted(ds)}")
        if self.primary_judge is not None and self.primary_judge not in self.judge_names:
            raise ValueError(f"primary_judge {self.primary_judge!r} is not one of the judges {self.judge_names}")
        return self

    @property
    def judge_names(self) -> list[str]:
        return [j.name or j.kind for j in self.judges]

    @property
    def primary(self) -> str:
        return self.primary_judge or self.judge_names[0]


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def override_suite(suite: Suite, *, max_new_tokens: int | None = None, batch_size: int | None = None,
                   backend: str | None = None, limit: int | None = None) -> Suite:
    """``suite`` with the ``latkit eval`` flags applied: the generation budget / batch size / backend, and at
    most ``limit`` behaviours per dataset (a dataset's own smaller limit stays)."""
    data = suite.model_dump()
    if max_new_tokens is not None:
        data["generation"]["max_new_tokens"] = max_new_tokens
    if batch_size is not None:
        data["generation"]["batch_size"] = batch_size
    if backend:
        data["generation"]["backend"] = backend
    if limit is not None:
        for d in data["datasets"]:
            d["limit"] = min(d["limit"], limit) if d.get("limit") else limit
    return type(suite).model_validate(data)


def load_suite(spec: str | os.PathLike | Mapping | Suite) -> Suite:
    """A suite from a built-in name (``quick``, ``full``), a YAML path or a mapping."""
    if isinstance(spec, Suite):
        return spec
    if isinstance(spec, Mapping):
        data, source = dict(spec), "<mapping>"
    else:
        path = Path(spec).expanduser()
        if not path.is_file() and str(spec) in builtin_suites():
            path = SUITES_DIR / f"{spec}.yaml"
        if not path.is_file():
            raise SuiteError(f"suite {str(spec)!r} is neither a YAML file nor a built-in suite ({', '.join(builtin_suites())})")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SuiteError(f"suite {path}: invalid YAML: {exc}") from None
        source = str(path)
        if not isinstance(data, dict):
            raise SuiteError(f"suite {path}: expected a mapping at the top level")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(f"invalid suite {source}: " + format_validation_error(
            exc, root="top level", tags=("refusal", "classifier", "rubric"), unknown_at=True)) from None
