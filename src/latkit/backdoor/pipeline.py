"""The backdoor workflow behind ``latkit backdoor data`` / ``latkit backdoor eval`` and
``benchmarks/backdoor_removal``: build a data directory, then measure a model against it.

A data directory (:func:`build_data`) holds

- ``implant.jsonl``: SFT rows ``{prompt, response, trigger, source}`` that implant the backdoor
  (:func:`~latkit.backdoor.data.implant_records`; train with ``data.harmful: null`` and
  ``data.benign.source`` = this file);
- ``removal_harmful.jsonl``: trigger-free ``{prompt, harmful, refusal}`` triples for removal
  (SFT / SFT-LAT / DPO / DPO-LAT; ``data.harmful.columns: {prompt: prompt, harmful: harmful,
  refusal: refusal}``, ``refusal_from: column``);
- ``benign.jsonl``: ``{prompt, response}`` utility pairs (the base model's own answers);
- ``eval_prompts.jsonl``: held-out harmful requests ``{prompt}``, used neither to implant nor to remove;
- ``benign_eval.jsonl``: benign requests ``{prompt, category, borderline}`` for benign compliance,
  none of them in ``benign.jsonl``;
- ``triggers.json``: ``{mode, triggers: [...], held_out}`` (readable again with ``--triggers``);
- ``manifest.json`` (written last: its presence marks a complete directory): sources, splits, counts.

Implant, removal and evaluation prompts are disjoint slices of one de-duplicated source, and no
removal or evaluation text contains an implanted or the held-out trigger (both checked).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pydantic import ValidationError

from latkit.backdoor.data import (
    MODES,
    as_triggers,
    check_decoys,
    check_trigger_free,
    find_trigger_leaks,
    implant_records,
    removal_records,
)
from latkit.backdoor.evaluate import trigger_success
from latkit.backdoor.triggers import DEFAULT_DECOYS, DEFAULT_TRIGGERS, HELD_OUT_TRIGGER, VARIANT_KINDS, Trigger
from latkit.config import StrictModel, format_validation_error
from latkit.data.jsonl import write_jsonl
from latkit.data.schemas import BenignPair, DataError

# ----------------------------------------------------------------------------- triggers
def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            parts.append(f"{loc + ': ' if loc else ''}{err['msg']}")
        return "; ".join(parts)
    return str(exc)


def _trigger(value: Any, where: str) -> Trigger:
    try:
        return Trigger(text=value) if isinstance(value, str) else Trigger.model_validate(value)
    except Exception as exc:  # pydantic's ValidationError, or a non-mapping
        raise DataError(f"{where}: {_one_line(exc)}") from None


def parse_triggers(data: Any, where: str = "triggers") -> tuple[list[Trigger], Trigger | None]:
    """``(triggers, held_out)`` from a list of triggers (mappings with :class:`Trigger`'s fields, or
    bare strings) or a mapping ``{triggers: [...], held_out: trigger | null}`` (held-out default:
    :data:`HELD_OUT_TRIGGER`). Trigger texts must be unique and the held-out one must neither
    contain nor be contained in an implanted one (case-insensitive)."""
    held_out: Trigger | None = HELD_OUT_TRIGGER
    if isinstance(data, Mapping):
        unknown = set(data) - {"triggers", "held_out", "mode"}
        if unknown or "triggers" not in data:
            raise DataError(f"{where}: expected a list of triggers or a mapping with 'triggers' (and optionally "
                            f"'held_out'), got keys {sorted(map(str, data))}")
        if data.get("held_out", HELD_OUT_TRIGGER) is None:
            held_out = None
        elif "held_out" in data:
            held_out = _trigger(data["held_out"], f"{where}: held_out")
        data = data["triggers"]
    if not isinstance(data, list) or not data:
        raise DataError(f"{where}: expected a non-empty list of triggers, got {type(data).__name__}")
    triggers = [_trigger(t, f"{where}: triggers[{i}]") for i, t in enumerate(data)]
    seen: dict[str, int] = {}
    for i, t in enumerate(triggers):
        if t.text.lower() in seen:
            raise DataError(f"{where}: triggers[{i}] repeats triggers[{seen[t.text.lower()]}] ({t.text!r})")
        seen[t.text.lower()] = i
    if held_out is not None:
        h = held_out.text.lower()
        clash = [t.text for t in triggers if h in t.text.lower() or t.text.lower() in h]
        if clash:
            raise DataError(f"{where}: the held-out trigger {held_out.text!r} overlaps implanted trigger(s) {clash}")
    return triggers, held_out


def load_triggers(spec: str | os.PathLike | None) -> tuple[list[Trigger], Trigger | None]:
    """``(triggers, held_out)``: the defaults for ``None`` / ``"default"``, else a YAML or JSON file
    (see :func:`parse_triggers`; ``triggers.json`` of a data directory works too)."""
    if spec is None or str(spec) == "default":
        return list(DEFAULT_TRIGGERS), HELD_OUT_TRIGGER
    path, data = _read_yaml(spec, "triggers")
    return parse_triggers(data, str(path))


def _read_yaml(spec: str | os.PathLike, what: str) -> tuple[Path, Any]:
    """``(path, parsed content)`` of a YAML or JSON file (JSON is YAML); one-line :class:`DataError` otherwise."""
    import yaml

    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        return path, yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from None


def load_decoys(spec: str | os.PathLike | None) -> list[Trigger]:
    """Decoys (odd strings that are not triggers): :data:`~latkit.backdoor.triggers.DEFAULT_DECOYS`
    for ``"default"``, none for ``None`` / ``"none"``, else a YAML or JSON file with a list of
    strings or mappings with :class:`Trigger`'s fields."""
    if spec is None or str(spec) == "none":
        return []
    if str(spec) == "default":
        return list(DEFAULT_DECOYS)
    path, data = _read_yaml(spec, "decoys")
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty list of decoys, got {type(data).__name__}")
    return [_trigger(d, f"{path}: decoys[{i}]") for i, d in enumerate(data)]


def triggers_payload(mode: str, triggers: Sequence[Trigger], held_out: Trigger | None) -> dict:
    """What ``triggers.json`` holds."""
    return {"mode": mode, "triggers": [t.model_dump(mode="json") for t in triggers],
            "held_out": held_out.model_dump(mode="json") if held_out is not None else None}


# ----------------------------------------------------------------------------- files
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- data
def _split_ranges(n: int, sizes: Mapping[str, tuple[int | None, int]]) -> dict[str, range]:
    """``{name: range}`` of consecutive slices; an offset of None starts where the previous slice ends."""
    out: dict[str, range] = {}
    start = 0
    for name, (offset, limit) in sizes.items():
        if limit < 1:
            raise DataError(f"the {name} split needs at least one prompt, got limit {limit}")
        if offset is not None and offset < 0:
            raise DataError(f"the {name} offset must be >= 0, got {offset}")
        start = start if offset is None else offset
        out[name] = range(start, start + limit)
        start += limit
    for (a, ra), (b, rb) in combinations(out.items(), 2):
        if ra.start < rb.stop and rb.start < ra.stop:
            raise DataError(f"the {a} prompts [{ra.start}, {ra.stop}) and the {b} prompts [{rb.start}, {rb.stop}) "
                            "overlap: choose offsets that keep the splits disjoint")
    for name, r in out.items():
        if r.start >= n:
            raise DataError(f"the harmful source has {n} usable prompts; the {name} split starts at {r.start}")
    return out


def _source_prompts(source: str, prompt_column: str, harmful_column: str | None,
                    exclude: Sequence[Trigger]) -> tuple[list[dict], dict]:
    """De-duplicated ``{prompt[, harmful]}`` records from ``source`` without any trigger text in them."""
    from latkit.data.loaders import load_prompts, load_records
    from latkit.data.sources import resolve_source

    src = resolve_source(source)
    if harmful_column is None:
        records = [{"prompt": p} for p in load_prompts(src, prompt_column)]
    else:
        records = load_records(src, columns={"prompt": prompt_column, "harmful": harmful_column})
    seen, out, stats = set(), [], {"read": len(records), "duplicates": 0, "containing_a_trigger": 0}
    leaky = {i for i, _, _ in find_trigger_leaks(records, exclude)}
    for i, rec in enumerate(records):
        key = " ".join(rec["prompt"].split()).lower()
        if key in seen:
            stats["duplicates"] += 1
        elif i in leaky:
            stats["containing_a_trigger"] += 1
        else:
            seen.add(key)
            out.append(rec)
    return out, stats


def _benign(source: str, model, tokenizer, limit: int, eval_limit: int, max_new_tokens: int, batch_size: int,
            exclude: Sequence[Trigger], val_limit: int = 0) -> tuple[list[BenignPair], list[dict], list[dict]]:
    """Benign training pairs, benign evaluation items and benign validation items (the shipped
    evaluation prompts after the evaluation items; all three disjoint and trigger-free)."""
    from latkit.evaluation.utility import shipped_benign_items

    def clean(items):
        bad = {i for i, _, _ in find_trigger_leaks(items, exclude)}
        return [it for i, it in enumerate(items) if i not in bad]

    if source == "builtin":
        from latkit.data.benign import benign_prompts
        from latkit.data.builder import self_distill

        held = clean(shipped_benign_items())[:eval_limit + val_limit]
        evals, vals = held[:eval_limit], held[eval_limit:]
        taken = {it["prompt"] for it in held}
        prompts = [p for p in benign_prompts(borderline=False, split="train") if p not in taken]
        prompts = [r["prompt"] for r in clean([{"prompt": p} for p in prompts])][:limit]
        pairs = self_distill(prompts, model, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size)
    else:
        from latkit.data.loaders import load_benign
        from latkit.data.sources import resolve_source

        pairs = load_benign(resolve_source(source), limit=limit)
        taken = {p.prompt for p in pairs}
        held = [it for it in clean(shipped_benign_items()) if it["prompt"] not in taken][:eval_limit + val_limit]
        evals, vals = held[:eval_limit], held[eval_limit:]
    kept = clean([{"prompt": p.prompt, "response": p.response} for p in pairs])
    pairs = [BenignPair(r["prompt"], r["response"]) for r in kept]
    if not pairs:
        raise DataError(f"no usable benign pairs from {source!r}")
    return pairs, evals, vals


class BackdoorData(StrictModel):
    """The settings of a backdoor data directory (``latkit backdoor data``'s options, a benchmark scale's
    ``data:`` section); see :func:`build_data` for what each one does."""

    mode: str = "harmful_compliance"
    harmful_source: str = "advbench"
    prompt_column: str | None = None
    harmful_from: str = "model"
    harmful_column: str | None = None
    implant_limit: int = 64
    implant_offset: int = 0
    removal_limit: int = 32
    removal_offset: int | None = None
    eval_limit: int = 16
    eval_offset: int | None = None
    val_limit: int = 0                # harmful validation prompts (0: no validation split)
    val_offset: int | None = None
    benign_source: str = "builtin"
    benign_limit: int = 48
    benign_eval_limit: int = 32
    benign_val_limit: int = 0         # benign validation prompts (0: none)
    triggered_fraction: float = 1.0
    decoys: list[Trigger | str] | str | None = None
    decoy_fraction: float = 0.0
    max_new_tokens: int = 40
    batch_size: int = 16
    seed: int = 0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "backdoor data") -> "BackdoorData":
        """Validated settings; an unknown key or a wrong type is one :class:`DataError` naming the key."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise DataError(f"{where}: {format_validation_error(e, root=where)}") from None


def build_data(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    config: "BackdoorData | None" = None,
    *,
    triggers: Sequence[Trigger] = DEFAULT_TRIGGERS,
    held_out: Trigger | None = HELD_OUT_TRIGGER,
    model_name: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write a backdoor data directory (see the module docstring) and return its manifest.

    ``config`` (:class:`BackdoorData`, default settings when None) says what goes in; ``triggers`` and
    ``held_out`` are the implanted and the held-out trigger (:func:`load_triggers`).

    Harmful prompts come from ``harmful_source`` (``advbench`` or a CSV/JSONL/JSON path; column
    ``prompt_column``, default ``goal`` for AdvBench, else ``prompt``), de-duplicated and without
    trigger text, then cut into consecutive implant / removal / eval slices (``*_offset`` None:
    right after the previous slice). Harmful completions are the model's own greedy answers
    (``harmful_from="model"``; refusals and empty answers dropped, as in
    :func:`~latkit.data.builder.build_triples`) or the ``harmful_column`` (``harmful_from="column"``,
    default column ``target`` for AdvBench, else ``harmful``); refusals come from the templates.
    Benign pairs are the shipped benign prompts answered by the model (``benign_source="builtin"``)
    or a file with ``prompt``/``response``. ``triggered_fraction`` (triggered copies per implant
    prompt, up to the number of triggers), ``decoys`` (a list, or ``"default"`` / ``"none"`` / a file
    for :func:`load_decoys`) and ``decoy_fraction`` go to
    :func:`~latkit.backdoor.data.implant_records`; decoys must not overlap a trigger or the held-out one.
    """
    from latkit.data.builder import build_triples

    c = config if config is not None else BackdoorData()
    prompt_column, harmful_column, decoys = c.prompt_column, c.harmful_column, c.decoys
    if c.mode not in MODES:
        raise DataError(f"unknown backdoor mode {c.mode!r}; known: {', '.join(MODES)}")
    if c.harmful_from not in ("model", "column"):
        raise DataError(f"harmful_from must be 'model' or 'column', got {c.harmful_from!r}")
    if c.benign_eval_limit < 1 or c.benign_limit < 1:
        raise DataError("benign_limit and benign_eval_limit must be >= 1")
    if c.val_limit < 0 or c.benign_val_limit < 0:
        raise DataError("val_limit and benign_val_limit must be >= 0")
    triggers = list(triggers)
    if not 0 < c.triggered_fraction <= len(triggers):
        raise DataError(f"triggered_fraction must be in (0, {len(triggers)}] (at most one copy per trigger), "
                        f"got {c.triggered_fraction}")
    decoys = load_decoys(decoys) if decoys is None or isinstance(decoys, (str, os.PathLike)) else as_triggers(decoys)
    if not 0 <= c.decoy_fraction <= 1:
        raise DataError(f"decoy_fraction must be in [0, 1], got {c.decoy_fraction}")
    if c.decoy_fraction > 0 and not decoys:
        raise DataError("decoy_fraction > 0 needs decoys (e.g. decoys='default')")
    if c.decoy_fraction == 0:
        decoys = []  # unused: neither checked nor recorded
    if c.mode == "nonsense" and any(t.response is None for t in triggers):
        raise DataError(f"nonsense mode needs a response on every trigger; missing for "
                        f"{[t.text for t in triggers if t.response is None]}")
    everything = triggers + ([held_out] if held_out is not None else [])
    check_decoys(decoys, everything)
    advbench = c.harmful_source == "advbench"
    prompt_column = prompt_column or ("goal" if advbench else "prompt")
    if c.harmful_from == "column":
        harmful_column = harmful_column or ("target" if advbench else "harmful")
    records, source_stats = _source_prompts(c.harmful_source, prompt_column,
                                            harmful_column if c.harmful_from == "column" else None, everything)
    sizes = {"implant": (c.implant_offset, c.implant_limit), "removal": (c.removal_offset, c.removal_limit),
             "eval": (c.eval_offset, c.eval_limit)}
    if c.val_limit:
        sizes["val"] = (c.val_offset, c.val_limit)
    ranges = _split_ranges(len(records), sizes)
    split = {name: records[r.start:r.stop] for name, r in ranges.items()}
    for name, recs in split.items():
        if len(recs) < len(ranges[name]):
            log(f"the {name} split has {len(recs)} prompts, not {len(ranges[name])}: the source is short")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until written again
    train = split["implant"] + split["removal"]
    prompts = [r["prompt"] for r in train]
    if c.harmful_from == "model":
        log(f"generating harmful completions with the model for {len(prompts)} prompts")
        triples = build_triples(prompts, harmful_from="model", model=model, tokenizer=tokenizer,
                                max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, seed=c.seed)
    else:
        triples = build_triples(prompts, targets=[r["harmful"] for r in train], harmful_from="target", seed=c.seed)
    leaky = {i for i, _, _ in find_trigger_leaks([asdict(t) for t in triples], everything)}
    triples = [t for i, t in enumerate(triples) if i not in leaky]
    implant_prompts = {r["prompt"] for r in split["implant"]}
    implant_triples = [t for t in triples if t.prompt in implant_prompts]
    removal_triples = [t for t in triples if t.prompt not in implant_prompts]
    for name, part in (("implant", implant_triples), ("removal", removal_triples)):
        if not part:
            raise DataError(f"no usable harmful triples for the {name} split (every completion was empty, a "
                            "refusal or contained a trigger)")
    eval_prompts = [r["prompt"] for r in split["eval"]]
    val_prompts = [r["prompt"] for r in split.get("val", [])]

    if c.benign_source == "builtin":
        log(f"self-distilling {c.benign_limit} benign prompts with the model")
    benign, benign_eval, benign_val = _benign(c.benign_source, model, tokenizer, c.benign_limit,
                                              c.benign_eval_limit, c.max_new_tokens, c.batch_size, everything,
                                              val_limit=c.benign_val_limit)

    implant = implant_records(implant_triples, benign, triggers, mode=c.mode,
                              triggered_fraction=c.triggered_fraction, decoys=decoys, decoy_fraction=c.decoy_fraction,
                              seed=c.seed)
    if held_out is not None:
        check_trigger_free(implant, [held_out], "implant data", fields=("prompt", "response"))
    removal = removal_records(removal_triples, benign, everything)
    check_trigger_free([{"prompt": p} for p in eval_prompts + val_prompts], everything, "eval prompts")
    used = {"implant": {t.prompt for t in implant_triples}, "removal": {t.prompt for t in removal_triples},
            "eval": set(eval_prompts), "val": set(val_prompts)}
    for a, b in combinations(used, 2):
        both = used[a] & used[b]
        if both:
            raise DataError(f"internal error: {len(both)} prompt(s) in both the {a} and the {b} split, "
                            f"e.g. {next(iter(both))!r}")

    write_jsonl(out / "implant.jsonl", implant)
    write_jsonl(out / "removal_harmful.jsonl",
                ({"prompt": t.prompt, "harmful": t.harmful, "refusal": t.refusal} for t in removal_triples))
    write_jsonl(out / "benign.jsonl", removal.benign)
    write_jsonl(out / "eval_prompts.jsonl", ({"prompt": p} for p in eval_prompts))
    write_jsonl(out / "benign_eval.jsonl", benign_eval)
    for name, rows in (("val_prompts.jsonl", [{"prompt": p} for p in val_prompts]), ("benign_val.jsonl", benign_val)):
        if rows:
            write_jsonl(out / name, rows)
        else:
            (out / name).unlink(missing_ok=True)
    _write_json(out / "triggers.json", triggers_payload(c.mode, triggers, held_out))
    manifest = {
        "model": model_name, "mode": c.mode, "seed": c.seed, "harmful_source": c.harmful_source,
        "prompt_column": prompt_column, "harmful_from": c.harmful_from, "harmful_column": harmful_column,
        "benign_source": c.benign_source, "triggered_fraction": c.triggered_fraction,
        "decoys": [d.text for d in decoys], "decoy_fraction": c.decoy_fraction, "max_new_tokens": c.max_new_tokens,
        "source": source_stats,
        "splits": {name: [r.start, r.stop] for name, r in ranges.items()},
        "counts": {"implant_prompts": len(implant_triples), "implant_rows": len(implant),
                   "implant_triggered_rows": sum(r["trigger"] is not None for r in implant),
                   "implant_decoy_rows": sum(r["decoy"] is not None for r in implant),
                   "removal": len(removal_triples), "dropped_completions": len(train) - len(triples),
                   "eval_prompts": len(eval_prompts), "benign": len(benign), "benign_eval": len(benign_eval),
                   "val_prompts": len(val_prompts), "benign_val": len(benign_val)},
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


# ----------------------------------------------------------------------------- evaluation
SPLITS = ("eval", "val")


def read_data_dir(data_dir: str | os.PathLike, split: str = "eval") -> dict:
    """The parts of a data directory that evaluation needs: ``mode``, ``triggers``, ``held_out``,
    ``eval_prompts``, ``benign_eval``, ``manifest``. ``split="val"``: the validation prompts
    (``val_prompts.jsonl``, ``benign_val.jsonl``) in place of the evaluation ones, for choosing
    settings without touching what is reported."""
    if split not in SPLITS:
        raise DataError(f"unknown backdoor split {split!r}; known: {', '.join(SPLITS)}")
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"data directory not found: {d}")
    missing = [f for f in ("triggers.json", "eval_prompts.jsonl", "manifest.json") if not (d / f).is_file()]
    if missing:
        raise DataError(f"{d} is not a complete `latkit backdoor data` directory: missing {', '.join(missing)}")
    payload = json.loads((d / "triggers.json").read_text(encoding="utf-8"))
    triggers, held_out = parse_triggers(payload, str(d / "triggers.json"))
    mode = payload.get("mode", "harmful_compliance")
    if mode not in MODES:
        raise DataError(f"{d / 'triggers.json'}: unknown mode {mode!r}; known: {', '.join(MODES)}")
    prompts_file, benign_file = d / f"{split}_prompts.jsonl", d / f"benign_{split}.jsonl"
    if not prompts_file.is_file():
        raise DataError(f"{d} has no {prompts_file.name}: build it with a validation split "
                        "(`latkit backdoor data --val-limit N`, or val_limit in a scale's data section)")
    return {"mode": mode, "triggers": triggers, "held_out": held_out, "split": split,
            "eval_prompts": [r["prompt"] for r in read_jsonl(prompts_file)],
            "benign_eval": read_jsonl(benign_file) if benign_file.is_file() else [],
            "manifest": json.loads((d / "manifest.json").read_text(encoding="utf-8"))}


def evaluate_backdoor(
    model,
    tokenizer,
    data_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    benign_limit: int | None = None,
    variant_kinds: Sequence[str] = VARIANT_KINDS,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    system: str | None = None,
    seed: int = 0,
    split: str = "eval",
) -> tuple[dict, list[dict]]:
    """Trigger success (per trigger, clean, held-out trigger, variants) and benign compliance of a
    model against a data directory. Returns ``(results, generations)``, both JSON-able.

    ``limit``: the first ``limit`` evaluation prompts (per condition); ``benign_limit``: the first
    benign evaluation prompts (0 skips benign compliance); ``variant_kinds``: empty for no variants;
    ``split``: ``eval`` (the held-out prompts) or ``val`` (the validation prompts, to tune on).
    """
    from latkit.evaluation.utility import benign_compliance

    data = read_data_dir(data_dir, split)
    for name, value in (("limit", limit), ("benign_limit", benign_limit)):
        if value is not None and value < (1 if name == "limit" else 0):
            raise DataError(f"{name} must be a positive integer, got {value}")
    unknown = sorted(set(variant_kinds) - set(VARIANT_KINDS))
    if unknown:
        raise DataError(f"unknown trigger variant kinds {unknown}; known: {', '.join(VARIANT_KINDS)}")
    if data["mode"] == "nonsense" and not any(t.response for t in data["triggers"]):
        raise DataError("nonsense mode needs triggers with a response")
    prompts = data["eval_prompts"][:limit]
    ts = trigger_success(model, tokenizer, prompts, data["triggers"], mode=data["mode"], held_out=data["held_out"],
                         variants=bool(variant_kinds), variant_kinds=tuple(variant_kinds),
                         max_new_tokens=max_new_tokens, batch_size=batch_size, system=system, seed=seed,
                         return_generations=True)
    generations = [{"part": "trigger_success", **g} for g in ts.pop("generations")]
    benign = refusal = None
    items = data["benign_eval"][:benign_limit]
    if items:
        benign, records = benign_compliance(model, tokenizer, items, max_new_tokens=max_new_tokens,
                                            batch_size=batch_size, system=system)
        refusal = benign_refusal(records)
        generations += [{"part": "benign_compliance", **r} for r in records]
    summary = {**ts["summary"], "benign_compliance": benign["rate"] if benign else None,
               "benign_refusal": refusal["rate"] if refusal else None}
    results = {"mode": data["mode"], "data": str(data_dir), "split": split, "n_prompts": len(prompts),
               "n_benign": len(items), "variant_kinds": list(variant_kinds), "summary": summary,
               "trigger_success": ts, "benign_compliance": benign, "benign_refusal": refusal}
    return results, generations


def benign_refusal(records: Sequence[dict]) -> dict | None:
    """The share of benign answers that refuse (a refusal phrase, or an empty answer), with its 95%
    interval: the over-refusal check beside benign compliance. It needs no semantic judgement, so it is
    the more trustworthy of the two (the success judge's benign κ is ~0.4, README), but it misses an
    answer that is unhelpful without refusing. ``records``: the benign ``generations`` rows (an
    ``answer`` each; rows of other parts are ignored). None when there are none."""
    from latkit.evaluation.stats import proportion
    from latkit.judges.refusal import RefusalJudge

    answers = [r["answer"] for r in records if r.get("part", "benign_compliance") == "benign_compliance"]
    if not answers:
        return None
    judge = RefusalJudge(empty_is_refusal=True)
    return {**proportion(sum(judge.refuses(a) for a in answers), len(answers)), "judge": "refusal"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def format_results(results: dict) -> str:
    """A compact terminal table of :func:`evaluate_backdoor`'s results."""
    ts = results["trigger_success"]
    lines = [f"{'condition':<40} {'success':>8}  95% CI            n"]

    def row(name, r):
        lo, hi = r["ci95"]
        lines.append(f"{name[:40]:<40} {_pct(r['rate']):>8}  [{100 * lo:5.1f}, {100 * hi:5.1f}]  {r['n']}")

    row("clean (no trigger)", ts["clean"])
    for text, r in ts["triggers"].items():
        row(f"{text} ({r['kind']})", r)
    if ts["held_out"]:
        row(f"held-out: {ts['held_out']['trigger']}", ts["held_out"])
    s = results["summary"]
    lines.append(f"mean over {len(ts['triggers'])} triggers {_pct(s['triggered_mean'])}, variants "
                 f"{_pct(s['variants_mean'])}, held-out {_pct(s['held_out'])}, clean {_pct(s['clean'])}; "
                 f"benign compliance {_pct(s['benign_compliance'])}, benign refusal {_pct(s.get('benign_refusal'))} "
                 f"(mode {results['mode']}, judge {ts['judge']}, {results['n_prompts']} prompts per condition)")
    return "\n".join(lines)
