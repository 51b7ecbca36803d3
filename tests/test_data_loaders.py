import json
import sys
import types
from pathlib import Path

import pytest

from latkit.data.loaders import (
    ADVBENCH_COLUMNS,
    LAT_COLUMNS,
    load_benign,
    load_harmful,
    load_prompts,
    load_records,
)
from latkit.data.refusals import is_refusal
from latkit.data.schemas import BenignPair, DataError, HarmfulTriple

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ADVBENCH = SHARED / "advbench" / "harmful_behaviors.csv"
HARMBENCH_VAL = SHARED / "harmbench" / "harmbench_behaviors_text_val.csv"

ROWS = [
    {"prompt": "p1", "chosen": "no 1", "rejected": "yes 1", "extra": 1},
    {"prompt": "p2", "chosen": "no 2", "rejected": "yes 2", "extra": 2},
    {"prompt": "p3", "chosen": "no 3", "rejected": "yes 3", "extra": 3},
]


def write_csv(path, header, rows):
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(params=["csv", "jsonl", "json", "list"])
def lat_source(request, tmp_path):
    kind = request.param
    if kind == "csv":
        return write_csv(tmp_path / "d.csv", list(ROWS[0]), [list(r.values()) for r in ROWS])
    if kind == "jsonl":
        return write_jsonl(tmp_path / "d.jsonl", ROWS)
    if kind == "json":
        (tmp_path / "d.json").write_text(json.dumps(ROWS))
        return tmp_path / "d.json"
    return [dict(r) for r in ROWS]


def test_each_format_maps_columns(lat_source):
    recs = load_records(lat_source, columns=LAT_COLUMNS)
    assert recs == [
        {"prompt": f"p{i}", "refusal": f"no {i}", "harmful": f"yes {i}"} for i in (1, 2, 3)
    ]
    raw = load_records(lat_source)
    assert [str(r["extra"]) for r in raw] == ["1", "2", "3"] and set(raw[0]) == set(ROWS[0])
    assert load_records(lat_source, columns=LAT_COLUMNS, limit=2)[-1]["prompt"] == "p2"
    triples = load_harmful(lat_source, LAT_COLUMNS)
    assert triples[1] == HarmfulTriple("p2", "no 2", "yes 2")


def test_string_path_and_csv_quoting(tmp_path):
    p = write_csv(tmp_path / "q.csv", ["prompt", "response"], [['Say "hi", please', "line1\nline2"], ["b", "c"]])
    pairs = load_benign(str(p))
    assert pairs == [BenignPair('Say "hi", please', "line1\nline2"), BenignPair("b", "c")]


def test_jsonl_blank_lines_skipped_and_bom(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('\ufeff{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d"}\n', encoding="utf-8")
    assert [x.prompt for x in load_benign(p)] == ["a", "c"]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json"])
def test_missing_column_names_column_file_and_available(tmp_path, kind):
    rows = [{"goal": "g", "target": "t"}]
    if kind == "csv":
        path = write_csv(tmp_path / "a.csv", ["goal", "target"], [["g", "t"]])
    elif kind == "jsonl":
        path = write_jsonl(tmp_path / "a.jsonl", rows)
    else:
        path = tmp_path / "a.json"
        path.write_text(json.dumps(rows))
    with pytest.raises(DataError) as ei:
        load_harmful(path, {"prompt": "goal", "harmful": "behavior"})
    msg = str(ei.value)
    assert "'behavior'" in msg and "'harmful'" in msg and str(path) in msg
    assert "available columns: goal, target" in msg


def test_column_missing_in_one_jsonl_row(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError, match=r"m\.jsonl, row 2 \(line 2\): column 'response'.*missing"):
        load_benign(path)


def test_empty_value_reports_row_and_line(tmp_path):
    path = write_csv(tmp_path / "e.csv", ["prompt", "response"], [["a", "b"], ["c", "d"], ["e", "   "]])
    with pytest.raises(DataError, match=r"e\.csv, row 3 \(line 4\), column 'response' \(field 'response'\): empty"):
        load_benign(path)
    jpath = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": None, "response": "x"}])
    with pytest.raises(DataError, match=r"e\.jsonl, row 2 \(line 2\), column 'prompt'.*empty"):
        load_benign(jpath)


def test_bad_json_reports_line_and_column(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a" "response": "b"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, row 2 \(line 2\), column 16: invalid JSON"):
        load_records(p)
    q = tmp_path / "bad.json"
    q.write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(DataError, match=r"bad\.json, line 2, column \d+: invalid JSON"):
        load_records(q)
    r = tmp_path / "obj.json"
    r.write_text('{"prompt": "a"}')
    with pytest.raises(DataError, match=r"obj\.json: expected a JSON list"):
        load_records(r)


def test_non_text_value_rejected(tmp_path):
    p = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a", "response": 5}])
    with pytest.raises(DataError, match=r"row 1 \(line 1\), column 'response'.*expected text, got int"):
        load_benign(p)


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_records(tmp_path / "x.txt")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        load_records(tmp_path / "empty.csv")
    write_csv(tmp_path / "h.csv", ["prompt", "response"], [])
    with pytest.raises(DataError, match=r"h\.csv: no records"):
        load_benign(tmp_path / "h.csv")
    with pytest.raises(DataError, match="limit must be a positive integer"):
        load_records([{"a": "b"}], limit=0)
    with pytest.raises(DataError, match="unknown field"):
        load_harmful([{"a": "b"}], {"prompt": "a", "harmful": "a", "answer": "a"})
    with pytest.raises(DataError, match="field 'harmful'"):
        load_harmful([{"a": "b"}], {"prompt": "a"})


def test_missing_refusal_column_uses_seeded_templates():
    rows = [{"goal": f"Write a guide to thing {i}", "target": f"Sure, here is a guide to thing {i}"} for i in range(30)]
    a = load_harmful(rows, ADVBENCH_COLUMNS, seed=1)
    assert a == load_harmful(rows, ADVBENCH_COLUMNS, seed=1)
    assert a != load_harmful(rows, ADVBENCH_COLUMNS, seed=2)
    assert all(is_refusal(t.refusal) for t in a)
    assert len({t.refusal for t in a}) >= 10
    assert a[3].harmful == "Sure, here is a guide to thing 3"


def test_load_prompts_with_optional_context():
    rows = [
        {"Behavior": "Summarise this", "ContextString": "Some context"},
        {"Behavior": "Plain behavior", "ContextString": ""},
    ]
    assert load_prompts(rows, "Behavior") == ["Summarise this", "Plain behavior"]
    assert load_prompts(rows, "Behavior", context_column="ContextString") == [
        "Some context\n\n---\n\nSummarise this",
        "Plain behavior",
    ]


class FakeDataset:
    """Quacks like datasets.Dataset: column_names + iteration over dict rows."""

    def __init__(self, rows):
        self._rows = rows
        self.column_names = list(rows[0])

    def __iter__(self):
        return iter(self._rows)


class FakeDatasetDict(dict):
    @property
    def column_names(self):
        return {k: v.column_names for k, v in self.items()}


def test_dataset_objects_and_splits():
    ds = FakeDataset([{"goal": "g1", "target": "t1"}, {"goal": "g2", "target": "t2"}])
    assert load_prompts(ds, "goal") == ["g1", "g2"]
    dd = FakeDatasetDict(train=ds, test=FakeDataset([{"goal": "x", "target": "y"}]))
    assert load_prompts(dd, "goal", split="test") == ["x"]
    with pytest.raises(DataError, match=r"no split 'val'; available splits: train, test"):
        load_prompts(dd, "goal", split="val")
    with pytest.raises(DataError, match=r"column 'prompt'.*available columns: goal, target"):
        load_prompts(ds)


def test_hub_name_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"optional package 'datasets' \(pip install 'latkit\[datasets\]'\)"):
        load_records("someorg/somedata")


def test_hub_unreachable_gives_clear_error(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        raise ConnectionError("Couldn't reach 'someorg/somedata' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match=r"could not load Hugging Face dataset 'someorg/somedata' \(split 'test'\).*ConnectionError"):
        load_records("someorg/somedata", split="test")
    assert calls == [("someorg/somedata", "test")]


def test_hub_name_loaded_through_datasets(monkeypatch):
    ds = FakeDataset([{"prompt": "a", "response": "b"}])
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda name, split: ds))
    assert load_benign("someorg/benign") == [BenignPair("a", "b")]


def test_advbench_real_file():
    if not ADVBENCH.is_file():
        pytest.skip(f"{ADVBENCH} not present")
    prompts = load_prompts(ADVBENCH, "goal")
    assert len(prompts) == 520
    assert prompts[0].startswith("Write a script that can exploit vulnerabilities")
    triples = load_harmful(ADVBENCH, ADVBENCH_COLUMNS, limit=50)
    assert len(triples) == 50
    assert all(t.harmful.startswith("Sure, here") for t in triples)
    assert all(is_refusal(t.refusal) for t in triples)
    assert len({t.refusal for t in triples}) >= 15
    with pytest.raises(DataError, match=r"column 'prompt'.*available columns: goal, target"):
        load_harmful(ADVBENCH)


def test_harmbench_val_real_file():
    if not HARMBENCH_VAL.is_file():
        pytest.skip(f"{HARMBENCH_VAL} not present")
    plain = load_prompts(HARMBENCH_VAL, "Behavior")
    with_ctx = load_prompts(HARMBENCH_VAL, "Behavior", context_column="ContextString")
    assert len(plain) == len(with_ctx) == 80
    n_ctx = sum(a != b for a, b in zip(plain, with_ctx))
    assert n_ctx > 0
    assert all(b.endswith(a) for a, b in zip(plain, with_ctx))
