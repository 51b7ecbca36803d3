import re

import pytest

from latkit.data.schemas import DataError
from latkit.evaluation.utility import format_question, mmlu_prompt
from latkit.unlearning import TOPICS, fact_corpus, fact_mcqs, fictional_facts, split_forget_retain

KIND_PATTERNS = {
    "person": r"[A-Z][a-z]+ [A-Z][a-z]+",
    "year": r"1[1-8]\d\d",
    "team": r"[A-Z][a-z]+ [A-Z][a-z]+s",
    "venue": r"[A-Z][a-z]+ (Park|Arena|Field|Grounds)",
    "substance": r"[A-Z][a-z]+(ite|ine|ose|ane)",
    "river": r"the [A-Z][a-z]+ River",
    "hill": r"Mount [A-Z][a-z]+",
}


@pytest.fixture(scope="module")
def facts():
    return fictional_facts(n_per_topic=9, seed=0)


def test_deterministic_per_seed(facts):
    assert fictional_facts(n_per_topic=9, seed=0) == facts
    other = fictional_facts(n_per_topic=9, seed=1)
    assert [f.answer for f in other] != [f.answer for f in facts]
    assert [f.id for f in other] == [f.id for f in facts]


def test_topics_ids_and_uniqueness(facts):
    assert len(TOPICS) >= 4
    assert [f.topic for f in facts] == [t for t in TOPICS for _ in range(9)]
    assert len({f.id for f in facts}) == len(facts)
    assert len({f.answer for f in facts}) == len(facts)  # unique answers across the corpus
    assert len({f.question for f in facts}) == len(facts)
    for topic in TOPICS:
        assert len({f.relation for f in facts if f.topic == topic}) >= 3


def test_distractors_distinct_and_of_the_answer_type(facts):
    answers_by_kind = {}
    for f in facts:
        answers_by_kind.setdefault(f.answer_kind, set()).add(f.answer)
    for f in facts:
        assert len(f.distractors) == 3 and len(set(f.distractors)) == 3
        assert f.answer not in f.distractors
        pattern = KIND_PATTERNS[f.answer_kind]
        for value in (f.answer, *f.distractors):
            assert re.fullmatch(pattern, value), (f.answer_kind, value)
        for kind, answers in answers_by_kind.items():  # never another kind's answer
            assert kind == f.answer_kind or not set(f.distractors) & answers
        if len(answers_by_kind[f.answer_kind]) >= 4:  # enough answers of the kind: no fresh, unseen names
            assert set(f.distractors) <= answers_by_kind[f.answer_kind]


def test_mcq_answer_index_and_texts(facts):
    items = fact_mcqs(facts)
    assert len(items) == len(facts)
    positions = set()
    for f, it in zip(facts, items):
        assert it.choices[it.answer] == f.answer == f.choices[f.answer_index]
        assert sorted(it.choices) == sorted((f.answer, *f.distractors))
        assert it.subject == f.topic_title and it.question == f.question
        assert f.answer not in f.question
        assert len(set(f.statements)) >= 3
        assert all(f.answer.lower() in s.lower() and f.subject in s for s in f.statements)
        positions.add(it.answer)
    assert positions == {0, 1, 2, 3}
    text = mmlu_prompt(items[0])
    assert format_question(items[0]) in text and text.endswith("D. " + items[0].choices[3] + "\nAnswer:")


def test_corpus(facts):
    assert len(fact_corpus(facts)) == sum(len(f.statements) for f in facts)
    assert fact_corpus(facts[:2], paraphrases=1) == [facts[0].statements[0], facts[1].statements[0]]
    with pytest.raises(ValueError):
        fact_corpus(facts, paraphrases=0)


def test_unknown_topic_and_bad_size():
    with pytest.raises(DataError, match="available topics"):
        fictional_facts(2, topics=["chemistry"])
    with pytest.raises(ValueError):
        fictional_facts(0)
    assert {f.topic for f in fictional_facts(2, topics=["scientist"])} == {"scientist"}


def test_split_is_disjoint_and_relearn_never_shows_eval_facts(facts):
    split = split_forget_retain(facts, "scientist", relearn_fraction=0.5, seed=3)
    ids = lambda part: {f.id for f in part}  # noqa: E731
    assert ids(split.forget) == {f.id for f in facts if f.topic == "scientist"}
    assert ids(split.retain) == {f.id for f in facts if f.topic != "scientist"}
    assert ids(split.relearn) | ids(split.forget_eval) == ids(split.forget)
    assert not ids(split.relearn) & ids(split.forget_eval)
    assert not ids(split.forget) & ids(split.retain)
    assert (len(split.relearn), len(split.forget_eval)) == (4, 5) or (len(split.relearn), len(split.forget_eval)) == (5, 4)
    relearn_text = " ".join(fact_corpus(split.relearn))
    assert not any(f.answer in relearn_text for f in split.forget_eval)
    assert split_forget_retain(facts, "scientist", seed=3) == split
    assert split_forget_retain(facts, "scientist", seed=4).relearn != split.relearn
    two = split_forget_retain(facts, ["scientist", "sports_league"], relearn_fraction=0.0)
    assert len(two.forget) == 18 and not two.relearn and two.forget_eval == two.forget


@pytest.mark.parametrize("n", [9, 24])
def test_forget_eval_distractors_are_never_relearn_answers(n):
    facts = fictional_facts(n_per_topic=n, seed=0)
    split = split_forget_retain(facts, "scientist", relearn_fraction=0.5, seed=0)
    relearn_answers = {f.answer for f in split.relearn}
    old = {f.id: f for f in facts}
    assert any(set(old[f.id].distractors) & relearn_answers for f in split.forget_eval)  # the case being fixed
    for f in split.forget_eval:
        if len([g for g in facts if g.answer_kind == f.answer_kind and g.answer not in relearn_answers]) >= 4:
            assert not set(f.distractors) & relearn_answers, f
        assert len(set(f.distractors)) == 3 and f.answer not in f.distractors
        assert all(re.fullmatch(KIND_PATTERNS[f.answer_kind], d) for d in f.distractors)
        assert (f.answer, f.answer_index, f.statements, f.cloze) == (old[f.id].answer, old[f.id].answer_index,
                                                                      old[f.id].statements, old[f.id].cloze)
    # the implant text is unchanged; forget holds the same fact objects as its two parts
    assert fact_corpus(split.forget) == fact_corpus([old[f.id] for f in split.forget])
    parts = {f.id: f for f in split.relearn + split.forget_eval}
    assert all(parts[f.id] == f for f in split.forget)
    assert all(f == old[f.id] for f in split.relearn + split.retain)


def test_split_errors(facts):
    with pytest.raises(DataError, match="country_history"):
        split_forget_retain(facts, "astronomy")
    with pytest.raises(ValueError, match="relearn_fraction"):
        split_forget_retain(facts, "scientist", relearn_fraction=1.5)
