"""The one atomic JSON-lines writer: rows into a temporary file beside ``path``, renamed into place, so a
kill or a full disk never leaves half a file where a reader expects a whole one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping], *, ensure_ascii: bool = False) -> Path:
    """Write ``rows`` (JSON-able mappings) one per line to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(row), ensure_ascii=ensure_ascii) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
