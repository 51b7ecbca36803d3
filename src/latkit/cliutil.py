"""Small argparse helpers shared by every latkit command line (and the benchmarks'): one spelling of the
output option, ``-v/--verbose`` after any sub-command."""
from __future__ import annotations

import argparse


def add_output_argument(parser: argparse.ArgumentParser, *, help: str, required: bool = False,
                        default=None, dest: str = "output") -> None:
    """``--output/-o DIR``; the old ``--out`` keeps working as a hidden, deprecated alias."""
    target = parser.add_mutually_exclusive_group(required=True) if required else parser
    kw = {} if required else {"default": default}
    target.add_argument("--output", "-o", dest=dest, metavar="PATH", help=help, **kw)
    target.add_argument("--out", dest=dest, help=argparse.SUPPRESS, **kw)


def add_verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v/--verbose`` on ``parser`` and on every (nested) sub-command parser."""
    seen = set()

    def walk(p):
        if id(p) in seen:
            return
        seen.add(id(p))
        if "--verbose" not in p._option_string_actions:
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="show debug logs and full tracebacks")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    walk(child)

    walk(parser)


def iter_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """``(command path, parser)`` for ``parser`` and every nested sub-command parser."""
    yield prefix or parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from iter_parsers(child, f"{prefix} {name}".strip())
