"""Knowledge (and, optionally, the relearning curve) of a split directory written by
``latkit unlearn facts --output DIR``: what ``latkit unlearn eval`` reports. Sits above
:mod:`latkit.unlearning.evaluate` (accuracy) and :mod:`latkit.unlearning.relearn` (the attack),
which do not import each other's callers."""
from __future__ import annotations

from pathlib import Path

from latkit.data.schemas import DataError
from latkit.data.text import load_texts
from latkit.unlearning.data import load_mcq, split_files
from latkit.unlearning.evaluate import Scoring, mcq_accuracy
from latkit.unlearning.relearn import relearn_attack


def evaluate_data_dir(model, tokenizer, data_dir: str | Path, *, scoring: Scoring = "cloze", batch_size: int = 8,
                      relearn=None) -> dict:
    """Knowledge of the questions in a split directory (``latkit unlearn facts --output DIR``) and, with a
    :class:`~latkit.unlearning.relearn.RelearnConfig` as ``relearn``, the relearning curve.

    Returns ``{"accuracy": {part: mcq_accuracy(...)}, "relearn": RelearnResult.to_dict() | None}``
    with parts ``forget``, ``retain``, ``forget_eval`` (those whose file is present). The
    relearning attack trains on ``relearn.jsonl`` and is measured on ``mcq_forget_eval.jsonl``.
    """
    files = split_files(data_dir)
    items = {k[len("mcq_"):]: load_mcq(v) for k, v in files.items() if k.startswith("mcq_")}
    out: dict = {"scoring": scoring, "accuracy": {p: mcq_accuracy(model, tokenizer, v, scoring=scoring,
                                                                  batch_size=batch_size) for p, v in items.items()},
                 "relearn": None}
    if relearn is not None:
        missing = [f for f in ("relearn", "mcq_forget_eval") if f not in files]
        if missing:
            raise DataError(f"the relearning attack needs {' and '.join(m + '.jsonl' for m in missing)} in {data_dir}")
        res = relearn_attack(model, tokenizer, load_texts(files["relearn"]), items["forget_eval"],
                             relearn.model_copy(update={"scoring": scoring}))
        out["relearn"] = res.to_dict()
    return out
