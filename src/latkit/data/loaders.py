"""Load records from CSV / JSONL / JSON files, in-memory lists or Hugging Face datasets.

Every error is a :class:`~latkit.data.schemas.DataError` whose message names the
source, the row (and file line where there is one) and the column.
"""
from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from latkit.data.schemas import BenignPair, DataError, HarmfulTriple

Source = Union[str, Path, Sequence[Mapping[str, Any]], Any]

FILE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}

#: Column maps for well-known layouts (``our field -> source column``).
ADVBENCH_COLUMNS = {"prompt": "goal", "harmful": "target"}
LAT_COLUMNS = {"prompt": "prompt", "refusal": "chosen", "harmful": "rejected"}
HARMBENCH_PROMPT_COLUMN = "Behavior"
HARMBENCH_CONTEXT_COLUMN = "ContextString"

HARMFUL_FIELDS = ("prompt", "refusal", "harmful")
BENIGN_FIELDS = ("prompt", "response")

# A row: (where, record) with ``where`` like "row 3 (line 4)".
_Row = tuple[str, Mapping[str, Any]]


# ---------------------------------------------------------------------- readers
def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")


def _read_delimited(path: Path, delimiter: str, limit) -> tuple[list[str], list[_Row]]:
    rows: list[_Row] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            header = reader.fieldnames
            if not header:
                raise DataError(f"{path}: file is empty (expected a header row with column names)")
            for i, rec in enumerate(reader, start=1):
                if limit is not None and i > limit:
                    break
                rows.append((f"row {i} (line {reader.line_num})", rec))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc})") from exc
    return list(header), rows


def _read_jsonl(path: Path, limit) -> list[_Row]:
    rows: list[_Row] = []
    try:
        with path.open(encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                if limit is not None and len(rows) >= limit:
                    break
                where = f"row {len(rows) + 1} (line {line_no})"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, {where}, column {exc.colno}: invalid JSON: {exc.msg}") from exc
                if not isinstance(rec, dict):
                    raise DataError(f"{path}, {where}: expected a JSON object, got {type(rec).__name__}")
                rows.append((where, rec))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc})") from exc
    return rows


def _read_json(path: Path, limit) -> list[_Row]:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc})") from exc
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of objects at the top level, got {type(data).__name__} "
            "(use JSONL for one object per line)"
        )
    rows: list[_Row] = []
    for i, rec in enumerate(data[:limit] if limit is not None else data, start=1):
        if not isinstance(rec, dict):
            raise DataError(f"{path}, row {i}: expected a JSON object, got {type(rec).__name__}")
        rows.append((f"row {i}", rec))
    return rows


def _is_hf_dataset(obj) -> bool:
    return hasattr(obj, "column_names") and hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, Path))


def _read_hf_dataset(ds, desc: str, split: str, limit) -> tuple[list[str], list[_Row]]:
    if isinstance(ds.column_names, dict):  # DatasetDict: pick the split
        if split not in ds.column_names:
            raise DataError(f"{desc}: no split {split!r}; available splits: {', '.join(ds.column_names)}")
        ds = ds[split]
    rows: list[_Row] = []
    for i, rec in enumerate(ds, start=1):
        if limit is not None and i > limit:
            break
        rows.append((f"row {i}", rec))
    return list(ds.column_names), rows


def _load_hub_dataset(name: str, split: str):
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{name!r} is not a local file, and loading it as a Hugging Face dataset needs the optional "
            "package 'datasets' (pip install 'latkit[datasets]')"
        ) from None
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, missing dataset, missing split, offline mode ...
        raise DataError(
            f"could not load Hugging Face dataset {name!r} (split {split!r}): {type(exc).__name__}: {exc}. "
            "If it is a local file, check the path; if it is a Hub dataset, check its name, the split, "
            "and that the Hub is reachable (or the dataset is in the local cache)."
        ) from exc


def _read_source(source: Source, split: str, limit) -> tuple[str, list[str], list[_Row]]:
    """Return (description, available columns, rows) for any supported source."""
    _check_limit(limit)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        kind = FILE_SUFFIXES.get(path.suffix.lower())
        if path.is_file():
            if kind is None:
                raise DataError(
                    f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}"
                )
            if kind in ("csv", "tsv"):
                header, rows = _read_delimited(path, "," if kind == "csv" else "\t", limit)
            else:
                rows = _read_jsonl(path, limit) if kind == "jsonl" else _read_json(path, limit)
                header = list(dict.fromkeys(k for _, rec in rows for k in rec))
            return str(path), header, rows
        if kind is not None or isinstance(source, Path) or str(source).startswith((".", "/", "~")):
            raise DataError(f"{path}: file not found")
        ds = _load_hub_dataset(str(source), split)
        header, rows = _read_hf_dataset(ds, f"dataset {source!r}", split, limit)
        return f"dataset {source!r}", header, rows
    if _is_hf_dataset(source):
        name = getattr(getattr(source, "info", None), "dataset_name", None)
        desc = f"dataset {name!r}" if name else f"dataset ({type(source).__name__})"
        header, rows = _read_hf_dataset(source, desc, split, limit)
        return desc, header, rows
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        items = source[:limit] if limit is not None else source
        rows = []
        for i, rec in enumerate(items, start=1):
            if not isinstance(rec, Mapping):
                raise DataError(f"records list, row {i}: expected a mapping, got {type(rec).__name__}")
            rows.append((f"row {i}", rec))
        header = list(dict.fromkeys(k for _, rec in rows for k in rec))
        return "records list", header, rows
    raise DataError(
        f"unsupported data source of type {type(source).__name__}: give a path to a .csv/.jsonl/.json file, "
        "a Hugging Face dataset name or Dataset, or a list of dicts"
    )


# ---------------------------------------------------------------------- mapping
def _check_columns(columns, allowed: Iterable[str] | None = None) -> None:
    if not isinstance(columns, Mapping) or not columns:
        raise DataError(f"columns must be a non-empty mapping of field -> source column, got {columns!r}")
    for field, col in columns.items():
        if not isinstance(field, str) or not isinstance(col, str) or not col:
            raise DataError(f"columns must map field names to column names (strings), got {field!r}: {col!r}")
    if allowed is not None:
        allowed = tuple(allowed)
        unknown = [f for f in columns if f not in allowed]
        if unknown:
            raise DataError(f"unknown field(s) {', '.join(map(repr, unknown))} in columns; allowed: {', '.join(allowed)}")


def _map_rows(
    desc: str,
    header: list[str],
    rows: list[_Row],
    columns: Mapping[str, str],
    optional: Iterable[str] = (),
) -> list[dict]:
    """Rename columns to fields, checking presence and (except for ``optional`` fields) non-empty text."""
    optional = set(optional)
    for field, col in columns.items():
        if col not in header:
            raise DataError(
                f"{desc}: column {col!r} (for field {field!r}) not found; "
                f"available columns: {', '.join(map(str, header)) or '(none)'}"
            )
    if not rows:
        raise DataError(f"{desc}: no records")
    out = []
    for where, rec in rows:
        mapped = {}
        for field, col in columns.items():
            if col not in rec:
                raise DataError(
                    f"{desc}, {where}: column {col!r} (for field {field!r}) is missing; "
                    f"this row has columns: {', '.join(map(str, rec))}"
                )
            value = rec[col]
            if value is None or (isinstance(value, str) and not value.strip()):
                if field in optional:
                    mapped[field] = ""
                    continue
                raise DataError(f"{desc}, {where}, column {col!r} (field {field!r}): empty value")
            if not isinstance(value, str):
                raise DataError(
                    f"{desc}, {where}, column {col!r} (field {field!r}): expected text, got {type(value).__name__}"
                )
            mapped[field] = value
        out.append(mapped)
    return out


# ---------------------------------------------------------------------- public API
def load_records(
    source: Source,
    *,
    columns: Mapping[str, str] | None = None,
    split: str = "train",
    limit: int | None = None,
) -> list[dict]:
    """Read records from a file (.csv with header, .tsv, .jsonl, .json list), a list of dicts,
    a ``datasets.Dataset``/``DatasetDict`` or a Hugging Face dataset name (``split`` applies to those).

    Without ``columns`` the raw records are returned. With ``columns`` (``{field: source_column}``)
    each record becomes ``{field: text}``; a missing column or an empty value raises :class:`DataError`.
    ``limit`` keeps the first ``limit`` records.
    """
    desc, header, rows = _read_source(source, split, limit)
    if columns is None:
        if not rows:
            raise DataError(f"{desc}: no records")
        return [dict(rec) for _, rec in rows]
    _check_columns(columns)
    return _map_rows(desc, header, rows, columns)


def load_harmful(
    source: Source,
    columns: Mapping[str, str] | None = None,
    *,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
) -> list[HarmfulTriple]:
    """Load (prompt, refusal, harmful) triples.

    ``columns`` defaults to same-named columns. If an explicit ``columns`` has no ``"refusal"``
    entry (e.g. :data:`ADVBENCH_COLUMNS`), refusals are drawn from the project's templates,
    seeded by ``seed``.
    """
    cols = dict(columns) if columns is not None else {f: f for f in HARMFUL_FIELDS}
    _check_columns(cols, HARMFUL_FIELDS)
    for required in ("prompt", "harmful"):
        if required not in cols:
            raise DataError(f"columns must name the source column for field {required!r}, got {cols!r}")
    records = load_records(source, columns=cols, split=split, limit=limit)
    if "refusal" not in cols:
        from latkit.data.refusals import refusal_for

        rng = random.Random(seed)
        for rec in records:
            rec["refusal"] = refusal_for(rec["prompt"], rng)
    return [HarmfulTriple(r["prompt"], r["refusal"], r["harmful"]) for r in records]


def load_benign(
    source: Source,
    columns: Mapping[str, str] | None = None,
    *,
    split: str = "train",
    limit: int | None = None,
) -> list[BenignPair]:
    """Load (prompt, response) pairs; ``columns`` defaults to same-named columns."""
    cols = dict(columns) if columns is not None else {f: f for f in BENIGN_FIELDS}
    _check_columns(cols, BENIGN_FIELDS)
    for required in BENIGN_FIELDS:
        if required not in cols:
            raise DataError(f"columns must name the source column for field {required!r}, got {cols!r}")
    records = load_records(source, columns=cols, split=split, limit=limit)
    return [BenignPair(r["prompt"], r["response"]) for r in records]


def load_prompts(
    source: Source,
    column: str = "prompt",
    *,
    context_column: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> list[str]:
    """Load prompts from one column (AdvBench ``"goal"``, HarmBench ``"Behavior"``).

    With ``context_column`` (HarmBench ``"ContextString"``), rows with a non-empty context become
    ``context + "\\n\\n---\\n\\n" + prompt`` as in HarmBench; empty contexts are allowed.
    """
    cols = {"prompt": column}
    if context_column is not None:
        cols["context"] = context_column
    _check_columns(cols)
    desc, header, rows = _read_source(source, split, limit)
    records = _map_rows(desc, header, rows, cols, optional=("context",))
    return [
        f"{r['context']}\n\n---\n\n{r['prompt']}" if r.get("context") else r["prompt"] for r in records
    ]
