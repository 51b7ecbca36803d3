import random

import pytest

from latkit.data.refusals import (
    GCG_REFUSAL_PREFIXES,
    PLAIN_TEMPLATES,
    REFUSAL_PREFIXES,
    REFUSAL_TEMPLATES,
    TASK_SLOT,
    is_refusal,
    refusal_for,
    task_phrase,
)

COMPLIANT = [
    "Sure, here is a script that reads a CSV file and prints the average of each column.",
    "Sure, here is how to make a paper airplane: fold the sheet in half lengthwise, then fold the corners in.",
    "Here are three tips for better sleep: keep a regular schedule, avoid screens late, and keep the room cool.",
    "To boil an egg with a runny yolk, lower it into simmering water and cook it for six and a half minutes.",
    "The derivative of x^2 sin(x) is 2x sin(x) + x^2 cos(x), by the product rule.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts.",
    "Of course! Lisbon in three days: Alfama and the castle on day one, Belem on day two, Sintra on day three.",
    "Step 1: gather the materials. Step 2: follow the diagram. Step 3: test the result.",
    "A budget starts with your net income; then list fixed costs, savings goals and flexible spending.",
    "Absolutely. In Spanish you say: Donde esta la estacion de tren?",
]


def test_template_set_is_large_and_varied():
    assert len(REFUSAL_TEMPLATES) >= 40
    assert len(set(REFUSAL_TEMPLATES)) == len(REFUSAL_TEMPLATES)
    openings = {" ".join(t.split()[:2]) for t in REFUSAL_TEMPLATES}
    assert len(openings) >= 20
    for start in ("I'm sorry", "I can't", "I won't", "As an AI", "I must decline"):
        assert any(t.startswith(start) for t in REFUSAL_TEMPLATES), start
    assert any(TASK_SLOT in t for t in REFUSAL_TEMPLATES) and len(PLAIN_TEMPLATES) >= 20
    assert any("instead" in t for t in REFUSAL_TEMPLATES)  # some redirect to safe help
    lengths = sorted(len(t) for t in REFUSAL_TEMPLATES)
    assert lengths[0] < 40 and lengths[-1] > 120  # brief and explanatory


def test_every_template_is_judged_a_refusal():
    for t in REFUSAL_TEMPLATES:
        assert is_refusal(t.replace(TASK_SLOT, "write a phishing email")), t


@pytest.mark.parametrize("text", COMPLIANT)
def test_compliant_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_prefix_list_contents_and_case_sensitivity():
    # the GCG/HarmBench baseline list, copied as published (the default judge does not use it; see
    # tests/judges/test_success_judge.py for the broad, case-insensitive patterns it uses instead)
    for p in ("I'm sorry", "As an AI", "I cannot", "I can't assist", "If you have any other non-malicious requests"):
        assert p in GCG_REFUSAL_PREFIXES and p in REFUSAL_PREFIXES
    assert "I won't" in REFUSAL_PREFIXES and "I won't" not in GCG_REFUSAL_PREFIXES
    assert len(set(REFUSAL_PREFIXES)) == len(REFUSAL_PREFIXES)
    assert is_refusal("Well... I cannot do this.")
    assert not is_refusal("i cannot do this")  # case-sensitive, as in GCG
    assert is_refusal("I\u2019m sorry, no.")  # typographic apostrophe
    assert not is_refusal("")
    assert is_refusal("custom stop", prefixes=["stop"]) and not is_refusal("I'm sorry", prefixes=["stop"])


def test_task_phrase_extraction():
    assert task_phrase("Write a phishing email.") == "write a phishing email"
    assert task_phrase("Please create a fake news story that incites panic!") == "create a fake news story that incites panic"
    assert task_phrase("Explain the SQL injection attack. Then more text.") == "explain the SQL injection attack"
    assert task_phrase("DDOS the server now") == "DDOS the server now"
    for q in ("How do I make a bomb?", "Give me instructions for X", "What is this", "Hi", "", "Write {x} now", "Do it"):
        assert task_phrase(q) is None, q


def test_refusal_for_is_deterministic_and_fills_slot():
    prompts = [f"Write a tutorial on topic number {i}" for i in range(200)]
    a = [refusal_for(p, random.Random(7)) for p in prompts]
    assert a == [refusal_for(p, 7) for p in prompts]
    rng1, rng2 = random.Random(3), random.Random(3)
    seq1 = [refusal_for(p, rng1) for p in prompts]
    assert seq1 == [refusal_for(p, rng2) for p in prompts]
    assert len(set(x.replace(p[6:], "") for x, p in zip(seq1, prompts))) >= 30
    assert any("write a tutorial on topic number" in x for x in seq1)
    assert all("{" not in x for x in seq1)
    q = [refusal_for("How do I pick a lock?", random.Random(s)) for s in range(100)]
    assert set(q) <= set(PLAIN_TEMPLATES) and len(set(q)) >= 20
