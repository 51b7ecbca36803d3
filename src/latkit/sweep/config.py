"""A sweep file: which recipes, with which overrides, evaluated by which suite, compared how.

::

    name: quickstart-utility
    suite: quick                  # a built-in suite or a suite YAML (what `latkit eval --suite` takes)
    eval: {limit: 8}              # optional: the `latkit eval` flags limit / max_new_tokens / batch_size
    references: [smollm2-135m]    # optional: models evaluated as they are (the base), drawn beside the points
    methods:
      - name: rt
        recipe: recipes/rt.yaml   # a recipe file or a shipped recipe's name
        set: {train.steps: 40}    # overrides every point of this method gets
        grid:                     # the cartesian product of these values (the keys of `latkit train --set`)
          defender.sft: [1.0, 2.0]
      - name: lat
        recipe: quickstart
        points:                   # or an explicit list of override sets (both: the grid of each point)
          - {adversary.epsilon: 1.0}
          - {adversary.epsilon: 4.0, defender.kl: 0.5}
    match: {reference: rt, within: 0.05}   # the matched-utility pick (see latkit.sweep.pareto)

Each point is a method and its overrides; its id (``lat-01-3f2a9c1e``) holds a hash of the resolved
recipe, so editing a recipe or an override makes a new point instead of silently reusing an old run.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from latkit.config import StrictModel, format_validation_error
from latkit.errors import LatkitError

__all__ = ["SweepError", "MethodSpec", "EvalOverrides", "MatchSpec", "SweepConfig", "Point", "load_sweep",
           "expand_points"]


class SweepError(LatkitError, ValueError):
    """A sweep file or a sweep directory that cannot be used (one line, exit code 2)."""


Overrides = dict[str, Any]


class MethodSpec(StrictModel):
    """One curve of the Pareto plot: a recipe and the override sets to train it with."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    recipe: str
    set: Overrides = {}
    grid: dict[str, list[Any]] = {}
    points: list[Overrides] = []

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, grid):
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid axis {key!r} has no values")
        return grid


class EvalOverrides(StrictModel):
    """The ``latkit eval`` flags, applied to the suite of every point."""

    limit: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)


class MatchSpec(StrictModel):
    """Pick, per method, the most robust point whose utility is at least ``reference``'s best minus ``within``."""

    reference: str
    within: float = Field(0.05, ge=0, le=1)
    utility: str = Field("benign", pattern=r"^(benign|borderline|ordinary|mmlu)$")


class SweepConfig(StrictModel):
    name: str = "sweep"
    description: str = ""
    suite: str = "quick"
    eval: EvalOverrides = EvalOverrides()
    data_dir: str | None = None
    references: list[str] = []
    methods: list[MethodSpec]
    match: MatchSpec | None = None

    @model_validator(mode="after")
    def _names(self):
        names = [m.name for m in self.methods]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"method names must be unique, repeated: {', '.join(dupes)}")
        if not self.methods:
            raise ValueError("give at least one method")
        if self.match is not None and self.match.reference not in names:
            raise ValueError(f"match.reference {self.match.reference!r} is not a method ({', '.join(names)})")
        return self


@dataclass(frozen=True)
class Point:
    """One training run of the sweep: ``method``'s recipe with ``overrides`` (dotted keys → values)."""

    method: str
    index: int
    recipe: str
    overrides: Overrides = field(default_factory=dict)
    key: str = ""  # hash of the resolved recipe: same key, same training run

    @property
    def id(self) -> str:
        return f"{self.method}-{self.index:02d}-{self.key[:8]}"

    def set_args(self) -> list[str]:
        """The overrides as ``latkit train --set`` arguments (values as JSON, which YAML reads back)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides.items()) or "(recipe as is)"


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; every problem is one :class:`SweepError` line naming the key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"sweep {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"sweep {path} must be a mapping (name, suite, methods …), got {type(data).__name__}")
    return sweep_from_dict(data)


def sweep_from_dict(data: dict) -> SweepConfig:
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise SweepError(f"invalid sweep: {format_validation_error(e, root='sweep')}") from None


def _grid(axes: dict[str, list[Any]]) -> list[Overrides]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def _recipe_key(recipe, overrides: list[str], where: str) -> str:
    """Hash of the recipe as it would train (defaults filled in); a bad override is a SweepError now,
    before any point has trained."""
    from latkit.train.recipe import RecipeError, load_recipe

    try:
        resolved = load_recipe(recipe, overrides)
    except RecipeError as e:
        raise SweepError(f"{where}: {e}") from None
    blob = json.dumps(resolved.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def expand_points(cfg: SweepConfig) -> list[Point]:
    """Every point of every method, in file order: ``set`` ∪ each of ``points`` (or ``{}``) ∪ each grid cell.

    Raises :class:`SweepError` for an override the recipe rejects and for two points of one method that
    train the same recipe."""
    out: list[Point] = []
    for m in cfg.methods:
        seen: dict[str, int] = {}
        for extra in m.points or [{}]:
            for cell in _grid(m.grid):
                overrides = {**m.set, **extra, **cell}
                pt = Point(m.name, len(seen), m.recipe, overrides)
                key = _recipe_key(m.recipe, pt.set_args(), f"method {m.name!r} ({pt.label()})")
                if key in seen:
                    raise SweepError(f"method {m.name!r}: points {seen[key]} and {len(seen)} train the same recipe "
                                     f"({pt.label()})")
                seen[key] = len(seen)
                out.append(Point(m.name, pt.index, m.recipe, overrides, key))
    return out
