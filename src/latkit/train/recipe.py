"""The recipe: one YAML file that fully specifies a training run (schema-validated).

Unknown keys and wrong types are errors that name the key. ``--set a.b=c``
overrides are applied before validation; the resolved recipe (every field
explicit) is written to ``OUTPUT/recipe.yaml``.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from latkit.adversary.config import AdversaryConfig
from latkit.config import StrictModel, format_validation_error
from latkit.models.lora import LoraSettings
from latkit.objectives.adversary import OBJECTIVES, AdversaryObjective, TargetedObjective
from latkit.objectives.defender import DefenderLosses
from latkit.train.catalog import RecipeError, find_recipe
from latkit.train.r2d2 import R2D2Settings
from latkit.train.recovery import RecoverySettings
from latkit.train.unlearn import UnlearnSection


class ModelSection(StrictModel):
    name: str = "smollm2-135m"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str | None = None
    system_prompt: str | None = None
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    quantization: Literal["4bit", "8bit"] | None = None
    #: attention kernel: ``auto`` = eager under bf16 autocast on CPU (SDPA's CPU flash-attention backward is
    #: slow in bf16: 1.21x per LAT step measured on AMX, benchmarks/RESULTS.md), the model's default otherwise
    attn_implementation: Literal["auto", "sdpa", "eager"] = "auto"


class FinetuneSection(StrictModel):
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)


class HarmfulData(StrictModel):
    """Harmful triples. ``source``: a path (CSV/JSONL/JSON), a HF dataset name, or ``advbench``
    (found in the data directory: ``$LATKIT_DATA_DIR`` or ``shared/data`` beside the working dir)."""

    source: str = "advbench"
    columns: dict[str, str] = Field(default_factory=lambda: {"prompt": "goal", "harmful": "target"})
    harmful_from: Literal["column", "model"] = "column"
    refusal_from: Literal["column", "templates"] = "templates"
    limit: int | None = Field(None, ge=1)
    offset: int = Field(0, ge=0)
    max_new_tokens: int = Field(64, ge=1)


class BenignData(StrictModel):
    """Benign pairs. ``source: builtin`` = the project's benign prompts answered by the base
    model (self-distillation); otherwise a path / dataset with ``prompt`` and ``response``."""

    source: str = "builtin"
    columns: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)


class DataSection(StrictModel):
    harmful: HarmfulData | None = Field(default_factory=HarmfulData)
    benign: BenignData | None = Field(default_factory=BenignData)
    max_length: int = Field(256, ge=8)
    padding_side: Literal["left", "right"] = "right"
    generation_batch_size: int = Field(16, ge=1)


class AdversarySection(AdversaryConfig):
    """The latent adversary (see :class:`~latkit.adversary.AdversaryConfig`) and its objective."""

    objective: AdversaryObjective = Field(default_factory=TargetedObjective)

    @model_validator(mode="after")
    def _usable_epsilon(self):
        """A training adversary needs a radius that is positive and finite at every site (ε = 0 is
        "no adversary": say ``objective.kind: none``; ε = inf is no constraint at all)."""
        eps = self.epsilon if isinstance(self.epsilon, dict) else {s: self.epsilon for s in self.sites}
        for site, e in eps.items():
            if not (math.isfinite(e) and e > 0):
                raise ValueError(f"adversary.epsilon for {site!r} must be a finite number > 0, got {e} "
                                 "(no adversary: set adversary.objective.kind: none)")
        if isinstance(self.epsilon, dict):
            missing = [s for s in self.sites if s not in self.epsilon]
            extra = [s for s in self.epsilon if s not in self.sites]
            if missing or extra:
                raise ValueError(f"adversary.epsilon must give one radius per site in adversary.sites {self.sites}: "
                                 + (f"missing {missing}" if missing else f"not a site: {extra}"))
        return self


class TrainSection(StrictModel):
    steps: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    benign_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    defender_steps: int = Field(1, ge=1, description="defender updates per adversary attack")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip gradients to this norm; null: no clipping")
    seed: int = 0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        """YAML reads a bare ``no`` (``--set train.mixed_precision=no``) as false: that means ``"no"``."""
        return "no" if v is False else v


class OutputSection(StrictModel):
    merge: bool = False


class Recipe(StrictModel):
    """A complete LAT / RT / EAT / RLP / R2D2 / DPO(-LAT) / unlearning run."""

    name: str = "run"
    description: str = ""
    model: ModelSection = Field(default_factory=ModelSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    data: DataSection = Field(default_factory=DataSection)
    adversary: AdversarySection = Field(default_factory=AdversarySection)
    defender: DefenderLosses = Field(default_factory=DefenderLosses)
    r2d2: R2D2Settings | None = Field(None, description="GCG test cases in the loop (the R2D2 baseline)")
    unlearn: UnlearnSection | None = Field(None, description="unlearning on forget/retain text (GA, RMU, generic)")
    recovery: RecoverySettings | None = Field(None, description="refusals after a harmful prefix (Qi et al. 2024)")
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="before")
    @classmethod
    def _unlearn_defaults(cls, data):
        """An unlearning run reads ``unlearn:`` instead of ``data.harmful/benign`` and ``defender``:
        absent, they default to null / zeros; given non-empty, they are an error (not silently ignored)."""
        if not isinstance(data, dict) or not data.get("unlearn"):
            return data
        data = dict(data)
        d = dict(data.get("data") or {})
        for key in ("harmful", "benign"):
            if d.get(key, None) is not None:
                raise ValueError(f"data.{key} is not used by an unlearning run (it reads unlearn.forget / "
                                 f"unlearn.retain): remove it or set it to null")
            d[key] = None
        data["data"] = d
        zeros = {"toward": 0, "away": 0, "sft": 0, "kl": 0}
        dfn = dict(data.get("defender") or {})
        if any(dfn.get(k) for k in zeros) or dfn.get("preference"):
            raise ValueError("an unlearning run weighs its losses with unlearn.forget_weight / unlearn.retain_weight: "
                             "remove the defender section or set its coefficients to 0")
        data["defender"] = {**zeros, **dfn}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.unlearn is not None:
            return self._check_unlearn()
        if self.data.benign is None and (self.defender.sft or self.defender.kl):
            raise ValueError("defender.sft / defender.kl need data.benign")
        if self.data.harmful is None and self.unlearn is None:
            # plain SFT on data.benign (e.g. implanting a backdoor): nothing reads harmful triples
            if self.defender.uses_harmful or self.adversary.objective.kind != "none" or self.r2d2:
                raise ValueError("data.harmful: null (an SFT-only run) needs defender.toward: 0, defender.away: 0, "
                                 "no defender.preference, adversary.objective.kind: none and no r2d2")
            if self.data.benign is None:
                raise ValueError("data.harmful and data.benign are both null: nothing to train on")
        if self.recovery is not None and (self.data.harmful is None or self.r2d2 is not None
                                          or self.defender.preference is not None):
            raise ValueError("recovery rewrites the refusals of harmful triples: it needs data.harmful and "
                             "works with toward/away refusal training (not with r2d2 or defender.preference)")
        if self.adversary.objective.kind == "dpo" and self.defender.preference is None:
            raise ValueError("adversary.objective.kind: dpo takes its β and loss from defender.preference; set it")
        return self

    def _check_unlearn(self):
        adv, u = self.adversary, self.unlearn
        if self.r2d2 is not None or self.recovery is not None:
            raise ValueError("r2d2 / recovery and unlearn cannot be combined")
        kind = adv.objective.kind
        if kind not in ("targeted", "random", "none"):
            raise ValueError(f"an unlearning adversary is targeted (toward the forget text), random or none; "
                             f"got adversary.objective.kind: {kind}")
        if kind != "none" and adv.positions == "prompt":
            raise ValueError("unlearning texts have no prompt: set adversary.positions: all")
        if u.method == "rmu" and kind != "none":
            late = [s for s in adv.sites if s != "embed" and int(s.split(".")[1]) >= u.rmu.layer]
            if late:
                raise ValueError(f"adversary sites {late} are not below unlearn.rmu.layer {u.rmu.layer}: "
                                 "δ there cannot change the RMU activations")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def non_finite(data, path=""):
    """The dotted key of the first NaN / ±inf number in a nested dump, else None."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "recipe", data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        found = non_finite(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def data_fingerprint(recipe: Recipe) -> str:
    """A hash of everything that decides the run's data (the data section, the seed that samples it, the
    model that may generate it, the unlearn section): a data cache built under another fingerprint is stale."""
    keyed = {"data": recipe.data.model_dump(mode="json"), "seed": recipe.train.seed,
             "model": recipe.model.model_dump(mode="json"),
             "unlearn": recipe.unlearn.model_dump(mode="json") if recipe.unlearn else None}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def _parse_value(text: str):
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key.path=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise RecipeError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return data


def recipe_from_dict(data: dict, overrides: list[str] | None = None) -> Recipe:
    data = apply_overrides(dict(data or {}), overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"invalid recipe: {format_validation_error(e, root='recipe', tags=OBJECTIVES)}") from None
    bad = non_finite(recipe.model_dump(mode="python"))
    if bad:  # NaN / inf anywhere (a learning rate, a loss weight, a radius) trains a broken model
        raise RecipeError(f"invalid recipe: {bad[0]}: must be a finite number, got {bad[1]}")
    return recipe


def read_recipe_yaml(path: str | Path, error: type[Exception] = RecipeError) -> dict:
    """The mapping in a recipe file, or a shipped recipe by name (``quickstart``; see ``latkit recipes``);
    bad YAML or a non-mapping raise ``error`` with one line (decoder and classifier recipes alike)."""
    path = find_recipe(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise error(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    return data or {}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file, or a shipped recipe by name (``quickstart``; see ``latkit recipes``)."""
    return recipe_from_dict(read_recipe_yaml(path), overrides)
