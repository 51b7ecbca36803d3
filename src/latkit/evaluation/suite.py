"""Evaluation suites: compatibility facade over :mod:`~latkit.evaluation.schema` (the YAML schema),
:mod:`~latkit.evaluation.records` (attack outputs as records) and :mod:`~latkit.evaluation.runner`
(the runner, :func:`run_suite`)."""
from __future__ import annotations

from latkit.evaluation.records import SPLIT_KEYS, RecordError  # noqa: F401
from latkit.evaluation.runner import (  # noqa: F401
    GENERATIONS_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    ModelSpec,
    SuiteRunner,
    expand_attacks,
    model_specs,
    resolve_attack,
    run_suite,
)
from latkit.evaluation.schema import *  # noqa: F401,F403
from latkit.evaluation.schema import SUITES_DIR, SuiteError, builtin_suites, load_suite  # noqa: F401
