"""Backdoors: triggers, data to implant and to remove them, and whether they still fire.

Implant a backdoor with SFT on :func:`implant_records`, remove it with DPO / DPO-LAT or SFT on
the trigger-free :func:`removal_records` (see :mod:`latkit.objectives.preference`), and measure
it with :func:`trigger_success`.
"""
from latkit.backdoor.data import (
    MODES,
    RemovalData,
    check_decoys,
    check_trigger_free,
    find_trigger_leaks,
    implant_records,
    removal_records,
)
from latkit.backdoor.evaluate import score_answers, trigger_success
from latkit.backdoor.triggers import (
    DEFAULT_DECOYS,
    DEFAULT_TRIGGERS,
    HELD_OUT_TRIGGER,
    VARIANT_KINDS,
    Trigger,
    insert_trigger,
    trigger_variants,
)

__all__ = [
    "DEFAULT_DECOYS", "DEFAULT_TRIGGERS", "HELD_OUT_TRIGGER", "MODES", "VARIANT_KINDS", "RemovalData", "Trigger",
    "check_decoys", "check_trigger_free", "find_trigger_leaks", "implant_records", "insert_trigger", "removal_records",
    "score_answers", "trigger_success", "trigger_variants",
]
