"""One error base: what the CLI reports as one line is a LatkitError (and still the builtin it was)."""
import pytest

from latkit.adversary.hooks import PerturbationError
from latkit.attacks.base import AttackError
from latkit.data.collator import CollateError
from latkit.data.schemas import DataError
from latkit.evaluation.schema import SuiteError
from latkit.errors import EXPECTED, LatkitError
from latkit.models.adapter import AdapterError
from latkit.models.chat import ChatTemplateError
from latkit.models.loading import ModelLoadError
from latkit.train.checkpoint import CheckpointError
from latkit.train.recipe import RecipeError
from latkit.train.trackers import TrackerError
from latkit.train.trainer import NonFiniteError, TrainError


@pytest.mark.parametrize("cls, builtin", [
    (RecipeError, ValueError), (DataError, ValueError), (CollateError, ValueError), (ChatTemplateError, ValueError),
    (AdapterError, ValueError), (ModelLoadError, RuntimeError), (TrainError, RuntimeError),
    (NonFiniteError, RuntimeError), (TrackerError, RuntimeError), (PerturbationError, RuntimeError),
    (CheckpointError, RuntimeError), (AttackError, ValueError), (SuiteError, ValueError),
])
def test_expected_errors_share_one_base(cls, builtin):
    assert issubclass(cls, LatkitError) and issubclass(cls, builtin)
    assert isinstance(cls("x"), EXPECTED)


def test_other_errors_are_unexpected():
    assert not isinstance(ValueError("x"), EXPECTED) and not isinstance(KeyError("x"), EXPECTED)
    assert isinstance(FileNotFoundError("x"), EXPECTED)


def test_cli_reports_a_latkit_error_as_one_line(tmp_path, capsys):
    from latkit.cli import main

    bad = tmp_path / "r.yaml"
    bad.write_text("train: {steps: 0}\n")
    assert main(["train", str(bad), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latkit: error: invalid recipe: train.steps")
