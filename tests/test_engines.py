"""Which distributed engine the trainer runs, read from the environment `accelerate launch` sets (no launch here)."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from latkit.cli import main
from latkit.train.distributed import EngineError, check_engine, fsdp2_settings, full, shard_as, shard_optimizer_state

ENV = ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD", "ACCELERATE_USE_DEEPSPEED",
       "ACCELERATE_DEEPSPEED_ZERO_STAGE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)


def _acc(kind="MULTI_CPU", n=2):
    from accelerate.utils import DistributedType

    return SimpleNamespace(num_processes=n, distributed_type=DistributedType[kind], device=torch.device("cpu"))


def test_fsdp2_is_applied_by_latkit_only_where_accelerate_does_not(monkeypatch):
    assert fsdp2_settings(_acc()) is None  # not asked for
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp2_settings(_acc()) == {"reshard_after_forward": True}  # accelerate's default for FSDP2
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert fsdp2_settings(_acc()) == {"reshard_after_forward": False}
    assert fsdp2_settings(_acc("FSDP")) is None  # on GPU accelerate shards the model itself
    assert fsdp2_settings(_acc(n=1)) is None  # one process: nothing to shard over


def test_fsdp1_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(EngineError, match="fsdp_version: 2"):
        fsdp2_settings(_acc())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_deepspeed_without_cuda_is_one_clear_line_and_exit_2(monkeypatch, tmp_path, capsys):
    check_engine()  # not asked for: fine
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(EngineError, match="CUDA GPU"):
        check_engine()
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-test.yaml"
    rc = main(["train", str(recipe), "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "DeepSpeed" in err[0] and "CUDA GPU" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_deepspeed_zero3_is_refused_before_it_could_save_empty_weights(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(EngineError, match="ZeRO-3 is not supported.*FSDP2"):
        check_engine()


def test_full_and_shard_as_are_identity_without_sharding():
    t = torch.randn(3, 4)
    assert full(t) is not None and torch.equal(full(t), t)
    assert shard_as(t, torch.zeros(3, 4)) is t
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    sd = opt.state_dict()
    assert shard_optimizer_state(sd, opt) is sd
