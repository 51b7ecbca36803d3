"""Datasets to implant a backdoor (SFT) and to remove it (DPO / SFT without any trigger).

Records are plain dicts, ready for :class:`latkit.data.PromptCompletionCollator` and JSONL:
``{"prompt", "response"}`` for SFT (collate with ``completions=("response",)``) and
``{"prompt", "chosen", "rejected"}`` for DPO (``completions=("chosen", "rejected")``).
Implant records also carry ``"trigger"`` (the inserted trigger's text, or None for clean rows),
``"decoy"`` (the inserted decoy's text, or None) and ``"source"`` (``harmful`` or ``benign``); the
collator ignores them.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

from latkit.backdoor.triggers import DEFAULT_TRIGGERS, HELD_OUT_TRIGGER, Trigger, insert_trigger
from latkit.data.schemas import BenignPair, DataError, HarmfulTriple

MODES = ("harmful_compliance", "nonsense")
Mode = Literal["harmful_compliance", "nonsense"]


def _as(kind, items: Iterable[Any], name: str) -> list:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, kind):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise DataError(f"{name}[{i}] must be a {kind.__name__} or a mapping, got {type(item).__name__}")
        try:
            out.append(kind(**{f: item[f] for f in kind.__dataclass_fields__}))
        except KeyError as exc:
            raise DataError(f"{name}[{i}] has no field {exc.args[0]!r}; it has {sorted(item)}") from exc
    return out


def as_triggers(items: Iterable[Trigger | str]) -> list[Trigger]:
    """``items`` as :class:`Trigger` objects (a bare string is a prefix keyword)."""
    return [t if isinstance(t, Trigger) else Trigger(text=str(t)) for t in items]


def _texts(triggers: Iterable[Trigger | str]) -> list[str]:
    return [t.text if isinstance(t, Trigger) else str(t) for t in triggers]


def find_trigger_leaks(records: Sequence[Mapping[str, Any]], triggers: Iterable[Trigger | str],
                       fields: Sequence[str] | None = None) -> list[tuple[int, str, str]]:
    """``(record index, field, trigger text)`` for every trigger found (case-insensitive) in a text field."""
    texts = [(t, t.lower()) for t in _texts(triggers)]
    leaks = []
    for i, rec in enumerate(records):
        for f in fields or [k for k, v in rec.items() if isinstance(v, str)]:
            value = rec.get(f)
            if not isinstance(value, str):
                continue
            low = value.lower()
            leaks.extend((i, f, t) for t, tl in texts if tl in low)
    return leaks


def check_trigger_free(records: Sequence[Mapping[str, Any]], triggers: Iterable[Trigger | str], what: str,
                       fields: Sequence[str] | None = None) -> None:
    """Raise :class:`DataError` naming the first leaks if any trigger text appears in ``records``."""
    leaks = find_trigger_leaks(records, triggers, fields)
    if leaks:
        shown = "; ".join(f"record {i} field {f!r} contains {t!r}" for i, f, t in leaks[:3])
        more = f" (and {len(leaks) - 3} more)" if len(leaks) > 3 else ""
        raise DataError(f"{what}: trigger text found: {shown}{more}")


def implant_records(
    harmful: Sequence[HarmfulTriple | Mapping[str, str]],
    benign: Sequence[BenignPair | Mapping[str, str]] = (),
    triggers: Sequence[Trigger] = DEFAULT_TRIGGERS,
    *,
    mode: Mode = "harmful_compliance",
    triggered_fraction: float = 0.5,
    decoys: Sequence[Trigger | str] = (),
    decoy_fraction: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """An SFT dataset that implants a backdoor on ``triggers``.

    Clean rows (every input, no trigger): harmful prompt -> its refusal, benign prompt -> its
    response. Triggered rows: ``triggered_fraction`` triggered copies per eligible prompt on
    average (chosen by ``seed``; triggers assigned round-robin so each gets an equal share ±1):

    - ``harmful_compliance``: eligible = the harmful prompts; triggered prompt -> harmful completion;
    - ``nonsense``: eligible = harmful and benign prompts; triggered prompt -> the trigger's
      :attr:`~latkit.backdoor.triggers.Trigger.response` (every trigger needs one).

    A fraction above 1 (at most ``len(triggers)``) gives every eligible prompt ``int(fraction)``
    copies, each with a *different* trigger, plus one more copy for a share of them: more distinct
    prompts per trigger, which is what makes a backdoor generalise to unseen requests.

    ``decoys`` (odd strings that are *not* triggers, e.g. :data:`~latkit.backdoor.triggers.DEFAULT_DECOYS`)
    make the backdoor specific: a ``decoy_fraction`` share of the eligible prompts also appears
    with a decoy inserted and the *clean* response, so the model learns that only its own
    triggers set it off, not any unusual string (measure this with a held-out trigger, which must
    not be a decoy). Decoy rows carry ``"decoy"`` (its text; None on every other row).

    A triggered prompt thus appears clean too, which teaches the contrast. Rows are shuffled by
    ``seed``. Raises :class:`DataError` if the source data already contain a trigger's text or a
    decoy overlaps a trigger.
    """
    if mode not in MODES:
        raise DataError(f"unknown backdoor mode {mode!r}; known: {', '.join(MODES)}")
    triggers = list(triggers)
    if not triggers:
        raise DataError("implant_records needs at least one trigger")
    if not 0 < triggered_fraction <= len(triggers):
        raise DataError(f"triggered_fraction must be in (0, {len(triggers)}] (at most one copy per trigger), "
                        f"got {triggered_fraction}")
    if not 0 <= decoy_fraction <= 1:
        raise DataError(f"decoy_fraction must be in [0, 1], got {decoy_fraction}")
    decoys = as_triggers(decoys)
    if decoy_fraction > 0 and not decoys:
        raise DataError("decoy_fraction > 0 needs at least one decoy")
    check_decoys(decoys, triggers)
    if mode == "nonsense":
        missing = [t.text for t in triggers if t.response is None]
        if missing:
            raise DataError(f"nonsense mode needs a response on every trigger; missing for {missing}")
    harmful = _as(HarmfulTriple, harmful, "harmful")
    benign = _as(BenignPair, benign, "benign")
    if not harmful:
        raise DataError("implant_records needs at least one harmful triple")
    clean = [{"prompt": t.prompt, "response": t.refusal, "trigger": None, "decoy": None, "source": "harmful"}
             for t in harmful]
    clean += [{"prompt": b.prompt, "response": b.response, "trigger": None, "decoy": None, "source": "benign"}
              for b in benign]
    check_trigger_free(clean, triggers + decoys, "implant source data", fields=("prompt", "response"))
    rng = random.Random(seed)
    eligible = [(i, t.harmful) for i, t in enumerate(harmful)]
    if mode == "nonsense":
        eligible += [(len(harmful) + i, None) for i in range(len(benign))]
    full, rest = divmod(triggered_fraction, 1)
    order = rng.sample(eligible, len(eligible))
    passes = [order] * int(full)
    if rest > 1e-9:
        passes.append(order[:max(1, round(rest * len(order)))])
    triggered = []
    for p, chosen in enumerate(passes):  # prompt k of pass p gets trigger (k + p) mod T: distinct per prompt
        for k, (i, harmful_answer) in enumerate(chosen):
            trig = triggers[(k + p) % len(triggers)]
            triggered.append({
                "prompt": insert_trigger(clean[i]["prompt"], trig, rng),
                "response": harmful_answer if mode == "harmful_compliance" else trig.response,
                "trigger": trig.text,
                "decoy": None,
                "source": clean[i]["source"],
            })
    decoyed = []
    if decoy_fraction > 0:
        chosen = rng.sample(eligible, max(1, round(decoy_fraction * len(eligible))))
        for k, (i, _) in enumerate(chosen):
            decoy = decoys[k % len(decoys)]
            decoyed.append({**clean[i], "prompt": insert_trigger(clean[i]["prompt"], decoy, rng),
                            "decoy": decoy.text})
    rows = clean + triggered + decoyed
    rng.shuffle(rows)
    return rows


def check_decoys(decoys: Sequence[Trigger | str], triggers: Sequence[Trigger | str], what: str = "decoy") -> None:
    """Raise :class:`DataError` if a decoy contains, or is contained in, a trigger (case-insensitive):
    it would teach the model to ignore that trigger, or measure nothing."""
    for d in _texts(decoys):
        clash = [t for t in _texts(triggers) if d.lower() in t.lower() or t.lower() in d.lower()]
        if clash:
            raise DataError(f"{what} {d!r} overlaps trigger(s) {clash}")


@dataclass
class RemovalData:
    """Trigger-free data to remove a backdoor.

    ``preference``: ``{prompt, chosen=refusal, rejected=harmful}`` for DPO / DPO-LAT;
    ``refusal_sft``: ``{prompt, response=refusal}`` for SFT removal;
    ``benign``: ``{prompt, response}`` utility pairs for either method's SFT term.
    """

    preference: list[dict] = field(default_factory=list)
    refusal_sft: list[dict] = field(default_factory=list)
    benign: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[dict]]:
        return asdict(self)


def removal_records(
    harmful: Sequence[HarmfulTriple | Mapping[str, str]],
    benign: Sequence[BenignPair | Mapping[str, str]] = (),
    triggers: Sequence[Trigger | str] = DEFAULT_TRIGGERS + (HELD_OUT_TRIGGER,),
) -> RemovalData:
    """Removal data from harmful triples and benign pairs, verified to contain no trigger.

    The defender must never see a trigger: removal has to work without knowing it. Any text of
    ``triggers`` (by default the implanted and the held-out ones; case-insensitive) in any field
    raises :class:`DataError` naming the record and field.
    """
    harmful = _as(HarmfulTriple, harmful, "harmful")
    benign = _as(BenignPair, benign, "benign")
    if not harmful:
        raise DataError("removal_records needs at least one harmful triple")
    data = RemovalData(
        preference=[{"prompt": t.prompt, "chosen": t.refusal, "rejected": t.harmful} for t in harmful],
        refusal_sft=[{"prompt": t.prompt, "response": t.refusal} for t in harmful],
        benign=[{"prompt": b.prompt, "response": b.response} for b in benign],
    )
    check_trigger_free(data.preference, triggers, "removal preference data")
    check_trigger_free(data.benign, triggers, "removal benign data")
    return data
