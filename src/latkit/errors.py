"""The errors latkit reports as one clear line (the CLI exits with code 2 on them).

Every such error derives from :class:`LatkitError` (and from the builtin it used to be, so
``except ValueError`` keeps catching a ``DataError``). This module imports nothing of latkit:
it is the bottom floor every package may import.
"""
from __future__ import annotations


class LatkitError(Exception):
    """Bad input or a run that cannot go on: reported as one line, exit code 2."""


# what the CLI reports as one line (exit code 2); anything else is "unexpected"
EXPECTED: tuple[type[BaseException], ...] = (LatkitError, FileNotFoundError)
