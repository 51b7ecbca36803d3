"""Bad numbers, stale run dirs, corrupt / missing checkpoints, metrics repair, extension (#21), in process."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latkit.cli import main
from latkit.train import Trainer, load_recipe, recipe_from_dict
from latkit.train.checkpoint import verify_checkpoint
from latkit.train.trainer import NonFiniteError, TrainError

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "recipes" / "tiny-test.yaml")
# dropout on and random δ init: a resume that lost the RNG state would diverge
NOISY = {"finetune.lora.dropout": 0.2, "adversary.init": "random", "train.checkpoint_every": 1,
         "train.keep_checkpoints": 3, "adversary.steps": 1, "train.batch_size": 2, "train.benign_batch_size": 2}


def recipe(**over):
    base = load_recipe(TINY).model_dump(mode="json")
    fix = REPO / "tests" / "fixtures"
    base["data"]["harmful"]["source"] = str(fix / "harmful.jsonl")
    base["data"]["benign"]["source"] = str(fix / "benign.jsonl")
    base["data"]["max_length"] = 96
    return recipe_from_dict(base, [f"{k}={json.dumps(v)}" for k, v in over.items()])


def trained(out, *, resume=False, **over):
    t = Trainer(recipe(**over), out, resume=resume, progress=False)
    t.train()
    return {k: v.detach().clone() for k, v in t.inner.named_parameters() if v.requires_grad}


def cli(capsys, *argv):
    code = main(["train", TINY, "--no-progress", *argv])
    return code, capsys.readouterr()


# ------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("override,needle", [
    ("adversary.epsilon=.nan", "adversary.epsilon"),
    ("adversary.epsilon=.inf", "adversary.epsilon"),
    ("adversary.epsilon=0", "adversary.epsilon"),
    ("adversary.epsilon=-1", "adversary.epsilon"),
    ("adversary.epsilon={embed: 1.0}", "missing ['layer.0']"),
    ("adversary.epsilon={embed: 1.0, layer.0: .nan}", "adversary.epsilon"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.max_grad_norm=-1", "train.max_grad_norm"),
    ("train.max_grad_norm=0", "train.max_grad_norm"),
    ("train.max_grad_norm=.nan", "train.max_grad_norm"),
    ("defender.kl=.inf", "defender.kl"),
    ("adversary.step_size=.nan", "adversary.step_size"),
    ("train.steps=0", "train.steps"),
    ("model.name=tiny-random:nosuch", "unknown tiny family"),
])
def test_bad_numbers_and_names_are_one_line_exit_2_and_leave_nothing(tmp_path, capsys, override, needle):
    out = tmp_path / "run"
    code, io = cli(capsys, "-o", str(out), "--set", "train.steps=1", "--set", override)
    assert code == 2, io.err
    assert io.err.count("\n") == 1 and io.err.startswith("latkit: error:") and needle in io.err, io.err
    assert not out.exists()  # a failed validation leaves no recipe.yaml and no data cache behind


def test_non_finite_loss_stops_the_run_before_anything_is_saved(tmp_path):
    from latkit.testing import tiny_model

    model, tok = tiny_model("llama")
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))  # a broken base model: NaN logits from step 1
    t = Trainer(recipe(**{"train.steps": 2, "train.checkpoint_every": 1}), tmp_path / "run", model=model,
                tokenizer=tok, progress=False)
    with pytest.raises(NonFiniteError, match="step 1: the (loss|gradient norm) is"):
        t.train()
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_weights_blown_up_by_the_learning_rate_stop_with_exit_2_and_keep_the_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code, io = cli(capsys, "-o", str(out), "--set", "train.steps=4", "--set", "train.checkpoint_every=1",
                   "--set", "train.lr=1.0e+30", "--set", "train.max_grad_norm=null")
    assert code == 2 and ("NaN/inf" in io.err or "not finite" in io.err), io.err
    assert io.err.count("\n") == 1, io.err
    assert not (out / "model").exists()
    for ckpt in (out / "checkpoints").glob("step-*"):  # whatever was saved is finite and intact
        assert verify_checkpoint(ckpt) is None
        assert all(torch.isfinite(v).all() for v in load_file(str(ckpt / "trainable.safetensors")).values())


# ------------------------------------------------------------------------ run dir state
def test_stale_data_cache_is_rebuilt_and_failed_runs_leave_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, io = cli(capsys, "-o", str(out), "--set", "train.steps=1", "--set", "adversary.sites=[layer.9]")
    assert code == 2 and "layer.9" in io.err and not out.exists(), io.err
    # a data cache from another data section (e.g. left by an older latkit) must not be reused
    (out / "data").mkdir(parents=True)
    rows = (REPO / "tests" / "fixtures" / "harmful.jsonl").read_text().splitlines()
    (out / "data" / "harmful.jsonl").write_text("\n".join(
        json.dumps({"prompt": json.loads(r)["prompt"], "harmful": "x", "refusal": "y"}) for r in rows) + "\n")
    code, io = cli(capsys, "-o", str(out), "--set", "train.steps=1", "--set", "data.harmful.limit=3")
    assert code == 0, io.err
    assert len((out / "data" / "harmful.jsonl").read_text().splitlines()) == 3
    assert (out / "data" / "fingerprint").is_file()


def test_empty_metrics_from_a_step_1_failure_does_not_block_a_fresh_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    code, io = cli(capsys, "-o", str(out), "--set", "train.steps=1")
    assert code == 0, io.err


# ------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("ref") / "run", **{**NOISY, "train.steps": 3})


def _stop_after_step_2(trainer):
    """A trainer callback: stop as a kill would, after step 2 (and its checkpoint)."""
    if trainer.step == 2:
        raise KeyboardInterrupt("stopped after step 2")


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A run stopped after step 2 (checkpoints 1 and 2), to be copied and damaged."""
    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe(**{**NOISY, "train.steps": 3}), out, progress=False, callbacks=[_stop_after_step_2]).train()
    return out


def _damage(path: Path, how: str):
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,how", [("trainable.safetensors", "truncate"), ("state.json", "empty"),
                                      ("optimizer.pt", "truncate"), ("rng-0.pt", "delete"),
                                      ("scheduler.pt", "flip"), ("manifest.json", "delete")])
def test_corrupt_newest_checkpoint_falls_back_to_the_older_one_with_a_warning(reference, killed, tmp_path, capsys,
                                                                             name, how):
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    _damage(out / "checkpoints" / "step-000002" / name, how)
    resumed = trained(out, resume=True, **{**NOISY, "train.steps": 3})
    io = capsys.readouterr()
    assert "warning: checkpoint step-000002 is not intact" in io.err and "resumed from step-000001" in io.out
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_no_intact_checkpoint_refuses_with_one_line(killed, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    _damage(out / "checkpoints" / "step-000002" / "trainable.safetensors", "truncate")
    (out / "checkpoints" / "step-000001" / "rng-0.pt").unlink()
    code, io = cli(capsys, "-o", str(out), "--resume", *sum((["--set", f"{k}={json.dumps(v)}"] for k, v in
                   {**NOISY, "train.steps": 3, "data.harmful.source": str(REPO / "tests/fixtures/harmful.jsonl"),
                    "data.benign.source": str(REPO / "tests/fixtures/benign.jsonl"), "data.max_length": 96}.items()), []))
    assert code == 2, io.err
    errors = [line for line in io.err.splitlines() if line.startswith("latkit: error")]
    assert len(errors) == 1 and "no intact checkpoint" in errors[0] and "rng-0.pt is missing" in errors[0], io.err


def test_the_rng_restore_matters_here(reference, killed, tmp_path, monkeypatch):
    """Sensitivity check: with dropout on, a resume that skipped the RNG state would not match (so the
    byte-for-byte resume tests above can fail)."""
    import latkit.train.trainer as T

    out = tmp_path / "run"
    shutil.copytree(killed, out)
    monkeypatch.setattr(T, "set_rng_state", lambda *a, **k: None)
    resumed = trained(out, resume=True, **{**NOISY, "train.steps": 3})
    assert any(not torch.equal(reference[k], resumed[k]) for k in reference)


def test_cut_off_metrics_line_is_repaired_on_resume(reference, killed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss/tot')  # a full disk or a kill mid-write
    resumed = trained(out, resume=True, **{**NOISY, "train.steps": 3})
    lines = (out / "metrics.jsonl").read_text().splitlines()[1:]  # row 0: the provenance header
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_a_finished_run_can_be_extended_not_shortened(reference, tmp_path):
    out = tmp_path / "run"
    trained(out, **{**NOISY, "train.steps": 2})
    with pytest.raises(TrainError, match="recipe differs"):
        Trainer(recipe(**{**NOISY, "train.steps": 3, "train.lr": 0.5}), out, resume=True, progress=False).setup()
    extended = trained(out, resume=True, **{**NOISY, "train.steps": 3, "description": "now 3 steps"})
    assert all(torch.equal(reference[k], extended[k]) for k in reference)
    assert "steps: 3" in (out / "recipe.yaml").read_text()
    with pytest.raises(TrainError, match="past train.steps"):
        Trainer(recipe(**{**NOISY, "train.steps": 2}), out, resume=True, progress=False).setup()


def test_run_outputs_are_readable_and_checkpoints_carry_a_manifest(killed):
    umask = os.umask(0)
    os.umask(umask)
    out = killed
    for d in [out / "checkpoints" / "step-000002"]:
        assert (d.stat().st_mode & 0o777) == 0o777 & ~umask
        assert all((f.stat().st_mode & 0o777) == 0o666 & ~umask for f in d.iterdir())
        manifest = json.loads((d / "manifest.json").read_text())["files"]
        assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json", "rng-0.pt",
                "adapter_model.safetensors", "adapter_config.json"} <= set(manifest)  # + the loadable model
        assert set(manifest) == {f.name for f in d.iterdir()} - {"manifest.json"}
        assert verify_checkpoint(d) is None


def test_final_model_dir_is_readable(tmp_path):
    out = tmp_path / "run"
    trained(out, **{"train.steps": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model").stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in (out / "model").iterdir())
