import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latkit.train import Trainer, load_recipe, recipe_from_dict
from latkit.train.recipe import RecipeError

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(**over):
    base = load_recipe(REPO / "recipes" / "tiny-test.yaml").model_dump(mode="json")
    fix = REPO / "tests" / "fixtures"
    base["data"]["harmful"]["source"] = str(fix / "harmful.jsonl")
    base["data"]["benign"]["source"] = str(fix / "benign.jsonl")
    base["data"]["max_length"] = 96
    base["train"]["steps"] = 3
    overrides = [f"{k}={json.dumps(v)}" for k, v in over.items()]
    return recipe_from_dict(base, overrides)


def stop_after(n: int):
    """A trainer callback that stops the run after step ``n`` as a kill would (after that step's
    checkpoint, before the next step), unless the run is finished anyway."""

    def stop(trainer):
        if n <= trainer.step < trainer.recipe.train.steps:
            raise KeyboardInterrupt(f"stopped after step {trainer.step}")

    return stop


def run(recipe, out, **kw):
    t = Trainer(recipe, out, progress=False, **kw)
    t.train()
    return t


def weights(t):
    return {k: v.detach().clone() for k, v in t.inner.named_parameters()}


def trainable(t):
    return {k: v.detach().clone() for k, v in t.inner.named_parameters() if v.requires_grad}


def test_defender_changes_only_trainable_parameters(tmp_path):
    r = tiny_recipe()
    t = Trainer(r, tmp_path / "a", progress=False).setup()
    before = weights(t)
    t.train()
    after = weights(t)
    names = {k for k, p in t.inner.named_parameters() if p.requires_grad}
    assert names and all("lora_" in k for k in names)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= names
    assert any("lora_B" in k for k in changed)


def test_run_outputs_and_metrics(tmp_path):
    t = run(tiny_recipe(), tmp_path / "r")
    out = tmp_path / "r"
    assert (out / "recipe.yaml").read_text() == t.recipe.to_yaml()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()[1:]]  # [0]: provenance
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["adv/loss_after"] < r["adv/loss_before"]  # PGD worked every step
        for site in ("embed", "layer.0"):
            assert 0 < r[f"adv/{site}/norm_mean"] <= r[f"adv/{site}/norm_max"] <= 1.0 + 1e-5
            assert 0 <= r[f"adv/{site}/active_frac"] <= 1
    # the saved adapter loads back with from_pretrained and reproduces the trained weights
    from latkit.models.loading import load_model_and_tokenizer

    m, tok = load_model_and_tokenizer(str(out))
    loaded = {k: v for k, v in m.named_parameters() if "lora_" in k}
    trained = {k: v for k, v in t.inner.named_parameters() if "lora_" in k}
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in loaded)


def test_methods_differ_only_where_the_recipe_says(tmp_path):
    rt = run(tiny_recipe(**{"adversary.objective.kind": "none"}), tmp_path / "rt")
    lat0 = run(tiny_recipe(**{"adversary.steps": 0}), tmp_path / "lat0")  # δ = 0: must equal RT
    lat = run(tiny_recipe(), tmp_path / "lat")
    eat = run(tiny_recipe(**{"adversary.sites": ["embed"]}), tmp_path / "eat")
    rlp = run(tiny_recipe(**{"adversary.objective.kind": "random"}), tmp_path / "rlp")
    w = {n: trainable(t) for n, t in [("rt", rt), ("lat0", lat0), ("lat", lat), ("eat", eat), ("rlp", rlp)]}
    assert all(torch.allclose(w["rt"][k], w["lat0"][k], atol=1e-6) for k in w["rt"])
    for other in ("lat", "eat", "rlp"):
        assert any(not torch.allclose(w["rt"][k], w[other][k]) for k in w["rt"]), other
    m = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()[1:]]  # [0]: provenance
    assert not any(k.startswith("adv/") for k in m("rt")[0])
    assert {k.split("/")[1] for k in m("eat")[0] if k.endswith("norm_mean")} == {"embed"}
    rlp0 = m("rlp")[0]
    assert "adv/loss_before" not in rlp0  # no optimisation
    assert abs(rlp0["adv/embed/norm_mean"] - 1.0) < 1e-5 and abs(rlp0["adv/layer.0/norm_mean"] - 1.0) < 1e-5
    # same data order for all methods
    assert [r["tokens"] for r in m("rt")] == [r["tokens"] for r in m("lat")]


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    over = {"train.steps": 4, "train.checkpoint_every": 2, "adversary.init": "random", "train.grad_accum": 2}
    full = run(tiny_recipe(**over), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe(**over), tmp_path / "killed", callbacks=[stop_after(3)])
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == ["step-000002"]
    resumed = run(tiny_recipe(**over), tmp_path / "killed", resume=True)
    a, b = trainable(full), trainable(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()[1:]]  # [0]: provenance
    assert steps == [1, 2, 3, 4]
    saved = load_file(str(tmp_path / "killed" / "checkpoints" / "step-000004" / "trainable.safetensors"))
    assert all(torch.equal(saved[k], b[k]) for k in saved)


def test_resume_refuses_a_different_recipe_and_fresh_run_refuses_existing_dir(tmp_path):
    from latkit.train import TrainError

    run(tiny_recipe(), tmp_path / "x")
    with pytest.raises(TrainError, match="already holds a run"):
        Trainer(tiny_recipe(), tmp_path / "x", progress=False).setup()
    with pytest.raises(TrainError, match="recipe differs"):
        Trainer(tiny_recipe(**{"train.lr": 0.5}), tmp_path / "x", resume=True, progress=False).setup()


def test_grad_accum_averages(tmp_path):
    """One step on 2 micro-batches of 2 == one step on one batch of 4 (same examples)."""
    base = {"adversary.objective.kind": "none", "train.steps": 1, "defender.kl": 0.0, "defender.sft": 0.0,
            "defender.away": 0.0, "train.max_grad_norm": None, "train.lr": 0.1}
    a = Trainer(tiny_recipe(**base, **{"train.batch_size": 4}), tmp_path / "a", progress=False).setup()
    b = Trainer(tiny_recipe(**base, **{"train.batch_size": 2, "train.grad_accum": 2}), tmp_path / "b",
                progress=False).setup()
    # make both see the same 4 examples: b's two micro-batches are a's batch split in two
    first = a.task.harmful_stream.next()
    a.task.harmful_stream.consumed = 0
    b.task.harmful = [a.task.harmful[i] for i in first]
    b.task.harmful_stream.next = iter([[0, 1], [2, 3]]).__next__
    a.task.harmful = [a.task.harmful[i] for i in first]
    a.task.harmful_stream.next = iter([[0, 1, 2, 3]]).__next__
    # equal-length sequences so the token-mean of the halves equals the mean of the whole
    for t in (a, b):
        t.task.harmful = [type(h)("same length prompt", "No.", "Yes.") for h in t.task.harmful]
    a.train_step()
    b.train_step()
    wa, wb = trainable(a), trainable(b)
    assert any(v.abs().sum() > 0 for k, v in wa.items() if "lora_B" in k)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_recipes_in_repo_validate():
    import yaml

    from latkit.classifiers.recipe import load_recipe as load_classifier_recipe

    files = sorted((REPO / "recipes").glob("*.yaml"))
    assert len(files) >= 4
    for f in files:  # `kind: classifier` recipes have their own schema
        (load_classifier_recipe if (yaml.safe_load(f.read_text()) or {}).get("kind") == "classifier" else load_recipe)(f)


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stpes: 3\n")
    with pytest.raises(RecipeError, match="unknown key 'train.stpes'"):
        load_recipe(bad)
    bad.write_text("adversary:\n  sites: [mlp.3]\n")
    with pytest.raises(RecipeError, match="adversary.sites"):
        load_recipe(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not of the form"):
        recipe_from_dict({}, ["train.steps"])


def test_full_finetuning_trains_every_parameter(tmp_path):
    t = Trainer(tiny_recipe(**{"finetune.method": "full", "train.steps": 1}), tmp_path / "f", progress=False).setup()
    before = weights(t)
    t.train()
    after = weights(t)
    assert all(p.requires_grad for p in t.inner.parameters())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(before)
    assert (tmp_path / "f" / "model" / "model.safetensors").exists()


def test_quantization_without_gpu_is_a_clear_error(tmp_path):
    from latkit.models.loading import ModelLoadError, load_model_and_tokenizer
    from latkit.testing import tiny_model

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load_model_and_tokenizer(str(tmp_path), quantization="4bit")


def test_gradient_checkpointing_reaches_the_adversary_and_changes_nothing(tmp_path):
    """HF checkpoints a block only in training mode: the trainer flags the blocks (not their dropout-
    carrying submodules) as training during the attack, so PGD runs checkpointed, with identical results."""
    plain = run(tiny_recipe(), tmp_path / "plain")
    t = Trainer(tiny_recipe(**{"model.gradient_checkpointing": True}), tmp_path / "ckpt", progress=False).setup()
    calls = {"n": 0}
    for layer in t.adapter.layers:
        inner = layer._gradient_checkpointing_func

        def counted(*a, _f=inner, **k):
            calls["n"] += 1
            return _f(*a, **k)

        layer._gradient_checkpointing_func = counted
    hb, _ = t._micro_batches({})[0]
    t._adversary_mode()
    assert all(layer.training for layer in t.adapter.layers)
    assert not any(m.training for layer in t.adapter.layers for m in layer.modules() if m is not layer)
    t._attack(hb)
    assert calls["n"] > 0  # the PGD forwards were checkpointed
    t.task.harmful_stream.consumed = t.task.benign_stream.consumed = 0
    t.train()
    a, b = trainable(plain), trainable(t)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_training_from_an_adapter_run_starts_from_its_weights(tmp_path):
    """model.name = a LoRA run dir: its adapter is merged first, then a fresh LoRA trains on top (PEFT's
    get_peft_model on a PeftModel would silently replace the loaded adapter with the new one)."""
    from latkit.models.loading import load_model_and_tokenizer

    run(tiny_recipe(), tmp_path / "a")
    first, _ = load_model_and_tokenizer(str(tmp_path / "a"))
    fresh = Trainer(tiny_recipe(), tmp_path / "f", progress=False).setup()
    t = Trainer(tiny_recipe(**{"model.name": str(tmp_path / "a")}), tmp_path / "b", progress=False).setup()
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        moved = (first(ids).logits - fresh.inner(ids).logits).abs().max()
        assert moved > 1e-3  # the first run's adapter does change the function
        torch.testing.assert_close(t.inner(ids).logits, first(ids).logits, atol=1e-5, rtol=1e-5)
    assert trainable(t).keys() == trainable(fresh).keys()  # one fresh adapter, nothing nested
