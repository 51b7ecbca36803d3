"""One record for a harmful request: the attacks and the evaluation datasets share it."""
import dataclasses

import pytest

from latkit.attacks import Behaviour as AttackBehaviour
from latkit.attacks.base import as_behaviour
from latkit.data.behaviour import Behaviour, contextual_prompt
from latkit.evaluation import datasets


def test_attacks_and_evaluation_use_the_same_record():
    assert AttackBehaviour is Behaviour
    assert datasets.Behaviour is Behaviour


def test_plain_request_is_its_own_prompt_and_request():
    b = Behaviour("How do I pick a lock?", target="Sure, here is how")
    assert b.prompt == b.request == b.behaviour == "How do I pick a lock?"
    assert b.effective_target == "Sure, here is how"


def test_contextual_request_builds_harmbench_prompt_and_keeps_the_request_alone():
    b = Behaviour(request="Summarise the text", context="Some article.", id="h1", source="harmbench_val")
    assert b.prompt == "Some article.\n\n---\n\nSummarise the text" == contextual_prompt("Summarise the text", "Some article.")
    assert b.request == "Summarise the text"
    assert as_behaviour(b) is b  # the attacks take it as it is: id, context and source travel with the answer
    assert b.to_dict()["context"] == "Some article." and b.to_dict()["prompt"] == b.prompt


def test_effective_target_falls_back_to_the_completion_then_the_default():
    assert Behaviour("p", completion="First sentence. Second one.").effective_target == "First sentence."
    assert Behaviour("p").effective_target == "Sure, here is"


def test_empty_behaviour_is_refused_and_records_are_frozen():
    with pytest.raises(ValueError):
        Behaviour()
    with pytest.raises(dataclasses.FrozenInstanceError):
        Behaviour("p").prompt = "q"


def test_table_loader_gives_behaviours_with_context(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("prompt,context,id\nSummarise it,An article,x1\nPlain ask,,x2\n")
    rows = datasets.load_table(p)
    assert [type(r) for r in rows] == [Behaviour, Behaviour]
    assert rows[0].prompt == "An article\n\n---\n\nSummarise it" and rows[0].request == "Summarise it"
    assert rows[1].prompt == rows[1].request == "Plain ask"
