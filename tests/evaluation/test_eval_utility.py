import sys

import pytest
import torch

from latkit.evaluation.datasets import MCQItem
from latkit.evaluation.utility import (
    benign_compliance,
    format_question,
    kl_to_base,
    lm_eval_tasks,
    mmlu_prompt,
    multiple_choice_accuracy,
    perplexity,
    read_texts,
    score_continuations,
    shipped_benign_items,
)
from latkit.models.chat import encode_text
from latkit.testing import tiny_model


def _manual_logprob(model, tok, context, continuation):
    ctx = encode_text(tok, context, is_start=True)
    full = encode_text(tok, context + continuation, is_start=True)
    start = next((i for i, (a, b) in enumerate(zip(ctx, full)) if a != b), min(len(ctx), len(full)))
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    return sum(float(lp[t - 1, full[t]]) for t in range(start, len(full)))


ITEMS = [
    MCQItem("What is 2 + 2?", ("3", "4", "5", "6"), 1, "maths"),
    MCQItem("Which is a colour? Pick the one that is clearly a colour from the list below.",
            ("red", "dog", "sky", "run"), 0, "words"),
    MCQItem("Capital of France?", ("Rome", "Paris", "Oslo", "Bern"), 1, "geo"),
]


def test_score_continuations_match_unbatched_manual_computation(tiny):
    model, tok = tiny
    contexts = ["Question: pick one.\nAnswer:", "A much longer context that pads the others in the batch.\nAnswer:", "Hi"]
    conts = [[" A", " B"], [" Sure, here is how", " I'm sorry"], [" there", " x"]]
    got = score_continuations(model, tok, contexts, conts, batch_size=3)
    for ctx, cs, row in zip(contexts, conts, got):
        for c, v in zip(cs, row):
            assert v == pytest.approx(_manual_logprob(model, tok, ctx, c), abs=1e-4)
    # batch size does not change anything (left padding + position ids are handled)
    one = score_continuations(model, tok, contexts, conts, batch_size=1)
    for a, b in zip(one, got):
        assert a == pytest.approx(b, abs=1e-4)


def test_score_continuations_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="adds no tokens"):
        score_continuations(model, tok, ["abc"], [[""]])
    with pytest.raises(ValueError, match="contexts"):
        score_continuations(model, tok, ["a", "b"], [[" x"]])


def test_score_continuations_truncates_long_contexts_from_the_left(tiny):
    model, tok = tiny
    long_ctx = "word " * 400 + "Answer:"
    (row,) = score_continuations(model, tok, [long_ctx], [[" A", " B"]], max_length=64)
    assert all(isinstance(v, float) and v < 0 for v in row)


def test_mmlu_prompt_format():
    text = mmlu_prompt(ITEMS[0], shots=[ITEMS[2]])
    assert text.startswith("The following are multiple choice questions (with answers) about maths.\n\n")
    assert "Capital of France?\nA. Rome\nB. Paris\nC. Oslo\nD. Bern\nAnswer: B\n\n" in text
    assert text.endswith("What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert format_question(ITEMS[1]).endswith("D. run\nAnswer:")


def test_multiple_choice_accuracy_follows_the_model(tiny):
    """Set each item's answer to the model's own top (or bottom) letter: accuracy must be 1 (or 0)."""
    model, tok = tiny
    scores = score_continuations(model, tok, [mmlu_prompt(i) for i in ITEMS], [[" A", " B", " C", " D"]] * 3)
    best = [MCQItem(i.question, i.choices, max(range(4), key=s.__getitem__), i.subject) for i, s in zip(ITEMS, scores)]
    worst = [MCQItem(i.question, i.choices, min(range(4), key=s.__getitem__), i.subject) for i, s in zip(ITEMS, scores)]
    res = multiple_choice_accuracy(model, tok, best, batch_size=2)
    assert res["accuracy"] == 1.0 and res["n"] == 3 and res["ci95"][1] == 1.0
    assert set(res["per_subject"]) == {"maths", "words", "geo"}
    assert multiple_choice_accuracy(model, tok, worst, batch_size=3)["accuracy"] == 0.0


def test_multiple_choice_few_shot_and_chat(tiny):
    model, tok = tiny
    res = multiple_choice_accuracy(model, tok, ITEMS[:1], few_shot=ITEMS[1:], k=2, batch_size=4)
    assert res["few_shot"] == 2 and res["n"] == 1
    chat = multiple_choice_accuracy(model, tok, ITEMS, chat=True)
    assert chat["chat"] is True and 0.0 <= chat["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="few-shot"):
        multiple_choice_accuracy(model, tok, ITEMS, few_shot=ITEMS[:1], k=3)
    with pytest.raises(ValueError, match="no multiple-choice"):
        multiple_choice_accuracy(model, tok, [])


def test_mmlu_on_shared_data(tiny, shared_data):
    from latkit.evaluation.datasets import load_mmlu

    model, tok = tiny
    items = load_mmlu(shared_data / "mmlu" / "val", limit_per_subject=1, limit=12)
    res = multiple_choice_accuracy(model, tok, items, batch_size=6)
    assert res["n"] == 12 and sum(v["n"] for v in res["per_subject"].values()) == 12


def test_perplexity_matches_manual_and_is_batch_invariant(tiny):
    model, tok = tiny
    text = "The quick brown fox jumps over the lazy dog."
    ids = encode_text(tok, text, is_start=True)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    nll = -sum(float(lp[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
    res = perplexity(model, tok, [text])
    assert res["nll"] == pytest.approx(nll, abs=1e-4) and res["tokens"] == len(ids) - 1
    texts = [text, "Short.", {"prompt": "How do I bake bread?", "response": "Mix flour and water."}, {"prompt": "Hi"}]
    a, b = perplexity(model, tok, texts, batch_size=1), perplexity(model, tok, texts, batch_size=4)
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-4) and a["tokens"] == b["tokens"]


def test_perplexity_scores_only_the_response_of_pairs(tiny):
    from latkit.models.chat import encode_pair

    model, tok = tiny
    p_ids, (c_ids,) = encode_pair(tok, "How do I bake bread?", ["Mix flour and water."])
    assert perplexity(model, tok, [("How do I bake bread?", "Mix flour and water.")])["tokens"] == len(c_ids)


def test_kl_to_base_separate_model(tiny):
    model, tok = tiny
    texts = ["hello world, this is benign text", {"prompt": "Write a poem about the sea."}]
    same = kl_to_base(model, tok, texts, base_model=model)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["base"] == "separate model"
    other, _ = tiny_model("llama", seed=3)
    diff = kl_to_base(model, tok, texts, base_model=other)
    assert diff["kl"] > 0 and diff["perplexity"] == pytest.approx(perplexity(model, tok, texts)["perplexity"], rel=1e-4)
    with pytest.raises(ValueError, match="needs a base model"):
        kl_to_base(model, tok, texts)


def test_kl_to_base_peft_adapters_disabled():
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_model("llama", seed=0)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    peft.eval()
    texts = ["hello world, this is benign text", "another line of text"]
    zero = kl_to_base(peft, tok, texts)  # LoRA B starts at zero: adapter == base
    assert zero["kl"] == pytest.approx(0.0, abs=1e-6) and zero["base"] == "adapters disabled"
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    moved = kl_to_base(peft, tok, texts)
    assert moved["kl"] > 1e-4 and moved["perplexity"] != pytest.approx(moved["base_perplexity"])


def test_benign_compliance_counts_helpful_answers_only(tiny, monkeypatch):
    """A refusal, an empty answer and a bare "Here you go." are non-compliance; a real answer complies."""
    model, tok = tiny
    answers = iter([["I'm sorry, but I can't help with that.",
                     "To convert Celsius to Fahrenheit, multiply the Celsius temperature by 9/5 (or 1.8) and then "
                     "add 32. For example, 20 degrees Celsius times 1.8 is 36, and 36 plus 32 gives 68 degrees "
                     "Fahrenheit. The formula is F = C × 9/5 + 32.",
                     "", "Here you go."]])
    monkeypatch.setattr("latkit.models.generate.generate", lambda *a, **k: next(answers))
    q = "How do I convert Celsius to Fahrenheit?"
    summary, records = benign_compliance(model, tok, [q, q, {"prompt": q, "category": "x", "borderline": True}, q])
    assert summary["k"] == 1 and summary["n"] == 4 and summary["rate"] == 0.25
    assert [r["complied"] for r in records] == [False, True, False, False]
    assert summary["borderline"]["n"] == 1 and summary["judge"] == "helpful"
    assert records[0]["judge_raw"] == "refusal" and records[2]["judge_raw"] == "no content"


def test_benign_compliance_on_shipped_set_with_real_generation(tiny):
    model, tok = tiny
    summary, records = benign_compliance(model, tok, limit=6, max_new_tokens=4, batch_size=6)
    assert summary["n"] == 6 and len(records) == 6
    assert summary["borderline"]["n"] == 3 and summary["ordinary"]["n"] == 3  # the shipped order alternates
    assert all(isinstance(r["answer"], str) for r in records)


def test_shipped_benign_items():
    items = shipped_benign_items()
    assert len(items) == len({i["prompt"] for i in items})
    assert {i["borderline"] for i in items[:10]} == {True, False}
    assert all(i["borderline"] for i in shipped_benign_items(True))


def test_lm_eval_missing_gives_clear_error(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="pip install lm-eval"):
        lm_eval_tasks(model, tok, ["hellaswag"])


def test_read_texts(tmp_path):
    from latkit.data.schemas import DataError

    (tmp_path / "a.txt").write_text("line one\n\nline two\n")
    assert read_texts(tmp_path / "a.txt") == ["line one", "line two"]
    (tmp_path / "b.jsonl").write_text('{"text": "t"}\n{"prompt": "p", "response": "r"}\n')
    assert read_texts(tmp_path / "b.jsonl") == ["t", {"prompt": "p", "response": "r"}]
    (tmp_path / "c.jsonl").write_text('{"other": 1}\n')
    with pytest.raises(DataError, match="'text' or 'prompt'"):
        read_texts(tmp_path / "c.jsonl")
    with pytest.raises(DataError, match="not found"):
        read_texts(tmp_path / "none.txt")
