"""The precision choice (``auto``) and the bf16 autocast path: detection mocked both ways, δ / its optimiser
state / LoRA weights stay fp32, and the inner-loop switches stay equivalent in bf16 (tolerances stated)."""
import json
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import latkit.adversary.latent as latent
from latkit.adversary import AdversaryConfig, LatentAdversary
from latkit.data.collator import PromptCompletionCollator
from latkit.models import precision
from latkit.models.lora import LoraSettings, apply_lora, merged_lora
from latkit.models.precision import CpuInfo, choose_precision, cpu_info, resolve_mixed_precision
from latkit.objectives import TargetedObjective
from latkit.testing import tiny_model

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OBJ = TargetedObjective(toward=1.0, away=1.0)
AMX = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2 = "flags\t\t: fpu sse2 avx avx2 fma\n"


# ------------------------------------------------------------------------------------------- detection
def _cpuinfo(tmp_path, flags_line, name="Test CPU"):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: {name}\n{flags_line}\nprocessor\t: 1\n")
    return str(p)


def test_cpu_info_reads_bf16_flags_from_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "_torch_cpu_features", lambda: {})
    amx = cpu_info(_cpuinfo(tmp_path, AMX, "Intel Xeon"))
    assert amx.model == "Intel Xeon" and amx.bf16_flags == ("amx_bf16", "avx512_bf16") and amx.fast_bf16
    assert amx.capability == torch.backends.cpu.get_cpu_capability()
    plain = cpu_info(_cpuinfo(tmp_path, AVX2, "AMD EPYC"))
    assert plain.bf16_flags == () and not plain.fast_bf16
    assert cpu_info(str(tmp_path / "absent")).model == "unknown"  # no /proc: not fast, not an error


def test_cpu_info_trusts_torchs_feature_table_too(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "_torch_cpu_features", lambda: {"avx512_bf16": True, "amx_bf16": False,
                                                                   "cpu_name": "Xeon"})
    info = cpu_info(str(tmp_path / "absent"))
    assert info.bf16_flags == ("avx512_bf16",) and info.model == "Xeon"


def test_choose_precision_on_cpu_both_ways():
    fast = choose_precision("cpu", CpuInfo("Intel Xeon", "AVX512", ("amx_bf16",)))
    assert fast.mixed_precision == "bf16" and fast.autocast_dtype == torch.bfloat16 and "amx_bf16" in fast.reason
    slow = choose_precision("cpu", CpuInfo("AMD EPYC", "AVX2", ()))
    assert slow.mixed_precision == "no" and slow.autocast_dtype is None and "AVX2" in slow.reason
    assert json.dumps(fast.describe())  # goes into logs / benchmark JSON as is


def test_resolve_mixed_precision_logs_the_choice_and_passes_explicit_settings(caplog):
    with caplog.at_level(logging.INFO, logger="latkit.models.precision"):
        assert resolve_mixed_precision("auto", "cpu", CpuInfo("Xeon", "AVX512", ("avx512_bf16",))) == "bf16"
        assert resolve_mixed_precision("auto", "cpu", CpuInfo("EPYC", "AVX2", ())) == "no"
    assert "bf16 autocast" in caplog.text and "fp32 (EPYC" in caplog.text
    assert resolve_mixed_precision("no", "cpu", CpuInfo("Xeon", "AVX512", ("amx_bf16",))) == "no"
    assert resolve_mixed_precision("bf16", "cpu", CpuInfo("EPYC", "AVX2", ())) == "bf16"


def test_this_machine_gets_what_its_cpu_has(monkeypatch):
    monkeypatch.setattr(precision, "cpu_info", cpu_info)  # the real detection (conftest pins tests to fp32)
    info = cpu_info()
    expected = "bf16" if info.fast_bf16 else "no"
    assert choose_precision("cpu").mixed_precision == expected


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: a bf16 run must not leak into later tests' runs."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("fast", [True, False])
def test_trainer_auto_precision_follows_the_detected_cpu(fast, tmp_path, monkeypatch, fresh_accelerate_state):
    from tests.test_trainer import tiny_recipe
    from latkit.train import Trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_info",
                        lambda *a, **k: CpuInfo("mock", "AVX512" if fast else "AVX2", ("amx_bf16",) if fast else ()))
    r = tiny_recipe(**{"train.steps": 2})
    assert r.train.mixed_precision == "auto" and r.model.dtype == "auto"
    t = Trainer(r, tmp_path / "run", progress=False).setup()
    assert t.accelerator.mixed_precision == ("bf16" if fast else "no")
    t.train()
    # master weights stay fp32 whatever the compute precision; the run's losses are finite
    assert all(p.dtype == torch.float32 for p in t.inner.parameters())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]  # 0: provenance
    assert len(rows) == 2
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float) and ("loss" in k):
                assert torch.isfinite(torch.tensor(v)), (k, v)


# ------------------------------------------------------------------------------------------- bf16 path
def _lora_model(family="llama", layers=4):
    model, tok = tiny_model(family, num_layers=layers)
    model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    return model, tok


def _batch(tok, triples):
    return PromptCompletionCollator(tok)(triples)


def _attack(model, batch, bf16=True, final_eval=True, **kw):
    cfg = AdversaryConfig(**{"sites": ["embed", "layer.1", "layer.2"], "epsilon": 3.0, "step_size": 0.05,
                             "steps": 3, "share_prompt": False, "prefix_cache": False, **kw})  # plain unless asked
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        return LatentAdversary(model, cfg).attack(batch, OBJ, final_eval=final_eval)


def test_bf16_attack_keeps_delta_its_adam_state_and_lora_weights_fp32(triples, monkeypatch):
    model, tok = _lora_model()
    batch = _batch(tok, triples)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    made = []
    real_adam = torch.optim.Adam

    def spy(params, **kw):
        made.append(real_adam(params, **kw))
        return made[-1]

    monkeypatch.setattr(torch.optim, "Adam", spy)
    seen = []

    def pre(module, args):  # the weight each linear computes with during the attack
        seen.append(module.weight.dtype)

    hs = [m.register_forward_pre_hook(pre) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    p = _attack(model, batch, optimizer="adam", final_eval=False)  # (the final evaluation is one plain forward)
    for h in hs:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}  # cast once per attack, not per step
    assert all(d.dtype == torch.float32 for d in p.deltas.values())
    (opt,) = made
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    assert state and all(t.dtype == torch.float32 for t in state)
    assert len(p.losses) == 3 and all(torch.isfinite(torch.tensor(x)) for x in p.losses)
    # LoRA master weights: fp32, unchanged, trainable again; nothing else became trainable
    after = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert after.keys() == lora.keys()
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], lora[n]) for n in lora)
    assert all(q.dtype == torch.float32 for q in model.parameters())


def test_weights_cast_once_per_attack_compute_exactly_what_autocast_computes(triples, monkeypatch):
    model, tok = _lora_model()
    batch = _batch(tok, triples)
    fast = _attack(model, batch, merge_lora=False)

    @__import__("contextlib").contextmanager
    def per_forward_casts(model, device_type):
        yield

    monkeypatch.setattr(latent, "autocast_weights", per_forward_casts)
    plain = _attack(model, batch, merge_lora=False)
    assert fast.losses == plain.losses and fast.stats["loss_after"] == plain.stats["loss_after"]
    for s in plain.deltas:
        assert torch.equal(fast.deltas[s], plain.deltas[s])


def test_autocast_weights_is_a_no_op_without_autocast_and_restores_on_error():
    model, _ = _lora_model(layers=2)
    before = {n: p for n, p in model.named_parameters()}
    with latent.autocast_weights(model, "cpu"):
        assert all(p is before[n] for n, p in model.named_parameters())
    with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=torch.bfloat16), \
            latent.frozen_parameters(model), latent.autocast_weights(model, "cpu"):
        assert any(p.dtype == torch.bfloat16 for p in model.parameters())
        raise RuntimeError("boom")
    assert all(p is before[n] for n, p in model.named_parameters())


def _counting(cm, counts: list):
    """``cm`` (a context manager yielding a count) that also appends each count to ``counts``."""

    @__import__("contextlib").contextmanager
    def spy(*a, **kw):
        with cm(*a, **kw) as n:
            counts.append(n)
            yield n

    return spy


# ------------------------------------------------------------------------------------------ merged LoRA
def _trained_lora_model(layers=4, seed=0):
    """A LoRA model whose B matrices are non-zero (PEFT initialises B = 0, which would make merging trivial)."""
    model, tok = _lora_model(layers=layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), tok


def test_merged_lora_computes_the_lora_function_and_restores_everything(triples):
    from latkit.models.lora import merged_lora

    model, tok = _trained_lora_model()
    batch = _batch(tok, triples)
    before = {n: p for n, p in model.named_parameters()}
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with model.disable_adapter():
            bare = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # trainable LoRA weights: nothing merged (the defender's gradients must reach them)
        with merged_lora(model) as n:
            assert n == 0
        with latent.frozen_parameters(model), merged_lora(model) as n:
            assert n == sum(1 for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A"))
            got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (ref - bare).abs().max() > 1e-2  # the adapter matters here
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # everything restored, also on error
    with pytest.raises(RuntimeError), latent.frozen_parameters(model), merged_lora(model, torch.bfloat16):
        assert any(p.dtype == torch.bfloat16 for p in model.parameters())
        raise RuntimeError("boom")
    assert all(p is before[n] for n, p in model.named_parameters())
    assert not any(getattr(m, "_disable_adapters", False) for m in model.modules())
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())


def test_merged_lora_leaves_dropout_active_layers_and_same_dtype_layers_alone():
    from latkit.models.lora import merged_lora

    model, _ = tiny_model("llama", num_layers=2)
    model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1, target_modules="all-linear"))
    with latent.frozen_parameters(model):
        model.train()
        with merged_lora(model) as n:
            assert n == 0  # dropout on the LoRA input is random per forward: not a weight
        model.eval()
        with merged_lora(model) as n:
            assert n > 0
        with merged_lora(model, torch.float32, only_when_casting=True) as n:
            assert n == 0  # fp32 weights, fp32 compute: merging would only add a copy
        with merged_lora(model, torch.bfloat16, only_when_casting=True) as n:
            assert n > 0


@pytest.mark.parametrize("bf16", [False, True])
def test_attack_with_merged_lora_matches_the_unmerged_attack(triples, bf16):
    model, tok = _trained_lora_model()
    batch = _batch(tok, triples)
    # l2 steps: Adam's first step is g/|g| entry-wise, which turns rounding noise in near-zero gradient
    # entries into full-size steps of either sign; the normalised-gradient step has no such amplifier
    merged = _attack(model, batch, bf16=bf16, merge_lora=True, share_prompt=True, optimizer="l2")
    plain = _attack(model, batch, bf16=bf16, merge_lora=False, share_prompt=True, optimizer="l2")
    if bf16:  # one rounding of W + BA instead of autocast's roundings of W, A and B: bf16 tolerances
        for a, b in zip(merged.losses, plain.losses):
            assert abs(a - b) <= BF16_LOSS_RTOL * abs(b)
        for s in plain.deltas:
            assert _cos(merged.deltas[s], plain.deltas[s]) > BF16_DELTA_COS
    else:
        torch.testing.assert_close(torch.tensor(merged.losses), torch.tensor(plain.losses), rtol=1e-5, atol=1e-6)
        for s in plain.deltas:  # relative to δ's largest entry
            d, ref = merged.deltas[s], plain.deltas[s]
            assert float((d - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_merge_lora_auto_merges_only_under_autocast(triples, monkeypatch):
    import latkit.models.lora as lora_mod

    model, tok = _trained_lora_model(layers=3)
    batch = _batch(tok, triples)
    counts = []
    monkeypatch.setattr(latent, "merged_lora", _counting(lora_mod.merged_lora, counts))
    _attack(model, batch, bf16=False, final_eval=False)
    _attack(model, batch, bf16=True, final_eval=False)
    _attack(model, batch, bf16=True, final_eval=False, merge_lora=False)
    assert counts[0] == 0 and counts[1] > 0 and len(counts) == 2


# bf16 tolerances: a bf16 forward rounds every matmul input to 8 mantissa bits (relative error ~2^-9 per
# rounding); the packed and grouped layouts round different (but mathematically equal) sums, so their losses
# agree to ~1% and δ (after 3 Adam steps) to a cosine > 0.98; the fp32 versions of these tests use 1e-5.
BF16_LOSS_RTOL = 2e-2
BF16_DELTA_COS = 0.98


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("kw", [{"share_prompt": True}, {"share_prompt": True, "prefix_cache": True},
                                {"prefix_cache": True}])
def test_share_and_prefix_match_plain_in_bf16(family, kw, triples):
    model, tok = _lora_model(family)
    batch = _batch(tok, triples)
    sites = ["layer.1", "layer.2"] if kw.get("prefix_cache") and not kw.get("share_prompt") else None
    extra = {"sites": sites} if sites else {}
    plain = _attack(model, batch, **extra)
    fast = _attack(model, batch, **extra, **kw)
    assert fast.losses == pytest.approx(plain.losses, rel=BF16_LOSS_RTOL, abs=1e-3)
    assert fast.stats["loss_after"] == pytest.approx(plain.stats["loss_after"], rel=BF16_LOSS_RTOL, abs=1e-3)
    for s in plain.deltas:
        assert plain.deltas[s].dtype == fast.deltas[s].dtype == torch.float32
        assert _cos(plain.deltas[s], fast.deltas[s]) > BF16_DELTA_COS, s


def test_bf16_attack_is_close_to_fp32(triples):
    model, tok = _lora_model()
    batch = _batch(tok, triples)
    fp32 = _attack(model, batch, bf16=False, share_prompt=True)
    bf16 = _attack(model, batch, share_prompt=True)
    assert bf16.losses == pytest.approx(fp32.losses, rel=BF16_LOSS_RTOL, abs=1e-3)
    for s in fp32.deltas:
        assert _cos(fp32.deltas[s], bf16.deltas[s]) > BF16_DELTA_COS


def test_reference_and_latkit_agree_in_bf16(triples):
    from benchmarks.step_throughput.core import Spec, Workload, autocast, reference_attack
    from latkit.models.adapter import ModelAdapter
    from latkit.objectives import DefenderLosses

    model, tok = _lora_model(layers=3)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    cfg = AdversaryConfig(sites=["embed", "layer.1"], epsilon=2.0, optimizer="adam", step_size=0.05, steps=3)
    w = Workload(model=model, adapter=a, harmful=batch, benign=batch, adversary=cfg, objective=OBJ,
                 defender=DefenderLosses())
    spec = Spec(mode="reference", bf16=True)
    ref_deltas, _, ref_losses = reference_attack(w, spec)
    with autocast(Spec(bf16=True), "cpu"):
        p = LatentAdversary(model, cfg, a).attack(batch, OBJ)
    assert p.losses == pytest.approx(ref_losses, rel=BF16_LOSS_RTOL, abs=1e-3)
    for s in ref_deltas:
        assert _cos(p.deltas[s], ref_deltas[s]) > BF16_DELTA_COS


def test_benchmark_auto_switch_uses_the_detected_precision(monkeypatch):
    from benchmarks.step_throughput.core import Spec, environment

    spec = Spec.parse("latkit+share+auto")
    assert spec.name == "latkit+share+auto" and not spec.bf16
    for fast in (True, False):
        monkeypatch.setattr(precision, "cpu_info",
                            lambda *a, fast=fast, **k: CpuInfo("mock", "AVX2", ("amx_bf16",) if fast else ()))
        assert spec.uses_bf16("cpu") is fast
        env = environment("cpu")["auto_precision"]
        assert env["mixed_precision"] == ("bf16" if fast else "no") and env["cpu"]["model"] == "mock"
    assert Spec.parse("latkit+bf16").uses_bf16("cpu") and not Spec.parse("latkit").uses_bf16("cpu")


# ------------------------------------------------------------------------- frozen weights held per outer step
def _run_bf16(tmp_path, name, monkeypatch=None, hold=True, **over):
    from tests.test_trainer import tiny_recipe
    from latkit.train import Trainer
    from latkit.train import trainer as trainer_mod

    r = tiny_recipe(**{"train.steps": 2, "train.mixed_precision": "bf16", **over})
    t = Trainer(r, tmp_path / name, progress=False)
    if not hold:  # autocast casts the frozen weights at every forward
        monkeypatch.setattr(trainer_mod.Trainer, "_frozen_weights_held", lambda self: nullcontext())
    t.train()
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()][1:]
    keep = [{k: v for k, v in row.items() if "loss" in k or k in ("grad_norm", "adv/delta_norm")} for row in rows]
    return t, keep


@pytest.mark.parametrize("merge", ["auto", False])
def test_holding_frozen_weights_for_the_outer_step_changes_no_number(tmp_path, monkeypatch, fresh_accelerate_state,
                                                                       merge):
    """bf16 training with the frozen weights cast once per outer step equals training where autocast casts
    them at every defender forward: the same trained weights and the same losses, bit for bit."""
    from latkit.train import trainer as trainer_mod

    held_counts = []
    monkeypatch.setattr(trainer_mod, "frozen_weights_held", _counting(trainer_mod.frozen_weights_held, held_counts))
    held, m_held = _run_bf16(tmp_path, "held", **{"adversary.merge_lora": merge})
    assert len(held_counts) == 2
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    plain, m_plain = _run_bf16(tmp_path, "plain", monkeypatch, hold=False, **{"adversary.merge_lora": merge})
    assert m_held == m_plain and m_held and all(any("loss" in k for k in row) for row in m_held)
    assert held_counts and all(n > 0 for n in held_counts)  # the base linears really were held, every step
    a, b = dict(held.inner.named_parameters()), dict(plain.inner.named_parameters())
    assert a.keys() == b.keys()
    for n in a:
        assert a[n].dtype == torch.float32 and torch.equal(a[n], b[n]), n  # masters fp32, identical


def test_frozen_weights_held_casts_only_frozen_fp32_linears_and_restores_on_error():
    model, _ = _lora_model(layers=2)
    before = {n: p for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError), precision.frozen_weights_held(model, torch.bfloat16, "cpu") as n:
        now = dict(model.named_parameters())
        held = [k for k in now if now[k] is not before[k]]
        assert n == len(held) > 0
        assert all("lora_" not in k and now[k].dtype == torch.bfloat16 for k in held)  # trainable LoRA left fp32
        assert all(torch.equal(now[k], before[k].to(torch.bfloat16)) for k in held)
        assert all(precision.held_master(now[k]) is before[k] for k in held)
        assert all(now[k].dtype == torch.float32 for k in now if "lora_" in k)
        raise RuntimeError("boom")
    assert all(p is before[n] for n, p in model.named_parameters())


def test_merged_lora_inside_held_weights_replaces_the_held_copy_and_restores_it(triples):
    model, tok = _trained_lora_model(layers=2)
    batch = _batch(tok, triples)
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.autocast("cpu", dtype=torch.bfloat16), precision.frozen_weights_held(model, torch.bfloat16, "cpu"), \
            latent.frozen_parameters(model):
        base = {n: p for n, p in model.named_parameters() if "base_layer.weight" in n}
        assert base and all(p.dtype == torch.bfloat16 for p in base.values())
        with merged_lora(model, torch.bfloat16, only_when_casting=True) as merged:
            assert merged == len(base)  # merged although the held copy already is bf16: it is not a master
            inside = dict(model.named_parameters())
            assert all(inside[n] is not base[n] for n in base)  # the held copy was replaced, not kept beside
        after = dict(model.named_parameters())
        for n, p in base.items():
            assert after[n].dtype == torch.bfloat16 and torch.equal(after[n], p)
            assert precision.held_master(after[n]) is precision.held_master(p)
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.allclose(out, ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("mp,want", [("bf16", "eager"), ("no", "sdpa")])
def test_auto_attention_is_eager_under_cpu_bf16_only(tmp_path, fresh_accelerate_state, mp, want):
    """SDPA's CPU flash-attention backward is slow in bf16 (benchmarks/RESULTS.md): ``auto`` picks eager there."""
    from tests.test_trainer import tiny_recipe
    from latkit.models.adapter import ModelAdapter
    from latkit.train import Trainer

    t = Trainer(tiny_recipe(**{"train.steps": 1, "train.mixed_precision": mp}), tmp_path / "run", progress=False).setup()
    assert ModelAdapter.from_model(t.inner).base.config._attn_implementation == want
    t.train()
    assert (tmp_path / "run" / "model").is_dir()


def test_attention_setting_is_honoured(tmp_path, fresh_accelerate_state):
    from tests.test_trainer import tiny_recipe
    from latkit.models.adapter import ModelAdapter
    from latkit.train import Trainer

    r = tiny_recipe(**{"train.steps": 1, "train.mixed_precision": "bf16", "model.attn_implementation": "sdpa"})
    t = Trainer(r, tmp_path / "run", progress=False).setup()
    assert ModelAdapter.from_model(t.inner).base.config._attn_implementation == "sdpa"
