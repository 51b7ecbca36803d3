"""The shipped recipes: listed, printed and copied by name (``latkit recipes``), found by ``latkit train NAME``.

In an installed wheel they are package data (``latkit/recipes/*.yaml``, copied there at build time);
in a source checkout they are the repository's ``recipes/`` folder. A path to an existing file always
wins over a name.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from latkit.errors import LatkitError


class RecipeError(LatkitError, ValueError):
    """A recipe is malformed or not found; the message names the offending key or file."""


def recipes_dir() -> Path | None:
    """Where the shipped recipes are: the package's ``recipes/`` (wheel), else the checkout's ``recipes/``."""
    here = Path(__file__).resolve()
    for d in (here.parents[1] / "recipes", here.parents[3] / "recipes"):
        if d.is_dir() and any(d.glob("*.yaml")):
            return d
    return None


def list_recipes() -> dict[str, Path]:
    """``{name: path}`` of every shipped recipe (name = file name without ``.yaml``)."""
    d = recipes_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d is not None else {}


def describe(path: Path) -> str:
    """A recipe's ``description`` field (one line), or its first comment line."""
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        data = {}
    desc = data.get("description") if isinstance(data, dict) else None
    if not desc:
        desc = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
    return " ".join(str(desc).split())


def find_recipe(name_or_path: str | Path) -> Path:
    """An existing file, else a shipped recipe by name (``quickstart`` or ``quickstart.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = list_recipes()
    key = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if str(name_or_path) in (key, key + ".yaml") or path.parent.name == "recipes":
        if key in shipped:
            return shipped[key]
    names = ", ".join(shipped) or "none found"
    raise RecipeError(f"recipe not found: {name_or_path} (not a file, and not a shipped recipe: {names}; "
                      "see `latkit recipes`)")


def copy_recipe(name: str, destination: str | Path, *, force: bool = False) -> Path:
    """Copy shipped recipe ``name`` to ``destination`` (a file, or a directory to put ``NAME.yaml`` in)."""
    src = find_recipe(name) if name in list_recipes() or name.removesuffix(".yaml") in list_recipes() else None
    if src is None:
        raise RecipeError(f"no shipped recipe {name!r}; shipped: {', '.join(list_recipes())}")
    dst = Path(destination).expanduser()
    if dst.is_dir():
        dst = dst / src.name
    if dst.exists() and not force:
        raise RecipeError(f"{dst} exists; pass --force to overwrite it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return dst
