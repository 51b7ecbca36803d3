"""The errors latkit reports as one clear line (the CLI exits with code 2 on them)."""
from __future__ import annotations


def _expected() -> tuple[type[BaseException], ...]:
    from latkit.adversary.hooks import PerturbationError
    from latkit.data.collator import CollateError
    from latkit.data.schemas import DataError
    from latkit.models.adapter import AdapterError
    from latkit.models.chat import ChatTemplateError
    from latkit.models.loading import ModelLoadError
    from latkit.train.checkpoint import CheckpointError
    from latkit.train.recipe import RecipeError
    from latkit.train.trackers import TrackerError
    from latkit.train.trainer import TrainError

    return (RecipeError, DataError, CollateError, ChatTemplateError, ModelLoadError, AdapterError,
            TrainError, TrackerError, PerturbationError, FileNotFoundError, CheckpointError)


def __getattr__(name):
    if name == "EXPECTED":
        return _expected()
    raise AttributeError(name)
