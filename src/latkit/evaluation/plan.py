"""A suite's attacks as runs: each attack entry (and each value of its sweep) with its resolved
settings, and the attack object it names. Read by the runner and by the checks that run before
the first generation (:mod:`latkit.evaluation.safety`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from latkit.evaluation.schema import AttackEntry, GenerationConfig, Suite


def resolve_attack(name: str, params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None):
    """An attack object with ``run(model, tokenizer, behaviours)``.

    ``overrides`` maps names to attack objects, classes or factories (``factory(params)``)
    and takes precedence over the registry.
    """
    if overrides and name in overrides:
        obj = overrides[name]
        if hasattr(obj, "run") and not isinstance(obj, type):
            return obj
        return obj(dict(params))
    from latkit.attacks import get_attack

    return get_attack(name, dict(params))


def _attack_params(entry: AttackEntry, gen: GenerationConfig, overrides) -> dict:
    """Suite generation defaults (for the settings the attack has) overlaid with the entry's params."""
    params = dict(entry.params)
    fields = None
    if not (overrides and entry.name in overrides):
        from latkit.attacks import ATTACKS

        cls = ATTACKS.get(entry.name)
        if cls is not None and dataclasses.is_dataclass(cls.config_class):
            fields = {f.name for f in dataclasses.fields(cls.config_class)}
    for k, v in gen.model_dump(exclude=set(GenerationConfig.ENGINE_KEYS)).items():
        if k not in params and (fields is None or k in fields):
            params[k] = v
    return params


@dataclass
class _Run:
    key: str
    entry: AttackEntry
    params: dict
    sweep_param: str | None = None
    sweep_value: Any = None


def expand_attacks(suite: Suite, overrides=None) -> list[_Run]:
    runs = []
    for entry in suite.attacks:
        base = _attack_params(entry, suite.generation, overrides)
        if entry.sweep:
            (param, values), = entry.sweep.items()
            for v in values:
                runs.append(_Run(f"{entry.key}[{param}={v}]", entry, {**base, param: v}, param, v))
        else:
            runs.append(_Run(entry.key, entry, base))
    return runs
