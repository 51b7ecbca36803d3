"""User data for unlearning: multiple-choice sets and fact splits (text corpora and their batches,
:func:`~latkit.data.text.load_texts` and :class:`~latkit.data.text.TextCollator`, live in ``latkit.data``).

* :func:`load_mcq`: 4-way questions from ``.csv`` / ``.jsonl`` / ``.json`` with the
  choices as ``A``–``D`` columns or one ``choices`` list, the answer as a letter or
  a 0-based index, and optionally a ``cloze`` column (see :class:`KnowledgeItem`);
* :func:`save_split` / :func:`split_files`: a fact split as the JSONL files that
  ``latkit train`` unlearning recipes, ``latkit unlearn implant`` and
  ``latkit unlearn eval`` read.

Every problem is a :class:`~latkit.data.schemas.DataError` that names the source,
the row and the column (and lists the available columns when one is missing).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from latkit.data.loaders import Source, load_records
from latkit.data.jsonl import write_jsonl
from latkit.data.schemas import DataError
from latkit.evaluation.datasets import MCQItem

LETTERS = "ABCD"


@dataclass(frozen=True)
class KnowledgeItem(MCQItem):
    """An :class:`~latkit.evaluation.datasets.MCQItem` that can also be scored as a cloze.

    ``cloze`` is the start of a sentence that ``" " + choice`` completes (e.g.
    ``"The founder of the city of Quendrath was"``); empty, cloze scoring falls
    back to ``question + "\nAnswer:"`` (see :func:`latkit.unlearning.evaluate.cloze_context`).
    """

    cloze: str = ""

    def record(self, **extra) -> dict:
        """The item as a JSON-able row that :func:`load_mcq` reads back (``extra`` fields first)."""
        return {**extra, "question": self.question, "choices": list(self.choices), "answer": self.answer,
                "subject": self.subject, "cloze": self.cloze}


def _parse_answer(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        idx = value
    elif isinstance(value, str) and value.strip().upper() in tuple(LETTERS):
        return LETTERS.index(value.strip().upper())
    elif isinstance(value, str) and value.strip().isdigit():
        idx = int(value.strip())
    else:
        raise DataError(f"{where}: answer must be a letter A-D or an index 0-3, got {value!r}")
    if not 0 <= idx < 4:
        raise DataError(f"{where}: answer index {idx} out of range (0-3)")
    return idx


def _parse_choices(value: Any, where: str) -> list:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: choices are not a valid JSON list ({exc.msg})") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: choices must be a list of 4 texts, got {type(value).__name__}")
    return list(value)


def load_mcq(
    source: Source,
    *,
    question: str = "question",
    choices: str = "choices",
    choice_columns: Sequence[str] = ("A", "B", "C", "D"),
    answer: str = "answer",
    subject_column: str = "subject",
    subject: str = "",
    cloze: str = "cloze",
    limit: int | None = None,
) -> list[MCQItem]:
    """4-way multiple-choice items for :func:`latkit.unlearning.evaluate.mcq_accuracy`.

    The choices are the ``choices`` column (a list; in a CSV a JSON-encoded list)
    if there is one, else the four ``choice_columns``. ``answer`` is a letter
    (``"B"``) or a 0-based index (``1`` or ``"1"``). The subject is the
    ``subject_column`` where present, else ``subject``. A row with a non-empty
    ``cloze`` column becomes a :class:`KnowledgeItem` carrying that cloze context.
    """
    if len(choice_columns) != 4:
        raise DataError(f"choice_columns must name 4 columns, got {list(choice_columns)!r}")
    records = load_records(source, limit=limit)
    desc = str(source) if isinstance(source, (str, Path)) else "records list"
    header = list(dict.fromkeys(k for r in records for k in r))
    use_list = choices in header
    needed = [question, answer] + ([choices] if use_list else list(choice_columns))
    missing = [c for c in needed if c not in header]
    if missing:
        what = f"choices as a {choices!r} list or columns {', '.join(choice_columns)}"
        raise DataError(f"{desc}: column(s) {', '.join(map(repr, missing))} not found ({what}); "
                        f"available columns: {', '.join(map(str, header))}")
    items = []
    for i, rec in enumerate(records, start=1):
        where = f"{desc}, row {i}"
        q = rec.get(question)
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}, column {question!r}: empty or missing question")
        opts = _parse_choices(rec.get(choices), where) if use_list else [rec.get(c) for c in choice_columns]
        if len(opts) != 4:
            raise DataError(f"{where}: expected 4 choices, got {len(opts)}")
        for L, opt in zip(LETTERS, opts):
            if opt is None or not str(opt).strip():
                raise DataError(f"{where}: choice {L} is empty")
        subj = rec.get(subject_column) or subject
        fields = (q, tuple(str(o) for o in opts), _parse_answer(rec.get(answer), f"{where}, column {answer!r}"),
                  str(subj))
        context = rec.get(cloze)
        if context is not None and not isinstance(context, str):
            raise DataError(f"{where}, column {cloze!r}: the cloze context must be a text")
        items.append(KnowledgeItem(*fields, cloze=context.rstrip()) if context and context.strip()
                     else MCQItem(*fields))
    return items


#: The files of a fact split directory (``latkit unlearn facts --output DIR``): texts, then questions.
TEXT_FILES = {"forget": "forget.jsonl", "retain": "retain.jsonl", "relearn": "relearn.jsonl"}
MCQ_FILES = {"forget": "mcq_forget.jsonl", "retain": "mcq_retain.jsonl", "forget_eval": "mcq_forget_eval.jsonl"}
SPLIT_FILE = "split.json"


def save_split(split, out_dir: str | Path, *, paraphrases: int | None = None, meta: Mapping | None = None) -> dict:
    """Write a :class:`~latkit.unlearning.facts.ForgetRetainSplit` into ``out_dir``; return the ``split.json`` record.

    Text corpora (one ``{"text", "fact"}`` row per statement): ``forget.jsonl``,
    ``retain.jsonl`` and ``relearn.jsonl``; questions (:meth:`KnowledgeItem.record`
    plus ``id`` and ``topic``): ``mcq_forget.jsonl``, ``mcq_retain.jsonl`` and
    ``mcq_forget_eval.jsonl``; ``split.json``: ``meta``, the forget topics, the
    fact ids of each part and the file names. ``split.json`` is written last, so
    its presence means the directory is complete.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = split.parts()
    for part, name in TEXT_FILES.items():
        write_jsonl(out / name, [{"text": s, "fact": f.id} for f in parts[part] for s in f.statements[:paraphrases]])
    for part, name in MCQ_FILES.items():
        write_jsonl(out / name, [f.mcq().record(id=f.id, topic=f.topic) for f in parts[part]])
    record = {**dict(meta or {}), "forget_topics": list(split.forget_topics), "paraphrases": paraphrases,
              "counts": {p: len(v) for p, v in parts.items()}, "ids": {p: [f.id for f in v] for p, v in parts.items()},
              "files": {**TEXT_FILES, **{f"mcq_{k}": v for k, v in MCQ_FILES.items()}}}
    tmp = out / (SPLIT_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(out / SPLIT_FILE)
    return record


def split_files(data_dir: str | Path) -> dict[str, Path]:
    """The split files present in ``data_dir`` as ``{"forget": …, "mcq_forget": …, …}``; none is an error."""
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise DataError(f"data directory not found: {d}")
    named = {**TEXT_FILES, **{f"mcq_{k}": v for k, v in MCQ_FILES.items()}}
    found = {k: d / v for k, v in named.items() if (d / v).is_file()}
    if not any(k.startswith("mcq_") for k in found):
        raise DataError(f"{d} holds none of {', '.join(MCQ_FILES.values())} (write them with `latkit unlearn facts`)")
    return found
