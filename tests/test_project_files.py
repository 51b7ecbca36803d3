"""Project hygiene: licence, citation, changelog, py.typed, declared dependencies = imported ones,
an extra for every optional integration, help text for every CLI option, --version, -v anywhere."""
import argparse
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import latkit
from latkit.cli import build_parser, main
from latkit.cliutil import iter_parsers

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "latkit"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMPORT_NAMES = {"pyyaml": "yaml"}


def _src_text() -> str:
    return "\n".join(p.read_text() for p in SRC.rglob("*.py"))


def test_licence_citation_changelog_typed():
    assert "Apache License" in (REPO / "LICENSE").read_text() and PYPROJECT["project"]["license"] == "Apache-2.0"
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == latkit.__version__
    ids = {i["value"] for r in cff["references"] for i in r.get("identifiers", [])}
    assert {"arXiv:2407.15549", "arXiv:2403.05030"} <= ids  # targeted and untargeted LAT
    assert f"## [{latkit.__version__}]" in (REPO / "CHANGELOG.md").read_text()
    assert (SRC / "py.typed").exists() and "py.typed" in str(PYPROJECT["tool"]["setuptools"]["package-data"])


def test_every_dependency_is_imported_and_every_integration_has_an_extra():
    text = _src_text()
    for dep in PYPROJECT["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[ ]", dep)[0].lower()
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {module}\b", text, re.M), f"dependency {name} is never imported"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in {"lm_eval": "lm-eval", "datasets": "datasets", "wandb": "wandb",
                          "tensorboard": "tensorboard"}.items():
        assert module in text and extra in extras, (module, extra)
        assert any(extra in d for d in extras["all"])


def test_every_option_has_help():
    missing = []
    for name, p in iter_parsers(build_parser()):
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if a.help is None:
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, missing


def test_version_and_verbose_anywhere(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"latkit {latkit.__version__}"
    parser = build_parser()
    for argv in (["-v", "info", "m"], ["info", "m", "-v"], ["info", "-v", "m"]):
        assert parser.parse_args(argv).verbose is True
    assert not getattr(parser.parse_args(["info", "m"]), "verbose", False)
    a = parser.parse_args(["unlearn", "facts", "-v", "--output", "d"])
    assert a.verbose is True and a.out == "d"


def test_one_output_spelling_with_a_hidden_deprecated_alias(capsys):
    parser = build_parser()
    for cmd in (["train", "r"], ["backdoor", "data", "-m", "x"], ["unlearn", "facts"], ["export", "r"]):
        sub = dict(iter_parsers(parser))[" ".join(c for c in cmd if not c.startswith("-") and c not in ("r", "x"))]
        helptext = sub.format_help()
        assert "--output" in helptext and "--out " not in helptext and "--out," not in helptext, cmd
        new, old = parser.parse_args(cmd + ["--output", "D"]), parser.parse_args(cmd + ["--out", "D"])
        assert vars(new) == vars(old)
    for name, p in iter_parsers(parser):  # nowhere is --out the visible spelling
        for a in p._actions:
            assert not ("--out" in a.option_strings and a.help is not argparse.SUPPRESS), name
    from benchmarks.common import benchmark_parser

    bp = benchmark_parser("b", "d", scales="cpu", model_help="m")
    assert bp.parse_args(["--out", "x"]).out == bp.parse_args(["--output", "x"]).out == "x"
    assert "--out " not in bp.format_help()


def test_benchmarks_record_the_cpu():
    import torch

    from benchmarks.common import machine

    m = machine()
    assert m["torch"] == torch.__version__ and m["cpu_threads"] >= 1
    if not torch.cuda.is_available():
        assert m["cpu"]["model"] and m["cpu"]["capability"] and isinstance(m["cpu"]["fast_bf16"], bool)


def test_readme_uses_one_output_spelling():
    for doc in [REPO / "README.md", *REPO.glob("benchmarks/**/README.md"), *REPO.glob("docs/*.md")]:
        assert not re.search(r"--out\b(?!put)", doc.read_text()), doc
