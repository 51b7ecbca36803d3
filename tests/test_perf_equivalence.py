"""Every inner-loop optimisation gives the δ-gradients and losses of the plain path (tiny models)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latkit.adversary import AdversaryConfig, LatentAdversary, perturb
from latkit.adversary.prefix import cached_prefix
from latkit.data.collator import PromptCompletionCollator
from latkit.models.adapter import ModelAdapter
from latkit.objectives import TargetedObjective
from latkit.objectives.forward import forward_logits, forward_logits_packed, pack_shared_prompt
from latkit.testing import tiny_model

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FAMILIES = ["llama", "qwen2", "mistral", "gemma2", "gemma3", "gpt_neox", "phi3"]
OBJ = TargetedObjective(toward=1.0, away=1.0)
PLAIN = {"share_prompt": False, "prefix_cache": False}  # the plain path (both switches default on)


def _batch(tok, triples, padding="right"):
    return PromptCompletionCollator(tok, padding_side=padding)(triples)


def _random_deltas(adapter, batch, sites, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    B, T = batch["input_ids"].shape[0] // batch["n_groups"], batch["input_ids"].shape[1]
    return {s: (torch.randn(B, T, adapter.hidden_size, generator=g) * scale).requires_grad_(True) for s in sites}


def _loss_and_grads(model, adapter, batch, deltas, prefix=False):
    """The adversary's loss and its δ-gradients, as one PGD step computes them."""
    mask = batch["prompt_mask"] & batch["attention_mask"].bool()
    ctx = cached_prefix(adapter, lambda: forward_logits(model, batch), list(deltas)) if prefix else None
    if ctx is not None:
        ctx.__enter__()
    try:
        with perturb(adapter, deltas, mask):
            logits, off = forward_logits(model, batch)
        loss, _ = OBJ(logits, batch, off)
        grads = torch.autograd.grad(loss, list(deltas.values()))
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    return loss.detach(), grads


def _assert_close(a, b, atol=1e-5, rtol=1e-4):
    loss_a, grads_a = a
    loss_b, grads_b = b
    assert torch.allclose(loss_a, loss_b, atol=atol, rtol=rtol), (float(loss_a), float(loss_b))
    for ga, gb in zip(grads_a, grads_b):
        assert ga.abs().sum() > 0
        assert torch.allclose(ga, gb, atol=atol, rtol=rtol), float((ga - gb).abs().max())


# ------------------------------------------------------------------------------------------ prefix cache
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_prefix_cache_same_delta_gradients(family, padding, triples):
    model, tok = tiny_model(family, num_layers=4)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples, padding)
    deltas = _random_deltas(a, batch, ["layer.1", "layer.3"])
    plain = _loss_and_grads(model, a, batch, deltas)
    cached = _loss_and_grads(model, a, batch, deltas, prefix=True)
    _assert_close(plain, cached, atol=1e-6, rtol=1e-5)
    assert all("forward" not in layer.__dict__ for layer in a.layers)  # blocks restored


def test_prefix_cache_skips_the_blocks_below_the_site(triples):
    model, tok = tiny_model("llama", num_layers=4)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda m, args, i=i: calls.append(i)) for i, layer in enumerate(a.layers)]
    try:
        deltas = _random_deltas(a, batch, ["layer.2"])
        with cached_prefix(a, lambda: forward_logits(model, batch), ["layer.2"]) as depth:
            assert depth == 2
            assert calls == [0, 1, 2]  # the capture forward stops after block 2
            calls.clear()
            with torch.no_grad(), perturb(a, deltas, batch["prompt_mask"]):
                forward_logits(model, batch)
        # blocks 0..2 are still *called* (their hooks fire) but run the stub, not their compute
        assert calls == [0, 1, 2, 3]
        # a different batch is refused rather than silently given stale activations
        other = _batch(tok, triples[:2])
        with cached_prefix(a, lambda: forward_logits(model, batch), ["layer.2"]):
            with pytest.raises(RuntimeError, match="one batch only"):
                forward_logits(model, other)
    finally:
        for h in hooks:
            h.remove()


def test_prefix_cache_is_a_no_op_with_an_embed_site(triples):
    model, tok = tiny_model("llama", num_layers=3)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    with cached_prefix(a, lambda: forward_logits(model, batch), ["embed", "layer.1"]) as depth:
        assert depth == -1
        assert all("forward" not in layer.__dict__ for layer in a.layers)


@pytest.mark.parametrize("optimizer", ["adam", "sign"])
def test_attack_with_prefix_cache_is_identical(optimizer, triples):
    model, tok = tiny_model("qwen2", num_layers=4)
    batch = _batch(tok, triples)
    out = []
    for prefix in (False, True):
        cfg = AdversaryConfig(sites=["layer.1", "layer.2"], epsilon=3.0, optimizer=optimizer, step_size=0.1, steps=4,
                              prefix_cache=prefix, share_prompt=False)
        out.append(LatentAdversary(model, cfg).attack(batch, OBJ, final_eval=True))
    plain, cached = out
    assert plain.losses == pytest.approx(cached.losses, rel=1e-5, abs=1e-6)
    assert plain.stats["loss_after"] == pytest.approx(cached.stats["loss_after"], rel=1e-5, abs=1e-6)
    for s in plain.deltas:
        assert torch.allclose(plain.deltas[s], cached.deltas[s], atol=1e-5)
    assert plain.stats["loss_after"] < plain.stats["loss_before"]


def test_optimisations_default_on_and_optional():
    assert AdversaryConfig().prefix_cache is True and AdversaryConfig().share_prompt is True
    plain = AdversaryConfig(prefix_cache=False, share_prompt=False)
    assert plain.prefix_cache is False and plain.share_prompt is False


def test_prefix_cache_under_lora_and_gradient_checkpointing(triples):
    from latkit.models.lora import LoraSettings, apply_lora

    model, tok = tiny_model("llama", num_layers=4)
    model = apply_lora(model, LoraSettings(r=4))
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    deltas = _random_deltas(a, batch, ["layer.1"])
    model.eval()
    plain = _loss_and_grads(model, a, batch, deltas)
    a.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # HF checkpoints blocks only in training mode (no dropout in this model)
    try:
        ckpt = _loss_and_grads(model, a, batch, deltas)
        ckpt_prefix = _loss_and_grads(model, a, batch, deltas, prefix=True)
    finally:
        a.base.gradient_checkpointing_disable()
        model.eval()
    _assert_close(plain, ckpt, atol=1e-6, rtol=1e-5)
    _assert_close(plain, ckpt_prefix, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # gradients w.r.t. δ only


# -------------------------------------------------------------------------------- shared-prompt packing
def _packed_loss_and_grads(model, adapter, batch, deltas, prefix=False):
    impl = adapter.base.config._attn_implementation
    packed = pack_shared_prompt(batch, impl)
    assert packed is not None
    Tp = packed["input_ids"].shape[1]
    T = batch["input_ids"].shape[1]
    pd = {}
    for s, d in deltas.items():  # δ on the prompt, which starts every row in both layouts
        z = torch.zeros(d.shape[0], Tp, d.shape[2])
        n = min(T, Tp)
        z[:, :n] = d[:, :n]
        pd[s] = z
    pd = {s: z.requires_grad_(True) for s, z in pd.items()}
    fwd = lambda: forward_logits_packed(model, batch, packed)  # noqa: E731
    ctx = cached_prefix(adapter, fwd, list(pd)) if prefix else None
    if ctx is not None:
        ctx.__enter__()
    try:
        with perturb(adapter, pd, packed["prompt_mask"]):
            logits, off = fwd()
        loss, _ = OBJ(logits, batch, off)
        grads = torch.autograd.grad(loss, list(pd.values()))
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    mask = batch["prompt_mask"][: batch["input_ids"].shape[0] // 2]
    n = min(T, Tp)
    back = []
    for g in grads:  # back to the grouped layout, on the perturbed positions
        o = torch.zeros(g.shape[0], T, g.shape[2])
        o[:, :n] = g[:, :n]
        back.append(o * mask.unsqueeze(-1))
    return loss.detach(), tuple(back)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_packing_same_losses_and_delta_gradients(family, triples):
    model, tok = tiny_model(family, num_layers=4)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    deltas = _random_deltas(a, batch, ["embed", "layer.1", "layer.3"])
    plain = _loss_and_grads(model, a, batch, deltas)
    mask = batch["prompt_mask"][: batch["input_ids"].shape[0] // 2].unsqueeze(-1)
    plain = (plain[0], tuple(g * mask for g in plain[1]))
    _assert_close(plain, _packed_loss_and_grads(model, a, batch, deltas), atol=1e-6, rtol=1e-5)
    _assert_close(plain, _packed_loss_and_grads(model, a, batch, deltas, prefix=True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_grouped_logits_on_completion_tokens(impl, triples):
    model, tok = tiny_model("llama", num_layers=3)
    model.set_attn_implementation(impl)
    batch = _batch(tok, triples)
    packed = pack_shared_prompt(batch, impl)
    # fewer token slots than the grouped layout: the prompt is stored once
    assert packed["input_ids"].numel() < batch["input_ids"].numel()
    with torch.no_grad():
        lg, off = forward_logits(model, batch)
        lp, offp = forward_logits_packed(model, batch, packed)
    assert off == offp and lg.shape == lp.shape
    m = batch["completion_mask"][:, off + 1:]
    assert torch.allclose(lg[:, : m.shape[1]][m], lp[:, : m.shape[1]][m], atol=1e-5)


def test_packing_falls_back_where_it_does_not_apply(triples):
    _, tok = tiny_model("llama", num_layers=2)
    assert pack_shared_prompt(_batch(tok, triples, "left")) is None  # prompts do not start every row
    single = PromptCompletionCollator(tok, completions=("harmful",))(triples)
    assert pack_shared_prompt(single) is None  # one group: nothing to share


@pytest.mark.parametrize("kw", [{"share_prompt": True}, {"share_prompt": True, "prefix_cache": True}])
def test_attack_with_shared_prompt_matches_plain(kw, triples):
    model, tok = tiny_model("llama", num_layers=4)
    batch = _batch(tok, triples)
    out = []
    for extra in (PLAIN, kw):
        cfg = AdversaryConfig(sites=["embed", "layer.1", "layer.2"], epsilon=3.0, optimizer="sign", step_size=0.05,
                              steps=3, **extra)
        out.append(LatentAdversary(model, cfg).attack(batch, OBJ, final_eval=True))
    plain, fast = out
    assert plain.losses == pytest.approx(fast.losses, rel=1e-5, abs=1e-6)
    assert plain.stats["loss_after"] == pytest.approx(fast.stats["loss_after"], rel=1e-5, abs=1e-6)
    assert torch.equal(plain.row_mask, fast.row_mask)
    for s in plain.deltas:
        assert plain.deltas[s].shape == fast.deltas[s].shape
        assert torch.allclose(plain.deltas[s], fast.deltas[s], atol=1e-6)
    # left padding: the option silently uses the grouped forward
    left = _batch(tok, triples, "left")
    cfg = AdversaryConfig(sites=["layer.1"], epsilon=3.0, steps=2, **kw)
    assert len(LatentAdversary(model, cfg).attack(left, OBJ).losses) == 2


# ------------------------------------------------------------------------------ batched vs reference
def test_batched_toward_away_equals_reference_separate_forwards(triples):
    """latkit: one forward over [harmful; refusal] rows, logits only from the first completion position;
    reference: toward and away as separate full-logit forwards, each group trimmed to its own length."""
    from benchmarks.step_throughput.core import _full_logits_loss, _group

    model, tok = tiny_model("llama", num_layers=3)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    deltas = _random_deltas(a, batch, ["embed", "layer.1"])
    latkit = _loss_and_grads(model, a, batch, deltas)
    total = 0.0
    for name, kind in (("harmful", "ce"), ("refusal", "ul")):
        g = _group(batch, name)
        L = g["input_ids"].shape[1]
        with perturb(a, {s: d[:, :L] for s, d in deltas.items()}, g["prompt_mask"] & g["attention_mask"].bool()):
            total = total + _full_logits_loss(model, g, kind)
    ref = (total.detach(), torch.autograd.grad(total, list(deltas.values())))
    _assert_close(latkit, ref, atol=1e-6, rtol=1e-5)


def test_reference_attack_and_latkit_attack_agree(triples):
    from benchmarks.step_throughput.core import Spec, Workload, reference_attack
    from latkit.objectives import DefenderLosses

    model, tok = tiny_model("llama", num_layers=3)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    cfg = AdversaryConfig(sites=["embed", "layer.1"], epsilon=2.0, optimizer="l2", step_size=0.2, steps=4)
    w = Workload(model=model, adapter=a, harmful=batch, benign=batch, adversary=cfg, objective=OBJ,
                 defender=DefenderLosses())
    # reference with l2 steps is not part of the reference; use its sign variant and compare with latkit's sign
    sign_cfg = cfg.model_copy(update={"optimizer": "sign", "step_size": 0.05})
    w.adversary = sign_cfg
    ref_deltas, _, ref_losses = reference_attack(w, Spec(mode="reference", sign=True))
    p = LatentAdversary(model, sign_cfg, a).attack(batch, OBJ)
    assert p.losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-5)
    for s in ref_deltas:
        assert torch.allclose(p.deltas[s], ref_deltas[s], atol=1e-4)
    assert all(q.requires_grad for q in model.parameters())  # the reference's toggle is restored


# ------------------------------------------------------------------------ δ-only gradients, sign-PGD
def test_sign_pgd_keeps_no_optimizer_state_and_no_parameter_grads(triples, monkeypatch):
    model, tok = tiny_model("llama", num_layers=3)
    batch = _batch(tok, triples)
    for p in model.parameters():
        p.requires_grad_(True)

    def no_optimizer(*a, **k):
        raise AssertionError("sign-PGD must not build an optimiser for δ")

    monkeypatch.setattr(torch.optim, "Adam", no_optimizer)
    a = ModelAdapter.from_model(model)
    cfg = AdversaryConfig(sites=["layer.1"], epsilon=100.0, optimizer="sign", step_size=0.01, steps=1)
    p = LatentAdversary(model, cfg, a).attack(batch, OBJ)
    d0 = {"layer.1": torch.zeros_like(p.deltas["layer.1"], requires_grad=True)}
    _, (g,) = _loss_and_grads(model, a, batch, d0)
    ex = LatentAdversary.example_mask(p.row_mask, 2)
    expected = -0.01 * g.sign() * ex.unsqueeze(-1)
    assert torch.allclose(p.deltas["layer.1"], expected, atol=1e-7)
    assert all(q.grad is None for q in model.parameters())


# --------------------------------------------------------------------------- precision and attention
def test_bf16_autocast_with_fp32_delta_is_close(triples):
    model, tok = tiny_model("llama", num_layers=3)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    deltas = _random_deltas(a, batch, ["layer.0", "layer.1"])
    fp32 = _loss_and_grads(model, a, batch, deltas)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = _loss_and_grads(model, a, batch, deltas, prefix=True)
    assert all(d.dtype == torch.float32 for d in deltas.values())
    assert all(g.dtype == torch.float32 for g in bf16[1])
    assert abs(float(bf16[0]) - float(fp32[0])) < 0.02 * abs(float(fp32[0])) + 1e-3
    for g32, g16 in zip(fp32[1], bf16[1]):
        cos = torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0)
        assert cos > 0.98, float(cos)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_sdpa_and_eager_attention_same_delta_gradients(family, triples):
    model, tok = tiny_model(family, num_layers=3)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    deltas = _random_deltas(a, batch, ["layer.0", "layer.2"])
    out = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        out[impl] = _loss_and_grads(model, a, batch, deltas, prefix=True)
    _assert_close(out["eager"], out["sdpa"], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------ no communication in the loop
@pytest.mark.slow
def test_inner_loop_does_no_collective_calls_in_a_two_process_run(tmp_path):
    """torchrun, 2 processes, gloo, a DDP-wrapped LoRA model: the attack makes no collective call (Python-level
    wrappers and the process group's sequence number agree); a defender backward does (the counter works)."""
    script = REPO / "benchmarks" / "step_throughput" / "dist_check.py"
    out = tmp_path / "counts"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
           "--rdzv_endpoint=localhost:0", str(script), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    for rank in (0, 1):
        c = json.loads((out.parent / f"{out.name}.{rank}.json").read_text())
        assert c["attack"]["python_calls"] == 0 and c["attack"]["seq_delta"] == 0, c
        assert c["defender"]["seq_delta"] > 0 or c["defender"]["python_calls"] > 0, c
        assert c["attack"]["pgd_steps"] == 3 and c["attack"]["loss_decreased"], c


@pytest.mark.slow
def test_compiled_blocks_same_delta_gradients(triples):
    """``torch.compile`` of each block's forward (regional; the δ hooks stay eager), plain and prefix-cached."""
    model, tok = tiny_model("llama", num_layers=3)
    a = ModelAdapter.from_model(model)
    batch = _batch(tok, triples)
    deltas = _random_deltas(a, batch, ["layer.0", "layer.1"])
    eager = _loss_and_grads(model, a, batch, deltas)
    torch._dynamo.reset()
    for layer in a.layers:
        layer.forward = torch.compile(layer.forward, dynamic=False)
    try:
        compiled = _loss_and_grads(model, a, batch, deltas)
        compiled_prefix = _loss_and_grads(model, a, batch, deltas, prefix=True)
    finally:
        for layer in a.layers:
            del layer.forward
        torch._dynamo.reset()
    _assert_close(eager, compiled, atol=1e-5, rtol=1e-4)
    _assert_close(eager, compiled_prefix, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------ the defender's shared prompt
def _defender_loss_and_grads(model, batch, adversary, pert, coefs):
    from latkit.adversary.latent import Under
    from latkit.objectives.defender import harmful_losses

    model.zero_grad(set_to_none=True)
    total, parts, logits, rows = harmful_losses(model, batch, coefs, Under(adversary, pert))
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return total.detach(), parts, logits, rows, grads


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("clamp", [False, True])
def test_defender_shared_prompt_matches_grouped(family, clamp, triples):
    """The defender's forward under δ in the shared-prompt layout gives the grouped layout's losses, logits
    and LoRA gradients (fp32), for both completion groups at once and for one group alone."""
    from latkit.models.lora import LoraSettings, apply_lora
    from latkit.objectives.defender import DefenderLosses

    model, tok = tiny_model(family, num_layers=4)
    model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    batch = _batch(tok, triples)
    cfg = dict(sites=["embed", "layer.1"], epsilon=2.0, steps=2, step_size=0.1, clamp_to_clean_range=clamp)
    grouped = LatentAdversary(model, AdversaryConfig(**cfg, **PLAIN))
    shared = LatentAdversary(model, AdversaryConfig(**cfg))
    pert = grouped.attack(batch, OBJ, generator=torch.Generator().manual_seed(0))
    assert any(float(d.abs().sum()) > 0 for d in pert.deltas.values())
    for coefs in (DefenderLosses(toward=1.0, away=0.5, sft=0.0), DefenderLosses(toward=1.0, away=0.0, sft=0.0)):
        a = _defender_loss_and_grads(model, batch, grouped, pert, coefs)
        b = _defender_loss_and_grads(model, batch, shared, pert, coefs)
        assert torch.allclose(a[0], b[0], atol=1e-6, rtol=1e-5), (float(a[0]), float(b[0]))
        assert a[1].keys() == b[1].keys() and a[3] == b[3] and a[2].shape == b[2].shape
        m = batch["completion_mask"][a[3]][:, -a[2].shape[1]:]
        assert torch.allclose(a[2][m], b[2][m], atol=1e-5)
        assert a[4].keys() == b[4].keys() and a[4]
        for n in a[4]:
            assert torch.allclose(a[4][n], b[4][n], atol=1e-6, rtol=1e-4), (n, float((a[4][n] - b[4][n]).abs().max()))
    # the packed layout really ran: one row per example
    seen = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        _defender_loss_and_grads(model, batch, shared, pert, DefenderLosses(toward=1.0, away=1.0, sft=0.0))
    finally:
        h.remove()
    assert seen == [batch["input_ids"].shape[0] // batch["n_groups"]]


def test_defender_shared_prompt_falls_back_on_left_padding_and_clean(triples):
    from latkit.adversary.latent import Under
    from latkit.objectives.defender import DefenderLosses, harmful_losses

    model, tok = tiny_model("llama", num_layers=2)
    left = _batch(tok, triples, "left")
    adv = LatentAdversary(model, AdversaryConfig(sites=["layer.0"], epsilon=1.0, steps=1))
    pert = adv.attack(left, OBJ)
    coefs = DefenderLosses(toward=1.0, away=1.0, sft=0.0)
    with torch.no_grad():
        a = harmful_losses(model, left, coefs, Under(adv, pert))[0]
        b = harmful_losses(model, left, coefs, lambda rows: adv.apply(pert, rows))[0]
        clean = harmful_losses(model, left, coefs, Under(None, None))[0]
        plain_clean = harmful_losses(model, left, coefs)[0]
    assert torch.allclose(a, b) and torch.allclose(clean, plain_clean) and not torch.allclose(a, clean)


def test_clean_defender_forward_shares_the_prompt_too(triples):
    """RT's defender (no adversary) runs the same packed layout as LAT's, so the two cost the same."""
    from latkit.adversary.latent import Under
    from latkit.objectives.defender import DefenderLosses, harmful_losses

    model, tok = tiny_model("qwen2", num_layers=2)
    batch = _batch(tok, triples)
    coefs = DefenderLosses(toward=1.0, away=1.0, sft=0.0)
    seen = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        with torch.no_grad():
            shared = harmful_losses(model, batch, coefs, Under(None, None, adapter=ModelAdapter.from_model(model),
                                                               share=True))
            grouped = harmful_losses(model, batch, coefs, Under(None, None))
    finally:
        h.remove()
    B = batch["input_ids"].shape[0] // batch["n_groups"]
    assert seen == [B, 2 * B]
    assert torch.allclose(shared[0], grouped[0], atol=1e-6, rtol=1e-5)
