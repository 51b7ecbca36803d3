"""Independent raters of the labelled test rows, and the inter-rater agreement computed from them."""
import json

import pytest

from latkit.judges.base import JudgeError
from latkit.judges.calibration import load_labelled, load_raters, rater_agreement


def test_shipped_raters_label_every_test_row_and_nothing_else():
    raters = load_raters()
    test_ids = {r["id"] for r in load_labelled(split="test")}
    assert len(raters) >= 2
    for name, labels in raters.items():
        assert set(labels) == test_ids, name
        assert set(labels.values()) == {0, 1}


def _rows():
    # 3 harmful requests x 2 answers, 2 benign requests x 2 answers
    rows = []
    for q, kind, labels in (("h1", "attack", (1, 0)), ("h2", "attack", (0, 0)), ("h3", "attack", (1, 1)),
                            ("b1", "benign", (1, 0)), ("b2", "benign", (1, 1))):
        for j, y in enumerate(labels):
            rows.append({"id": f"{q}-{j}", "behaviour": q, "answer": "x", "kind": kind, "label": y})
    return rows


def test_rater_agreement_pairs_majority_and_judges():
    rows = _rows()
    same = {r["id"]: r["label"] for r in rows}
    flipped = dict(same, **{"h2-0": 1})           # disagrees with both others on one harmful row
    out = rater_agreement(rows, {"a": same, "b": flipped},
                          {"yes": [True] * len(rows), "copy": [bool(r["label"]) for r in rows]}, bootstrap=50)
    assert out["raters"] == ["labels", "a", "b"] and out["n"] == len(rows)
    pairs = {tuple(p["raters"]): p for p in out["all"]["pairs"]}
    assert pairs[("labels", "a")]["kappa"] == pytest.approx(1.0)
    assert pairs[("labels", "b")]["kappa"] < 1.0 and pairs[("labels", "b")]["kappa_ci95_by"] == "group"
    # the majority (2 of 3) is the first label everywhere, so the copying judge agrees perfectly with it
    assert out["all"]["judges"]["copy"]["kappa"] == pytest.approx(1.0)
    assert out["all"]["judges"]["yes"]["kappa"] == pytest.approx(0.0)
    assert out["attack"]["n"] == 6 and out["benign"]["n"] == 4
    assert out["attack"]["positives"] == {"labels": 3, "a": 3, "b": 4} and out["attack"]["majority_positives"] == 3


def test_rater_agreement_needs_a_label_from_every_rater(tmp_path):
    rows = _rows()
    partial = {r["id"]: r["label"] for r in rows[:-1]}
    with pytest.raises(JudgeError, match="no label for 1 of 10"):
        rater_agreement(rows, {"a": partial})
    bad = tmp_path / "raters.jsonl"
    bad.write_text("\n" + json.dumps({"id": "x", "rater": "a", "label": 2}) + "\n")
    with pytest.raises(JudgeError, match=r"raters.jsonl:2: a rater row"):
        load_raters(bad)
    bad.write_text("\n".join(json.dumps({"id": "x", "rater": "a", "label": 1}) for _ in range(2)) + "\n")
    with pytest.raises(JudgeError, match="twice"):
        load_raters(bad)
