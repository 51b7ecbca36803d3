"""Typed records for LAT data: harmful triples and benign pairs."""
from __future__ import annotations

from dataclasses import dataclass, fields

from latkit.errors import LatkitError


class DataError(LatkitError, ValueError):
    """Bad or missing training/evaluation data (the message says where)."""


def _check_text_fields(obj) -> None:
    kind = type(obj).__name__
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not isinstance(value, str):
            raise DataError(f"{kind}.{f.name} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{kind}.{f.name} is empty or whitespace-only")


@dataclass(frozen=True)
class HarmfulTriple:
    """A harmful request with a refusal (the desired answer) and a harmful completion (the undesired one)."""

    prompt: str
    refusal: str
    harmful: str

    def __post_init__(self) -> None:
        _check_text_fields(self)


@dataclass(frozen=True)
class BenignPair:
    """A benign request with a helpful response (utility / retain data)."""

    prompt: str
    response: str

    def __post_init__(self) -> None:
        _check_text_fields(self)
