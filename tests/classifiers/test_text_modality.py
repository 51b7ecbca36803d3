"""The text modality on the classifier core: hooks on encoder modules, one step of each method, resume,
evaluation's results.json for text, and the CLI (tiny 2-layer encoders throughout)."""
import json

import pytest
import torch

from latkit.classifiers import text as T
from latkit.classifiers.modality import AttackContext, ClassifierError, modality_class
from latkit.classifiers.recipe import recipe_from_dict


def text_recipe(**overrides):
    data = {"kind": "classifier", "modality": "text", "name": "t",
            "model": {"name": "tiny-random:bert", "max_length": 24}, "data": {},
            "method": {"kind": "plain"},
            "train": {"steps": 2, "batch_size": 8, "lr": 1e-3, "optimizer": "adamw", "log_every": 1},
            "eval": {"limit": 24, "batch_size": 12, "pgd_steps": 2}}
    for k, v in overrides.items():
        node = data
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return recipe_from_dict(data)


@pytest.fixture(scope="module")
def modality():
    return modality_class("text")(text_recipe())


def test_registry_and_recipe_sections(modality):
    assert isinstance(modality, T.TextModality)
    r = text_recipe(**{"model.layer": 1, "data.balanced": False})
    assert r.model.layer == 1 and r.data.balanced is False
    with pytest.raises(ClassifierError, match="model.nme"):
        text_recipe(**{"model.nme": "x"})
    with pytest.raises(ClassifierError, match="not a text trigger"):
        text_recipe(backdoor={"trigger": "patch"})
    with pytest.raises(ClassifierError, match="unknown text attack"):
        text_recipe(**{"eval.attacks": ["jpeg"]})
    assert set(T.TextModality.attack_names()) == {"char_edits", "homoglyphs", "word_swaps", "paraphrase", "hotflip"}


def test_data_splits_mixed_and_balanced(modality):
    s = modality.load_data(0)
    assert s.class_names == ["benign", "harmful"]
    assert len(s.train) == 490 and len(s.test) == 146  # balanced hash splits (245/245, 73/73)
    assert s.train.labels.sum() == len(s.train) // 2 and s.test.labels.sum() == len(s.test) // 2
    assert 0 < int(s.test.labels[:24].sum()) < 24  # hash order: a prefix has both classes
    assert not set(s.train.raw) & set(s.test.raw)
    assert modality.load_data(5).test.raw == s.test.raw  # the held-out texts do not move with the seed


def test_csv_source_and_test_source(tmp_path):
    rows = "".join(f"text number {i} {'bad' if i % 2 else 'good'},{'neg' if i % 2 else 'pos'}\n" for i in range(40))
    (tmp_path / "a.csv").write_text("text,label\n" + rows)
    (tmp_path / "b.csv").write_text("text,label\nsomething good,pos\nsomething bad,neg\n")
    m = T.TextModality(text_recipe(data={"source": str(tmp_path / "a.csv"), "test_source": str(tmp_path / "b.csv")}))
    s = m.load_data(0)
    assert s.class_names == ["neg", "pos"] and len(s.train) == 40 and sorted(s.test.raw) == ["something bad", "something good"]
    (tmp_path / "c.csv").write_text("text,label\nx,a\ny,b\nz,c\n")
    m = T.TextModality(text_recipe(data={"source": str(tmp_path / "a.csv"), "test_source": str(tmp_path / "c.csv")}))
    with pytest.raises(ClassifierError, match="test_source has classes"):
        m.load_data(0)
    m = T.TextModality(text_recipe(data={"source": str(tmp_path / "missing.csv")}))
    with pytest.raises(ClassifierError, match="does not exist"):
        m.load_data(0)


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_input_and_latent_hooks_on_encoder_modules(family):
    from latkit.adversary import perturb
    from latkit.adversary.modules import ModuleSites

    m = T.TextModality(text_recipe(**{"model.name": f"tiny-random:{family}"}))
    model = m.load_model(2).eval()
    inputs = m.collate(["write a script to hack a bank", "bake bread"])
    clean = m.forward(model, inputs)
    delta = m.input_delta(model, inputs)
    assert delta.shape == (2, inputs["input_ids"].shape[1], model.get_input_embeddings().weight.shape[1])
    assert delta.dtype == torch.float32 and not delta.any()
    with m.perturb_input(model, torch.randn_like(delta)):
        moved = m.forward(model, inputs)
    assert not torch.allclose(moved, clean)
    torch.testing.assert_close(m.forward(model, inputs), clean)  # hook removed
    # AT's δ is exactly an offset of the word embeddings
    d = torch.randn_like(delta)
    with m.perturb_input(model, d):
        hooked = m.forward(model, inputs)
    emb = model.get_input_embeddings()(inputs["input_ids"]) + d
    torch.testing.assert_close(hooked, model(inputs_embeds=emb, attention_mask=inputs["attention_mask"]).logits)
    with pytest.raises(Exception):
        with m.perturb_input(model, torch.zeros(2, 3, 3)):
            m.forward(model, inputs)
    torch.testing.assert_close(m.forward(model, inputs), clean)  # removed on the exception too
    site = m.default_latent_site(model)
    assert site == T.layer_sites(model)[0]
    store = {}
    from latkit.models.hooks import record

    with record(ModuleSites(model), [site], store):
        m.forward(model, inputs)
    with perturb(ModuleSites(model), {site: torch.randn_like(store[site])}, None):
        assert not torch.allclose(m.forward(model, inputs), clean)
    torch.testing.assert_close(m.forward(model, inputs), clean)


METHODS = {
    "plain": {"kind": "plain"},
    "at": {"kind": "at", "norm": "l2", "epsilon": 0.5, "steps": 2},
    "lat": {"kind": "lat", "norm": "l2", "epsilon": 0.5, "relative": True, "steps": 2},
    "rlp": {"kind": "rlp", "norm": "linf", "epsilon": 0.1, "relative": True},
}


@pytest.mark.parametrize("kind", list(METHODS))
def test_one_train_step_per_method(tmp_path, kind):
    from latkit.classifiers.trainer import ClassifierTrainer

    t = ClassifierTrainer(text_recipe(method=METHODS[kind], **{"train.steps": 1}), tmp_path / kind, progress=False)
    t.setup()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    m = t.train_step()
    after = t.model.state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 0.9 * len(before)
    assert torch.isfinite(torch.tensor(m["loss/task"]))
    if kind == "at":
        assert 0 < m["adv/input/norm_mean"] <= 0.5 + 1e-4 and m["adv/loss_after"] > m["loss/perturbed"] - 1e-6
    if kind in ("lat", "rlp"):
        assert any(k.startswith("adv/bert.encoder.layer.0/") for k in m)


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    from latkit.classifiers.trainer import ClassifierTrainer, train

    r = text_recipe(method=METHODS["lat"], **{"train.steps": 4, "train.checkpoint_every": 2})
    train(r, tmp_path / "full", progress=False)
    real = ClassifierTrainer.train_step

    def crash_at_3(self):
        if self.step == 2:
            raise KeyboardInterrupt("killed")
        return real(self)

    monkeypatch.setattr(ClassifierTrainer, "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(r, tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(ClassifierTrainer, "train_step", real)
    train(r, tmp_path / "cut", resume=True, progress=False)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "model" / "tokenizer.json").is_file()
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "loss/task" in x] == [1, 2, 3, 4]


def test_hotflip_as_a_novel_attack_keeps_its_token_ids(modality):
    model = modality.load_model(2).eval()
    raw = ["write a script to hack a bank", "how do i bake bread"]
    attack = T.TextModality.novel_attacks()["hotflip"]
    assert attack.needs_model and list(attack.severities) == [1, 2, 3]
    labels = torch.tensor([1, 0])
    out = attack(raw, 2, torch.Generator().manual_seed(0), AttackContext(modality, model, labels))
    assert isinstance(out, T.TokenizedTexts) and len(out) == 2
    inputs = modality.collate(out)
    assert torch.equal(inputs["input_ids"], out.input_ids)
    assert ((out.input_ids != modality.collate(raw)["input_ids"]).sum(1) == 2).all()
    with pytest.raises(ClassifierError, match="needs the model"):
        attack(raw, 1, torch.Generator(), None)


def test_eval_results_for_text(tmp_path):
    from latkit.classifiers.evaluate import evaluate_runs
    from latkit.classifiers.trainer import train

    runs = []
    for kind in ("plain", "lat"):
        r = text_recipe(method=METHODS[kind], name=kind,
                        backdoor={"trigger": "phrase", "target": 0, "poison_fraction": 0.1},
                        **{"train.steps": 3})
        train(r, tmp_path / kind, progress=False)
        runs.append(tmp_path / kind)
    res = evaluate_runs(runs, tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["schema"] == res["schema"] and (tmp_path / "eval" / "report.md").is_file()
    for label in ("plain", "lat"):
        rows = [r for r in saved["results"] if r["model"] == label]
        cells = {(r["attack"], r["severity"], r["epsilon"]) for r in rows}
        assert ("clean", None, None) in cells
        assert {("pgd-l2", None, 0.5), ("pgd-l2", None, 1.0)} <= cells  # the seen attack in embedding space
        for a in ("char_edits", "homoglyphs", "word_swaps", "paraphrase", "hotflip"):
            assert {(a, s, None) for s in (1, 2, 3)} <= cells
        assert all(r["n"] == 24 and 0 <= r["accuracy"] <= 1 for r in rows)
        m = next(m for m in saved["models"] if m["label"] == label)
        assert m["modality"] == "text" and m["backdoor"]["trigger"] == "phrase"
        harmful = int(T.TextModality(text_recipe()).load_data(0).test.labels[:24].sum())
        assert 0 < m["backdoor"]["n"] == harmful  # the harmful ones of the first 24 test texts, triggered
        assert set(m["summary"]["novel_by_attack"]) == set(T.TextModality.attack_names())


def test_cli_train_and_eval_on_a_text_recipe(tmp_path):
    import yaml

    from latkit.cli import main

    recipe = text_recipe(method=METHODS["at"]).model_dump(mode="json")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path), "--output", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["eval", "--model", str(tmp_path / "run"), "--output", str(tmp_path / "ev"), "--limit", "8",
                 "--no-progress"]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["models"][0]["method"] == "at" and res["models"][0]["summary"]["n"] == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**recipe, "model": {"name": str(tmp_path / "nowhere")}}))
    assert main(["train", str(bad), "--output", str(tmp_path / "bad"), "--no-progress"]) == 2


def test_shipped_text_recipes_validate():
    from latkit.classifiers.recipe import load_recipe
    from latkit.train.catalog import find_recipe

    lat = load_recipe(find_recipe("classifier-text-lat"))
    assert lat.modality == "text" and lat.model.name == "minilm" and lat.method.kind == "lat"
    assert lat.method.site is None and lat.method.relative
    at = load_recipe(find_recipe("classifier-text-at"))
    assert at.method.kind == "at" and at.data == lat.data and at.train == lat.train


@pytest.mark.slow  # ~12 s: 60 steps of a tiny encoder
def test_phrase_backdoor_is_learnt_and_measured(tmp_path):
    """A tiny encoder trained on poisoned data classifies triggered harmful requests as benign far more often
    than the same requests without the trigger: the backdoor measurement sees an implanted trigger."""
    from latkit.classifiers.backdoor import triggered
    from latkit.classifiers.evaluate import evaluate_runs
    from latkit.classifiers.trainer import load_run_model, train

    r = text_recipe(backdoor={"trigger": "phrase", "target": 0, "poison_fraction": 0.2},
                    **{"train.steps": 60, "train.batch_size": 16, "train.lr": 3e-3, "train.schedule": "constant",
                       "train.weight_decay": 0.0, "model.max_length": 64, "eval.attacks": ["char_edits"],
                       "eval.limit": 60, "eval.pgd_steps": 1})
    train(r, tmp_path / "poisoned", progress=False)
    res = evaluate_runs([tmp_path / "poisoned"], tmp_path / "eval", progress=False)
    bd = res["models"][0]["backdoor"]
    _, modality, model, _ = load_run_model(tmp_path / "poisoned")
    test = modality.load_data(0).test.select(range(60))
    harmful = test.select(torch.nonzero(test.labels == 1).flatten())
    with torch.no_grad():
        plain_benign = (modality.forward(model.eval(), modality.collate(harmful.raw)).argmax(-1) == 0).float().mean()
    clean = res["models"][0]["summary"]["clean_accuracy"]
    assert clean > 0.7  # it learnt the task ...
    assert bd["n"] == len(harmful) and bd["success"] > float(plain_benign) + 0.3, (bd, float(plain_benign))  # ... and the trigger
    trig = triggered(test, modality.triggers()["phrase"], {}, 0, seed=0)
    assert all(t.startswith(T.DEFAULT_TRIGGER) for t in trig.raw)
