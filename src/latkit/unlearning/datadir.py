"""Knowledge (and, optionally, the relearning curve) of a split directory written by
``latkit unlearn facts --output DIR``: what ``latkit unlearn eval`` reports. Sits above
:mod:`latkit.unlearning.evaluate` (accuracy) and :mod:`latkit.unlearning.relearn` (the attack),
which do not import each other's callers."""
from __future__ import annotations

from pathlib import Path

from latkit.data.schemas import DataError
from latkit.data.text import load_texts
from latkit.unlearning.data import TEXT_FILES, load_mcq, split_files
from latkit.unlearning.evaluate import Scoring, mcq_accuracy
from latkit.unlearning.relearn import relearn_attack


def evaluate_data_dir(model, tokenizer, data_dir: str | Path, *, scoring: Scoring = "cloze", batch_size: int = 8,
                      relearn=None, attacks: dict | None = None) -> dict:
    """Knowledge of the questions in a split directory (``latkit unlearn facts --output DIR``) and, with a
    :class:`~latkit.unlearning.relearn.RelearnConfig` as ``relearn``, the relearning curve.

    Returns ``{"accuracy": {part: mcq_accuracy(...)}, "relearn": RelearnResult.to_dict() | None}``
    with parts ``forget``, ``retain``, ``forget_eval`` (those whose file is present). The
    relearning attack trains on the texts ``relearn.texts`` names (``relearn.jsonl`` by default) and
    is measured on ``mcq_forget_eval.jsonl``; ``attacks`` (name: :class:`RelearnConfig`) are more
    relearning attacks, reported under ``"attacks"``.
    """
    files = split_files(data_dir)
    items = {k[len("mcq_"):]: load_mcq(v) for k, v in files.items() if k.startswith("mcq_")}
    out: dict = {"scoring": scoring, "accuracy": {p: mcq_accuracy(model, tokenizer, v, scoring=scoring,
                                                                  batch_size=batch_size) for p, v in items.items()},
                 "relearn": None}
    if relearn is not None:
        out["relearn"] = _attack(model, tokenizer, data_dir, files, items, relearn, scoring)
    if attacks:
        out["attacks"] = {name: _attack(model, tokenizer, data_dir, files, items, c, scoring)
                          for name, c in attacks.items()}
    return out


def attack_texts(data_dir: str | Path, config, files: dict[str, Path] | None = None) -> list[str]:
    """The texts a relearning attack (:class:`RelearnConfig`) trains on: a text split of ``data_dir``
    (``relearn``, ``retain``, ``forget``) or a ``.jsonl`` path, cut to ``config.max_texts``."""
    files = split_files(data_dir) if files is None else files
    if config.texts in TEXT_FILES:
        if config.texts not in files:
            raise DataError(f"the relearning attack trains on {TEXT_FILES[config.texts]}, which {data_dir} lacks")
        path = files[config.texts]
    else:
        path = Path(config.texts).expanduser()
        if not path.is_file():
            raise DataError(f"relearning texts {config.texts!r}: neither a split ({', '.join(TEXT_FILES)}) "
                            "nor an existing .jsonl file")
    texts = load_texts(path)
    return texts[: config.max_texts] if config.max_texts else texts


def _attack(model, tokenizer, data_dir, files, items, config, scoring) -> dict:
    if "forget_eval" not in items:
        raise DataError(f"the relearning attack is measured on mcq_forget_eval.jsonl, which {data_dir} lacks")
    res = relearn_attack(model, tokenizer, attack_texts(data_dir, config, files), items["forget_eval"],
                         config.model_copy(update={"scoring": scoring}))
    return res.to_dict() | {"texts": config.texts}
