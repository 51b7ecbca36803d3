"""Unlearning: a fictional-fact corpus, user data loaders, knowledge evaluation (cloze or letter scoring),
implanting knowledge and the relearning attack.

The losses (gradient ascent, RMU, WHP-style generic labels) live in
:mod:`latkit.objectives.unlearning`; the trainer combines them with LAT.

>>> from latkit.unlearning import fictional_facts, split_forget_retain, fact_corpus, fact_mcqs
>>> split = split_forget_retain(fictional_facts(n_per_topic=8), "scientist")
>>> len(split.forget), len(split.relearn), len(split.forget_eval)
(8, 4, 4)
"""
from latkit.data.text import TextCollator, load_texts
from latkit.unlearning.data import KnowledgeItem, load_mcq, save_split, split_files
from latkit.unlearning.datadir import evaluate_data_dir
from latkit.unlearning.evaluate import (
    CHANCE,
    SCORINGS,
    cloze_accuracy,
    cloze_context,
    knowledge_report,
    mcq_accuracy,
)
from latkit.unlearning.facts import (
    TOPICS,
    Fact,
    ForgetRetainSplit,
    fact_corpus,
    fact_mcqs,
    fictional_facts,
    split_forget_retain,
)
from latkit.unlearning.relearn import (
    FinetuneResult,
    RelearnConfig,
    RelearnResult,
    finetune_on_texts,
    fresh_lora,
    implant_texts,
    relearn_attack,
)

__all__ = [
    "CHANCE", "SCORINGS", "TOPICS", "Fact", "FinetuneResult", "ForgetRetainSplit", "KnowledgeItem", "RelearnConfig",
    "RelearnResult", "TextCollator", "cloze_accuracy", "cloze_context", "evaluate_data_dir", "fact_corpus",
    "fact_mcqs", "fictional_facts", "finetune_on_texts", "fresh_lora", "implant_texts", "knowledge_report",
    "load_mcq", "load_texts", "mcq_accuracy", "relearn_attack", "save_split", "split_files", "split_forget_retain",
]
