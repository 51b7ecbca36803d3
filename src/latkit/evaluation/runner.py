"""The suite runner: every attack on every dataset for every model, every answer judged by every judge.

:func:`run_suite` writes ``results.json``, ``generations.jsonl`` (every prompt, attacked prompt,
answer and verdict) and ``report.html``. Models are anything
:func:`latkit.models.loading.load_model_and_tokenizer` accepts, including a training run directory
(``RUN/model/`` + ``RUN/metrics.jsonl``; the metrics feed the report's training curves), or
:class:`ModelSpec` objects with an already loaded model.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from latkit.evaluation.plan import _Run, expand_attacks, resolve_attack
from latkit.evaluation.records import SPLIT_KEYS, _judge_block, _jsonable, _normalise_output
from latkit.evaluation.schema import (
    DatasetConfig,
    MMLUConfig,
    PerplexityConfig,
    Suite,
    SuiteError,
    load_suite,
)

log = logging.getLogger(__name__)

RESULTS_FILE, GENERATIONS_FILE, REPORT_FILE = "results.json", "generations.jsonl", "report.html"

#: attacks whose answers ``generation.backend: vllm`` generates with vLLM: text prompts to the evaluated model
#: as loaded. The others generate with the HF model: they hook it (latent, refusal_direction), feed it
#: embeddings (embedding) or exact optimised ids one at a time (gcg), or fine-tune a copy (finetune).
VLLM_ATTACKS = frozenset({"direct", "prefill", "templates", "many_shot"})


# --------------------------------------------------------------------------- models
@dataclass
class ModelSpec:
    """A model to evaluate: ``source`` (name / path / run dir) or an already loaded ``model`` + ``tokenizer``."""

    label: str
    source: str = ""
    model: Any = None
    tokenizer: Any = None
    metrics: str | None = None  # a metrics.jsonl for the report's training curves

    def __post_init__(self):
        if self.metrics is None and self.source:
            path = Path(self.source).expanduser()
            for cand in (path / "metrics.jsonl", path.parent / "metrics.jsonl" if path.name == "model" else None):
                if cand is not None and cand.is_file():
                    self.metrics = str(cand)
                    break


def model_specs(models: Sequence[str | ModelSpec]) -> list[ModelSpec]:
    """Normalise the model list; labels are the names / directory names, made unique."""
    out: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for m in models:
        spec = m if isinstance(m, ModelSpec) else ModelSpec(label=_model_label(str(m)), source=str(m))
        base = spec.label
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            spec = dataclasses.replace(spec, label=f"{base}#{seen[base]}")
        out.append(spec)
    if not out:
        raise SuiteError("no models to evaluate")
    return out


def _model_label(source: str) -> str:
    p = Path(source).expanduser()
    if p.exists():
        p = p.resolve()
        if p.name == "model" and (p.parent / "metrics.jsonl").exists():
            return p.parent.name
        return p.stem if p.is_file() else p.name
    return source


def _resolve_path(value: str | None, data_dir: Path | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    if p.exists() or p.is_absolute() or data_dir is None:
        return p
    return data_dir / p


class SuiteRunner:
    """Runs a :class:`Suite`; use :func:`run_suite`."""

    def __init__(
        self,
        suite: Suite,
        models: Sequence[str | ModelSpec],
        output_dir: str | os.PathLike,
        *,
        attacks: Mapping[str, Any] | None = None,
        model_loader: Callable | None = None,
        data_dir: str | os.PathLike | None = None,
        base_model: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        progress: bool = True,
        fail_fast: bool = False,
        judges: Sequence | None = None,
    ):
        from latkit.evaluation.datasets import resolve_data_dir

        self.suite = suite
        self.models = model_specs(models)
        self.out = Path(output_dir).expanduser()
        self.overrides = dict(attacks or {})
        self.loader = model_loader
        self.data_dir = resolve_data_dir(data_dir if data_dir is not None else suite.data_dir)
        self.base_model = base_model
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.fail_fast = fail_fast
        self._given_judges = list(judges) if judges is not None else None
        self.errors: list[dict] = []

    # ----------------------------------------------------------------- helpers
    def _load(self, source: str):
        if self.loader is not None:
            return self.loader(source)
        from latkit.models.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(source, dtype=self.dtype)

    def _to_device(self, model):
        dev = self.device
        if dev in (None, "auto"):
            import torch

            dev = "cuda" if torch.cuda.is_available() else None
        if dev and not getattr(model, "hf_device_map", None):
            model.to(dev)
        return model

    def _dataset(self, cfg: DatasetConfig):
        from latkit.evaluation.datasets import load_behaviours

        path = _resolve_path(cfg.path, self.data_dir)
        name = cfg.name
        if name not in ("harmbench", "strongreject", "advbench"):
            name = str(_resolve_path(name, self.data_dir))
        items = load_behaviours(
            name, split=cfg.split, categories=cfg.categories, include_copyright=cfg.include_copyright,
            small=cfg.small, columns=cfg.columns, targets=str(_resolve_path(cfg.targets, self.data_dir)) if cfg.targets else None,
            limit=cfg.limit, path=str(path) if path else None, data_dir=self.data_dir,
        )
        seen: dict[str, int] = {}
        unique = []
        for b in items:  # behaviour ids must be unique to map outputs back
            seen[b.id] = seen.get(b.id, 0) + 1
            unique.append(b if seen[b.id] == 1 else dataclasses.replace(b, id=f"{b.id}#{seen[b.id]}"))
        return unique

    def _build_judges(self) -> list:
        if self._given_judges is not None:
            return self._given_judges
        from latkit.judges import build_judge

        out = []
        for cfg in self.suite.judges:
            spec = cfg.model_dump(exclude_none=True)
            spec["name"] = cfg.name or cfg.kind
            if "model" in spec:
                p = _resolve_path(spec["model"], self.data_dir)
                if p is not None and p.exists():
                    spec["model"] = str(p)
            if cfg.kind == "rubric":
                p = _resolve_path(spec.get("rubric"), self.data_dir)
                if p is not None and p.exists():
                    spec["rubric"] = str(p)
            judge = build_judge(spec, model_loader=self.loader)
            if getattr(judge, "model", None) is not None:
                self._to_device(judge.model)
            out.append(judge)
        return out

    def _error(self, where: dict, exc: BaseException):
        if self.fail_fast:
            raise exc
        msg = f"{type(exc).__name__}: {exc}"
        log.error("%s failed: %s", where, msg)
        self.errors.append({**where, "error": msg})

    # ----------------------------------------------------------------- main
    def run(self, *, write_report: bool = True) -> dict:
        from latkit.evaluation.safety import validate_before_generation  # attack names, model sources: fail early

        validate_before_generation(self.suite, self.models, overrides=self.overrides, base_model=self.base_model,
                                   custom_loader=self.loader is not None)
        self.out.mkdir(parents=True, exist_ok=True)
        suite = self.suite
        datasets = {cfg.key: (cfg, self._dataset(cfg)) for cfg in suite.datasets}
        self._evaluated = datasets  # pairs pools exclude every evaluated behaviour
        self._pools, self.pools = {}, {}  # harmful-pair pools (and what results.json says about them)
        runs = expand_attacks(suite, self.overrides)
        judges = self._build_judges()
        names = [j.name for j in judges]
        primary = suite.primary if self._given_judges is None else (suite.primary_judge or names[0])
        if primary not in names:
            raise SuiteError(f"primary judge {primary!r} is not among the judges {names}")
        plan = [(r, key) for r in runs for key in datasets if not r.entry.datasets or key in r.entry.datasets]
        results: dict[str, Any] = {
            "suite": {"name": suite.name, "description": suite.description, "config": suite.model_dump(mode="json")},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "latkit_version": _version(),
            "primary_judge": primary,
            "judges": [_judge_info(j) for j in judges],
            "datasets": [{"label": k, "name": c.name, "split": c.split if c.name == "harmbench" else None,
                          "n": len(items)} for k, (c, items) in datasets.items()],
            "models": [], "results": [], "utility": {}, "agreement": {}, "errors": self.errors,
            "pairs_pools": self.pools,
        }
        from latkit.provenance import for_evaluation  # versions, device, commit, seeds

        results["provenance"] = for_evaluation(self)
        gen_path = self.out / GENERATIONS_FILE
        bar = None
        if self.progress and plan:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plan) * len(self.models), desc="eval", unit="run")
        try:
            with gen_path.open("w", encoding="utf-8") as gen_file:
                for spec in self.models:
                    self._run_model(spec, plan, datasets, judges, primary, results, gen_file, bar)
                    self._write(results)
        finally:
            if bar is not None:
                bar.close()
            for j in judges:
                if self._given_judges is None:
                    j.close()
        self._write(results)
        if write_report and suite.report.enabled:
            from latkit.evaluation.report import write_report as _write_report

            _write_report(self.out)
        return results

    def _run_model(self, spec: ModelSpec, plan, datasets, judges, primary, results, gen_file, bar):
        t0 = time.perf_counter()
        if spec.model is not None:
            model, tok = spec.model, spec.tokenizer
        else:
            model, tok = self._load(spec.source)
        model = self._to_device(model)
        model.eval()
        self._engine = self._generation_engine(spec, model, tok)
        info = {"label": spec.label, "source": spec.source or None, "metrics": spec.metrics,
                "peft": callable(getattr(model, "disable_adapter", None)),
                "class": type(model).__name__}
        results["models"].append(info)
        all_verdicts: dict[str, list] = {j.name: [] for j in judges}
        for run, ds_key in plan:
            cfg, items = datasets[ds_key]
            if bar is not None:
                bar.set_postfix_str(f"{spec.label} | {run.key} × {ds_key}", refresh=True)
            try:
                rows = self._attack(model, tok, spec, run, ds_key, items, judges, primary, gen_file)
            except Exception as exc:  # one failing attack does not lose the others' results
                self._error({"model": spec.label, "attack": run.key, "dataset": ds_key}, exc)
                rows = []
            for row, verdicts in rows:
                results["results"].append(row)
                for name, vs in verdicts.items():
                    all_verdicts[name].extend(vs)
            if bar is not None:
                bar.update(1)
        if len(judges) > 1 and any(all_verdicts.values()):
            from latkit.judges import pairwise_agreement

            results["agreement"][spec.label] = pairwise_agreement(all_verdicts)
        results["utility"][spec.label] = self._utility(model, tok, spec, gen_file)
        info["seconds"] = round(time.perf_counter() - t0, 2)
        self._engine = None  # the vLLM engine (its GPU memory) goes with its model
        if spec.model is None:  # we loaded it: free it before the next model
            del model
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # pragma: no cover - best effort
                pass

    def _generation_engine(self, spec: ModelSpec, model, tok):
        """The vLLM engine for this model under ``generation.backend: vllm`` (else None)."""
        gen = self.suite.generation
        if gen.backend != "vllm":
            return None
        from latkit.models.vllm_engine import VLLMError, VLLMGenerator

        try:
            return VLLMGenerator(spec.source, tok, model, seed=0, **gen.vllm)
        except VLLMError as e:
            raise SuiteError(str(e)) from None

    def _pairs_for(self, run: _Run, tok=None) -> dict:
        cfg = run.entry.pairs_from
        if cfg is None:
            return {}
        if cfg.completions is not None:  # real harmful completions, disjoint from the evaluated behaviours
            return {run.entry.pairs_param: [list(p) for p in self._harmful_pool(cfg, tok)["pairs"]]}
        items = self._dataset(cfg)
        pairs = [[b.prompt, b.target] for b in items if b.target]
        if not pairs:
            raise SuiteError(f"pairs_from of attack {run.key!r} gave no (prompt, target) pairs: its dataset has no targets")
        return {run.entry.pairs_param: pairs}

    def _harmful_pool(self, cfg, tok) -> dict:
        from latkit.evaluation.pairs import harmful_pairs, is_pairs_file

        memo = self._pools
        key = cfg.model_dump_json()
        if key not in memo or is_pairs_file(cfg.completions):
            evaluated = [t for _, items in getattr(self, "_evaluated", {}).values() for b in items
                         for t in (b.prompt, b.behaviour)]
            source = cfg.completions
            if is_pairs_file(source):
                source = str(_resolve_path(source, self.data_dir))
            prompts = [] if is_pairs_file(source) else [b.prompt for b in self._dataset(cfg)]
            memo[key] = harmful_pairs(
                prompts, source, evaluated=evaluated, load_model=lambda s: self._to_device_pair(self._load(s)),
                cache_dir=self.out / "pairs", tokenizer_for_truncation=tok, max_tokens=cfg.max_tokens,
                min_words=cfg.min_words, batch_size=self.suite.generation.batch_size)
            self.pools[f"{cfg.name}:{cfg.completions}"] = {k: v for k, v in memo[key].items() if k != "pairs"}
        return memo[key]

    def _to_device_pair(self, loaded):
        model, tok = loaded
        model = self._to_device(model)
        model.eval()
        return model, tok

    def _attack(self, model, tok, spec, run: _Run, ds_key, items, judges, primary, gen_file):
        behaviours = items[: run.entry.limit] if run.entry.limit else items
        if not behaviours:
            return []
        params = {**run.params, **self._pairs_for(run, tok), **_run_dir_param(run, spec, self.overrides)}
        attack = resolve_attack(run.entry.name, params, self.overrides)
        inputs = []
        for b in behaviours:
            d = b.to_attack_input()
            if b.target:
                d["completion"] = b.target  # many-shot / fine-tuning use other behaviours' (prompt, target) pairs
            inputs.append(d)
        t0 = time.perf_counter()
        from latkit.evaluation.sharding import run_sharded  # split across processes under accelerate launch

        engine = getattr(self, "_engine", None) if run.entry.name in VLLM_ATTACKS else None
        from latkit.models.generate import generation_backend

        def attack_run(xs):
            with generation_backend(engine):
                return attack.run(model, tok, xs)

        outputs = run_sharded(run.entry.name, attack_run, inputs)
        wall = time.perf_counter() - t0
        by_id = {b.id: b for b in behaviours}
        by_prompt = {b.prompt: b for b in behaviours}
        recs = [_normalise_output(o, by_id, by_prompt) for o in outputs]
        if not recs:
            raise SuiteError(f"attack {run.key!r} returned no outputs for {len(behaviours)} behaviours")
        verdicts = {}
        for j in judges:
            verdicts[j.name] = j.judge(
                [r["behaviour"].behaviour for r in recs], [r["judged_answer"] for r in recs],
                [r["behaviour"].context for r in recs],
            )
        # group by split keys (latent ε) when the attack reports them
        groups: dict[Any, list[int]] = defaultdict(list)
        split_key = next((k for k in SPLIT_KEYS if recs and all(k in r["extras"] for r in recs)), None)
        for i, r in enumerate(recs):
            groups[r["extras"][split_key] if split_key else None].append(i)
        rows = []
        for gval, idx in groups.items():
            sweep_param, sweep_value = (split_key, gval) if split_key else (run.sweep_param, run.sweep_value)
            attack_label = run.key if not split_key else f"{run.entry.key}[{split_key}={gval}]"
            gv = {name: [vs[i] for i in idx] for name, vs in verdicts.items()}
            blocks = {name: _judge_block(vs) for name, vs in gv.items()}
            cost = defaultdict(float)
            for i in idx:
                for k, v in recs[i]["cost"].items():
                    cost[k] += v
            broken = defaultdict(bool)
            for pos, i in enumerate(idx):
                broken[recs[i]["behaviour"].id] |= bool(gv[primary][pos].harmful)
            head = blocks[primary]
            row = {
                "model": spec.label, "attack": attack_label, "attack_name": run.entry.name, "dataset": ds_key,
                "params": _jsonable(run.params), "sweep_param": sweep_param, "sweep_value": _jsonable(sweep_value),
                "judge": primary, "asr": head["asr"], "ci95": head["ci95"], "k": head["k"], "n": head["n"],
                "undecided": head["undecided"], "n_outputs": len(idx), "n_behaviours": len(broken),
                "behaviours_broken": (sum(broken.values()) / len(broken)) if broken else None,
                "judges": blocks,
                "cost": {"total": dict(cost), "per_output": {k: v / len(idx) for k, v in cost.items()},
                         "wall_time_s": wall * len(idx) / len(recs)},
            }
            if len(judges) > 1:
                from latkit.judges import pairwise_agreement

                row["agreement"] = pairwise_agreement({n: [v.harmful for v in vs] for n, vs in gv.items()})
            rows.append((row, {n: [v.harmful for v in vs] for n, vs in gv.items()}))
            for i in idx:
                r = recs[i]
                b = r["behaviour"]
                gen_file.write(json.dumps(_jsonable({
                    "kind": "attack", "model": spec.label, "attack": attack_label, "attack_name": run.entry.name,
                    "dataset": ds_key, "behaviour_id": b.id, "behaviour": b.behaviour, "context": b.context,
                    "prompt": b.prompt, "target": b.target, "attacked_prompt": r["attacked_prompt"],
                    "system": r["system"], "prefill": r["prefill"], "answer": r["answer"],
                    "judged_answer": r["judged_answer"], "cost": r["cost"], "extras": r["extras"],
                    "verdicts": {n: vs[i].to_dict() for n, vs in verdicts.items()},
                }), ensure_ascii=False) + "\n")
        gen_file.flush()
        return rows

    # ----------------------------------------------------------------- utility
    def _utility(self, model, tok, spec: ModelSpec, gen_file) -> dict:
        from latkit.evaluation import utility as U

        cfg = self.suite.utility
        out: dict[str, Any] = {}
        gen = self.suite.generation
        if cfg.benign is not None and cfg.benign.enabled:
            try:
                prompts = None
                if cfg.benign.path:
                    from latkit.data.loaders import load_records

                    path = _resolve_path(cfg.benign.path, self.data_dir)
                    prompts = [dict(r) for r in load_records(path, columns={"prompt": "prompt"})]
                summary, records = U.benign_compliance(
                    model, tok, prompts, borderline=cfg.benign.borderline, limit=cfg.benign.limit,
                    max_new_tokens=cfg.benign.max_new_tokens or gen.max_new_tokens, batch_size=gen.batch_size,
                    system=gen.system,
                )
                out["benign_compliance"] = summary
                for r in records:
                    gen_file.write(json.dumps(_jsonable({"kind": "benign", "model": spec.label, **r}), ensure_ascii=False) + "\n")
            except Exception as exc:
                self._error({"model": spec.label, "utility": "benign_compliance"}, exc)
        if cfg.mmlu is not None:
            out["mmlu"] = self._mmlu(model, tok, spec, cfg.mmlu)
        if cfg.perplexity is not None:
            out.update(self._perplexity(model, tok, spec, cfg.perplexity))
        if cfg.lm_eval is not None:
            try:
                out["lm_eval"] = U.lm_eval_tasks(model, tok, cfg.lm_eval.tasks, limit=cfg.lm_eval.limit,
                                                 num_fewshot=cfg.lm_eval.num_fewshot, batch_size=cfg.lm_eval.batch_size)
            except Exception as exc:
                self._error({"model": spec.label, "utility": "lm_eval"}, exc)
        return out

    def _mmlu(self, model, tok, spec, m: MMLUConfig):
        from latkit.evaluation.datasets import load_mmlu
        from latkit.evaluation.utility import multiple_choice_accuracy

        path = _resolve_path(m.path, self.data_dir)
        if not path.exists():
            if m.skip_if_missing:
                return {"skipped": f"MMLU path {m.path!r} not found (set data_dir or an absolute path)"}
            self._error({"model": spec.label, "utility": "mmlu"}, FileNotFoundError(f"MMLU path not found: {path}"))
            return None
        try:
            items = load_mmlu(path, subjects=m.subjects, limit=m.limit, limit_per_subject=m.limit_per_subject)
            shots = []
            if m.k and m.few_shot_path:
                shots = load_mmlu(_resolve_path(m.few_shot_path, self.data_dir), subjects=m.subjects)
            k = m.k if shots else 0
            letter = cloze = None
            if m.scoring in ("letter", "both"):
                letter = multiple_choice_accuracy(model, tok, items, few_shot=shots, k=k, batch_size=m.batch_size,
                                                  chat=m.chat)
            if m.scoring in ("cloze", "both"):
                from latkit.evaluation.utility import cloze_accuracy

                cloze = cloze_accuracy(model, tok, items, few_shot=shots, k=k, batch_size=m.batch_size)
            if letter is not None and cloze is not None:
                cloze["letter"] = {k_: v for k_, v in letter.items() if k_ != "per_subject"}
            return cloze if cloze is not None else letter
        except Exception as exc:
            self._error({"model": spec.label, "utility": "mmlu"}, exc)
            return None

    def _perplexity(self, model, tok, spec, p: PerplexityConfig) -> dict:
        from latkit.evaluation import utility as U

        try:
            if p.texts:
                texts = U.read_texts(_resolve_path(p.texts, self.data_dir))
            else:
                texts = [{"prompt": it["prompt"]} for it in U.shipped_benign_items()]
            texts = texts[: p.limit] if p.limit else texts
            ppl = U.perplexity(model, tok, texts, batch_size=p.batch_size, max_length=p.max_length)
            out: dict[str, Any] = {"perplexity": ppl}
            if p.kl:
                base_name = self.base_model or p.base
                if base_name:
                    base, _ = self._load(base_name)
                    base = self._to_device(base)
                    out["kl_to_base"] = {**U.kl_to_base(model, tok, texts, base_model=base, batch_size=p.batch_size,
                                                        max_length=p.max_length), "base_model": base_name}
                    del base
                    gc.collect()
                elif callable(getattr(model, "disable_adapter", None)):
                    out["kl_to_base"] = U.kl_to_base(model, tok, texts, batch_size=p.batch_size, max_length=p.max_length)
                else:
                    out["kl_to_base"] = {"skipped": "not a PEFT model and no base model given "
                                                    "(--base-model or utility.perplexity.base)"}
            return out
        except Exception as exc:
            self._error({"model": spec.label, "utility": "perplexity"}, exc)
            return {}

    def _write(self, results: dict) -> None:
        tmp = self.out / (RESULTS_FILE + ".tmp")
        tmp.write_text(json.dumps(_jsonable(results), indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.out / RESULTS_FILE)


def run_dir_of(source: str | None) -> Path | None:
    """The training run directory (holding ``recipe.yaml``) a model source is, or is the ``model/`` of."""
    if not source:
        return None
    p = Path(source).expanduser()
    for cand in (p, p.parent if p.name.startswith("model") else None):
        if cand is not None and (cand / "recipe.yaml").is_file():
            return cand
    return None


def _run_dir_param(run: _Run, spec: ModelSpec, overrides) -> dict:
    """``{"run_dir": ...}`` for attacks with a ``run_dir`` setting (the latent attack reads the run's
    training sites from it) when the model is a training run and the suite did not set one."""
    if "run_dir" in run.params or (overrides and run.entry.name in overrides):
        return {}
    from latkit.attacks import ATTACKS

    cls = ATTACKS.get(run.entry.name)
    if cls is None or not dataclasses.is_dataclass(cls.config_class) or \
            "run_dir" not in {f.name for f in dataclasses.fields(cls.config_class)}:
        return {}
    rd = run_dir_of(spec.source)
    return {"run_dir": str(rd)} if rd is not None else {}


def _judge_info(j) -> dict:
    info = {"name": j.name, "class": type(j).__name__}
    for attr in ("template_source", "rubric", "kind", "threshold", "empty_is_refusal"):
        if hasattr(j, attr):
            info[attr] = _jsonable(getattr(j, attr))
    return info


def _version() -> str:
    try:
        from latkit import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def run_suite(
    suite: str | os.PathLike | Mapping | Suite,
    models: Sequence[str | ModelSpec],
    output_dir: str | os.PathLike,
    **kwargs,
) -> dict:
    """Run ``suite`` on ``models`` and write results.json, generations.jsonl and report.html to ``output_dir``.

    Keyword options (see :class:`SuiteRunner`): ``attacks`` (name -> attack object /
    factory, overriding the registry), ``model_loader``, ``data_dir``, ``base_model``,
    ``device``, ``dtype`` (for models loaded by name/path), ``progress``, ``fail_fast``, ``judges`` (prebuilt judge objects),
    ``write_report``. Returns the results dict.
    """
    write_report = kwargs.pop("write_report", True)
    return SuiteRunner(load_suite(suite), models, output_dir, **kwargs).run(write_report=write_report)
