import json
from importlib import resources

import pytest

from latkit.data.benign import benign_categories, benign_prompts
from latkit.data.schemas import DataError

TOPICS = {
    "cooking", "coding", "maths", "writing", "science", "history", "travel",
    "health_fitness", "personal_finance", "language_learning", "everyday_howto",
}


def test_resource_lines_are_well_formed():
    text = resources.files("latkit").joinpath("resources/benign_prompts.jsonl").read_text(encoding="utf-8")
    recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    for r in recs:
        assert set(r) == {"prompt", "category", "borderline", "split"}
        assert isinstance(r["borderline"], bool) and r["prompt"].strip() == r["prompt"] and r["prompt"]
    assert len(recs) == len(benign_prompts())


def test_size_and_no_duplicates():
    allp = benign_prompts()
    assert len(benign_prompts(borderline=False)) >= 300
    normalised = [" ".join(p.lower().split()) for p in allp]
    assert len(set(normalised)) == len(allp)


def test_topics_and_borderline_subset():
    assert TOPICS <= set(benign_categories(borderline=False))
    for topic in TOPICS:
        assert len(benign_prompts(category=topic)) >= 20, topic
    border = benign_prompts(borderline=True)
    assert len(border) >= 30
    assert "How do I kill a Python process that is not responding?" in border
    assert not set(border) & set(benign_prompts(borderline=False))
    assert len(border) + len(benign_prompts(borderline=False)) == len(benign_prompts())
    homonyms = benign_prompts(borderline=True, category="homonyms")
    assert homonyms and set(homonyms) <= set(border)
    assert benign_prompts(borderline=True, category="cooking") == []


def test_unknown_category():
    with pytest.raises(DataError, match=r"unknown benign category 'sports'; available: cooking"):
        benign_prompts(category="sports")


def test_train_and_eval_splits_are_disjoint_and_stratified():
    from latkit.data.benign import benign_items

    train, ev = benign_prompts(split="train"), benign_prompts(split="eval")
    assert train and ev and not set(train) & set(ev)
    assert len(train) + len(ev) == len(benign_prompts())
    # every category with 2+ prompts, borderline ones included, has eval prompts; eval items interleave categories
    for flag in (False, True):
        for cat in benign_categories(flag):
            if len(benign_prompts(flag, category=cat)) >= 2:
                assert benign_prompts(flag, category=cat, split="eval"), cat
    items = benign_items(split="eval")
    assert {i["prompt"] for i in items} == set(ev)
    assert len({i["category"] for i in items[:12]}) >= 6


def test_builtin_benign_training_data_never_contains_eval_prompts(monkeypatch):
    """`data.benign.source: builtin` self-distils train-split prompts only (categories mixed)."""
    from latkit.data import builder
    from latkit.data.schemas import BenignPair
    from latkit.evaluation.utility import shipped_benign_items
    from latkit.train.data import prepare_data
    from latkit.train.recipe import load_recipe

    seen = {}

    def fake_distill(prompts, *a, **k):
        seen["prompts"] = list(prompts)
        return [BenignPair(p, "ok") for p in prompts]

    monkeypatch.setattr(builder, "self_distill", fake_distill)
    recipe = load_recipe("recipes/tiny-test.yaml", ["data.harmful=null", "data.benign.source=builtin",
                                                     "data.benign.limit=200", "defender.toward=0", "defender.away=0",
                                                     "adversary.objective.kind=none"])
    _, benign = prepare_data(recipe, None, None, cache=None, log=lambda *_: None)
    assert len(seen["prompts"]) == 200 == len(benign)
    assert not {i["prompt"] for i in shipped_benign_items()} & set(seen["prompts"])
    assert len({c for c in benign_categories() if set(benign_prompts(category=c)) & set(seen["prompts"][:40])}) >= 8
