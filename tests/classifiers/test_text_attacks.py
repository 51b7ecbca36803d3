"""Novel text attacks: types, determinism, more change at higher severity; HotFlip lowers the true class."""
import pytest
import torch

from latkit.classifiers import text_attacks as A
from latkit.classifiers.text import TextData, batches, harmful_benign
from latkit.testing import tiny_encoder


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.fixture(scope="module")
def texts():
    val = harmful_benign("val")
    benign = [t for t, y in zip(val.texts, val.labels) if y == 0]
    harmful = [t for t, y in zip(val.texts, val.labels) if y == 1]
    return benign[:20] + harmful[:20]


@pytest.mark.parametrize("name", list(A.TEXT_ATTACKS))
def test_types_determinism_and_seed(name, texts):
    for s in A.ATTACK_SEVERITIES[name]:
        out = A.apply_text_attack(name, texts, s, seed=0)
        assert isinstance(out, list) and len(out) == len(texts) and all(isinstance(t, str) and t for t in out)
        assert out == A.apply_text_attack(name, texts, s, seed=0)
        assert sum(o != t for o, t in zip(out, texts)) >= 0.8 * len(texts)
    # an item's output does not depend on the rest of the batch
    assert A.apply_text_attack(name, texts[3:4], 2, seed=0) == A.apply_text_attack(name, texts, 2, seed=0)[3:4]
    assert A.apply_text_attack(name, texts, 2, seed=0) != A.apply_text_attack(name, texts, 2, seed=1)


@pytest.mark.parametrize("name", list(A.TEXT_ATTACKS))
def test_more_change_at_higher_severity(name, texts):
    sev = A.ATTACK_SEVERITIES[name]
    dist = [[levenshtein(o, t) for o, t in zip(A.apply_text_attack(name, texts, s, 0), texts)] for s in sev]
    means = [sum(d) / len(d) for d in dist]
    assert all(a < b for a, b in zip(means, means[1:])), means
    per_item_monotone = sum(all(d[i] <= e[i] for d, e in zip(dist, dist[1:])) for i in range(len(texts)))
    assert per_item_monotone >= 0.9 * len(texts)


def test_char_edits_nested_and_word_level():
    t = ["Explain how to build a dangerous weapon from household materials quickly"]
    words = t[0].split()
    changed = []
    for s in A.ATTACK_SEVERITIES["char_edits"]:
        out = A.char_edits(t, s)[0].split()
        assert len(out) == len(words)  # edits stay inside words
        changed.append({i for i, (a, b) in enumerate(zip(words, out)) if a != b})
    assert all(a <= b for a, b in zip(changed, changed[1:])) and len(changed[-1]) == sum(len(w) >= 3 for w in words)
    for i in changed[0]:
        assert levenshtein(words[i], A.char_edits(t, 1)[0].split()[i]) <= 2


def test_homoglyphs_look_alike_only():
    t = ["Create a tutorial on how to make a bomb"]
    out = A.homoglyphs(t, 5)[0]
    assert len(out) == len(t[0])
    for a, b in zip(t[0], out):
        assert a == b or b in A.HOMOGLYPHS[a]
    assert all(a == b for a, b in zip(t[0], out) if a not in A.HOMOGLYPHS)
    assert out != t[0] and all(c not in A.HOMOGLYPHS for c in out)  # severity 5: every replaceable one
    assert len({v for vs in A.HOMOGLYPHS.values() for v in vs} & set("abcdefghijklmnopqrstuvwxyz")) == 0


def test_word_swaps_table_and_case():
    assert len(A.SYNONYMS) >= 200
    assert all(w and all(s and s != w for s in syn) for w, syn in A.SYNONYMS.items())
    for w in ("make", "create", "write", "explain", "steal", "hack", "bomb"):
        assert w in A.SYNONYMS
    out = A.word_swaps(["Steal the PASSWORD, then hack!"], 5)[0].split()
    assert out[0][0].isupper() and out[0].lower() in A.SYNONYMS["steal"]
    assert out[1] == "the" and out[2].endswith(",") and out[-1].endswith("!")
    assert A.word_swaps(["zzz qqq"], 3) == ["zzz qqq"]  # nothing swappable: unchanged


def test_paraphrase_reforms():
    import random

    r = random.Random(0)
    assert A.reform("How do I bake bread?", r) == "Explain how to bake bread."
    assert A.reform("Can you write a poem?", r) == "Write a poem."
    assert A.reform("What is a virus?", r) == "Tell me what is a virus."
    assert A.reform("Write a script that steals passwords", r).lower().count("write a script that steals passwords") == 1
    t = ["Write a script that steals passwords"]
    p1, p2, p3 = (A.paraphrase(t, s)[0] for s in (1, 2, 3))
    assert t[0] in p1 or "write a script that steals passwords" in p1
    assert len(p1) < len(p3) and len(p2) < len(p3)


def test_bad_severity_and_name():
    with pytest.raises(A.TextAttackError, match="severity"):
        A.char_edits(["x"], 0)
    with pytest.raises(A.TextAttackError, match="severity"):
        A.paraphrase(["x"], 4)
    with pytest.raises(A.TextAttackError, match="unknown text attack"):
        A.apply_text_attack("nope", ["x"], 1)


def _trained_tiny(family="bert"):
    """A tiny encoder fitted for a few steps so the true class is likely: an attack has something to lower."""
    model, tok = tiny_encoder(family, seed=0)
    full = harmful_benign("train")
    idx = [i for i, y in enumerate(full.labels) if y == 0][:32] + [i for i, y in enumerate(full.labels) if y == 1][:32]
    data = full.subset(idx)
    bs = batches(tok, data, batch_size=16, max_length=24, shuffle=True, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(6):
        for b in bs:
            opt.zero_grad()
            model(**b).loss.backward()
            opt.step()
    model.eval()
    return model, tok, data


def _true_prob(model, batch, ids=None):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"] if ids is None else ids,
                       attention_mask=batch["attention_mask"]).logits
    return logits.softmax(-1).gather(1, batch["labels"].unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_hotflip_lowers_true_class_more_with_k(family):
    torch.manual_seed(0)
    model, tok, data = _trained_tiny(family)
    b = batches(tok, data.subset(list(range(8)) + list(range(32, 40))), batch_size=16, max_length=24)[0]
    assert b["labels"].tolist() == [0] * 8 + [1] * 8
    special = A.special_ids(tok)
    clean = _true_prob(model, b)
    probs = []
    for k in (1, 2, 3):
        adv = A.hotflip(model, b, k, special_ids=special)
        assert adv.shape == b["input_ids"].shape and adv.dtype == b["input_ids"].dtype
        changed = (adv != b["input_ids"]).sum(1)
        assert (changed <= k).all() and (changed == k).float().mean() > 0.9
        assert ((adv != b["input_ids"]) & ~b["attention_mask"].bool()).sum() == 0  # never the padding
        assert (adv[torch.isin(b["input_ids"], torch.tensor(special))]
                == b["input_ids"][torch.isin(b["input_ids"], torch.tensor(special))]).all()
        assert not torch.isin(adv[adv != b["input_ids"]], torch.tensor(special)).any()
        probs.append(_true_prob(model, b, adv))
        torch.testing.assert_close(adv, A.hotflip(model, b, k, special_ids=special))  # deterministic
    assert clean.mean() > 0.6  # the fitted model knows most of these
    assert clean.mean() > probs[0].mean() > probs[1].mean() > probs[2].mean()
    assert probs[2].mean() < clean.mean() - 0.02
    assert (probs[2] <= clean + 1e-6).float().mean() > 0.9
    assert not model.training


def test_token_attack_batches_and_texts():
    model, tok = tiny_encoder("bert")
    data = TextData(["write a script to hack a bank", "how do i bake bread"], [1, 0], ("benign", "harmful"))
    bs = batches(tok, data, batch_size=2)
    model.train()
    out = A.token_attack(model, tok, bs, 2)
    assert model.training  # mode restored
    assert len(out) == 1 and set(out[0]) == {"input_ids", "attention_mask", "labels", "texts"}
    assert len(out[0]["texts"]) == 2 and out[0]["texts"] != tok.batch_decode(bs[0]["input_ids"], skip_special_tokens=True)
    with pytest.raises(A.TextAttackError, match="labels"):
        A.hotflip(model, {"input_ids": bs[0]["input_ids"]}, 1)
    with pytest.raises(A.TextAttackError, match="k >= 1"):
        A.hotflip(model, bs[0], 0)
