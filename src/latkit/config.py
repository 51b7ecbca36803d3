"""The one strict config base and the one formatter of its validation errors (recipes, suites, the
unlearning section …): an unknown key or a wrong value is an error that names the key."""
from __future__ import annotations

from typing import Container

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


def format_validation_error(err: ValidationError, *, root: str, tags: Container[str] = (),
                            unknown_at: bool = False) -> str:
    """One line for all of ``err``'s errors, ``"; "``-separated, each naming its dotted key.

    ``tags``: union tags pydantic puts into the location of a discriminated union's member (left out of
    the key). An unknown key reads ``unknown key 'a.b.c'``, or with ``unknown_at`` ``unknown key 'c' at a.b``;
    a key-less error (the whole document) is named ``root``."""
    msgs = []
    for e in err.errors():
        parts = [str(x) for x in e["loc"] if not str(x).startswith("function-after") and str(x) not in tags]
        loc = ".".join(parts)
        if e["type"] == "extra_forbidden":
            msgs.append(f"unknown key {parts[-1]!r} at {'.'.join(parts[:-1]) or root}" if unknown_at
                        else f"unknown key {loc!r}")
        else:
            msgs.append(f"{loc or root}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(msgs)
