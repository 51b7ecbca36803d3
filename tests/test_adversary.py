import pytest
import torch

from latkit.adversary import AdversaryConfig, LatentAdversary, perturb, project, record
from latkit.adversary.constraints import active_fraction, token_norms
from latkit.data.collator import PromptCompletionCollator
from latkit.models.adapter import ModelAdapter
from latkit.objectives import TargetedObjective, UntargetedObjective, cross_entropy
from latkit.objectives.forward import forward_logits
from latkit.testing import tiny_model


@pytest.fixture
def setup(triples):
    model, tok = tiny_model("llama", num_layers=3)
    batch = PromptCompletionCollator(tok)(triples)
    return model, tok, batch


def _acts(model, adapter, batch, sites):
    store = {}
    with torch.no_grad(), record(adapter, sites, store):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              position_ids=batch["position_ids"])
    return store


def test_hooks_touch_only_chosen_site_and_positions_and_vanish(setup):
    model, _, batch = setup
    a = ModelAdapter.from_model(model)
    sites = ["embed", "layer.0", "layer.1", "layer.2"]
    clean = _acts(model, a, batch, sites)
    B, T = batch["input_ids"].shape[0] // 2, batch["input_ids"].shape[1]
    delta = torch.randn(B, T, a.hidden_size)
    mask = batch["prompt_mask"]
    with perturb(a, {"layer.1": delta}, mask):
        pert = _acts(model, a, batch, sites)
    # sites before the perturbed one are unchanged
    assert torch.equal(pert["embed"], clean["embed"]) and torch.equal(pert["layer.0"], clean["layer.0"])
    # at the site: exactly +δ on prompt positions of every row (both groups), nothing elsewhere
    diff = pert["layer.1"] - clean["layer.1"]
    full = delta.repeat(2, 1, 1) * mask.unsqueeze(-1)
    assert torch.allclose(diff, full, atol=1e-5)
    assert diff[~mask].abs().max() == 0
    # downstream changes
    assert not torch.allclose(pert["layer.2"], clean["layer.2"])
    # hooks are gone afterwards
    assert torch.equal(_acts(model, a, batch, sites)["layer.2"], clean["layer.2"])
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_hooks_removed_on_exception(setup):
    model, _, batch = setup
    a = ModelAdapter.from_model(model)
    d = torch.zeros(3, batch["input_ids"].shape[1], a.hidden_size)
    with pytest.raises(RuntimeError, match="boom"):
        with perturb(a, {"embed": d, "layer.0": d}, batch["prompt_mask"]):
            raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize("kind", ["l2_token", "l2_sequence", "linf"])
def test_projection_respects_constraint(kind):
    torch.manual_seed(0)
    d = torch.randn(4, 7, 16) * 5
    mask = torch.rand(4, 7) > 0.3
    eps = 0.7
    p = project(d, mask, kind, eps)
    assert p[~mask].abs().max() == 0
    if kind == "l2_token":
        assert p[mask].norm(dim=-1).max() <= eps + 1e-5
    elif kind == "l2_sequence":
        assert p.flatten(1).norm(dim=1).max() <= eps + 1e-5
    else:
        assert p.abs().max() <= eps + 1e-5
    # inside the ball nothing moves
    small = project(d * 1e-3, mask, kind, eps)
    assert torch.allclose(small, d * 1e-3 * mask.unsqueeze(-1), atol=1e-7)
    assert active_fraction(p, mask, kind, eps) == 1.0


@pytest.mark.parametrize("optimizer", ["sign", "l2", "adam"])
@pytest.mark.parametrize("constraint", ["l2_token", "l2_sequence", "linf"])
def test_each_optimizer_lowers_loss_within_constraint(setup, optimizer, constraint):
    model, _, batch = setup
    eps = 0.5 if constraint == "linf" else 4.0
    cfg = AdversaryConfig(sites=["embed", "layer.1"], epsilon=eps, constraint=constraint,
                          optimizer=optimizer, step_size=0.05, steps=8)
    adv = LatentAdversary(model, cfg)
    p = adv.attack(batch, TargetedObjective(), final_eval=True)
    assert p.stats["loss_after"] < p.stats["loss_before"] - 1e-3
    ex = adv.example_mask(p.row_mask, 2)
    for site, d in p.deltas.items():
        assert d.dtype == torch.float32
        assert d[~ex].abs().max() == 0  # only prompt positions
        if constraint == "l2_token":
            assert token_norms(d, ex, constraint).max() <= eps + 1e-5
        elif constraint == "l2_sequence":
            assert d.flatten(1).norm(dim=1).max() <= eps + 1e-5
        else:
            assert d.abs().max() <= eps + 1e-5
    assert all(p.grad is None for p in model.parameters())  # gradients w.r.t. δ only


def test_targeted_attack_raises_harmful_probability_and_lowers_refusal(setup):
    model, _, batch = setup
    B = batch["input_ids"].shape[0] // 2
    # a random tiny model has tiny logit sensitivity: a large ball, perturbing every position
    adv = LatentAdversary(model, AdversaryConfig(sites=["layer.1"], epsilon=40.0, optimizer="adam",
                                                 step_size=1.0, steps=15, positions="all"))
    p = adv.attack(batch, TargetedObjective(toward=1.0, away=1.0))
    with torch.no_grad():
        logits, off = forward_logits(model, batch)
        clean_h = cross_entropy(logits[:B], batch["input_ids"][:B], batch["completion_mask"][:B], off)
        with adv.apply(p):
            logits, off = forward_logits(model, batch)
        adv_h = cross_entropy(logits[:B], batch["input_ids"][:B], batch["completion_mask"][:B], off)
        adv_r = cross_entropy(logits[B:], batch["input_ids"][B:], batch["completion_mask"][B:], off)
    assert adv_h < clean_h - 0.5  # p(harmful) up by a factor > e^0.5 per token
    assert p.stats["toward_last_step"] < p.stats["toward_before"]
    assert adv_r > 0  # sanity: refusal still has finite loss


def test_untargeted_attack_raises_desirable_loss(setup):
    model, _, batch = setup
    adv = LatentAdversary(model, AdversaryConfig(sites=["layer.1"], epsilon=4.0, steps=8, step_size=0.1))
    p = adv.attack(batch, UntargetedObjective(), final_eval=True)
    assert p.stats["desirable_ce_after"] > p.stats["desirable_ce_before"] + 1e-3


def test_random_perturbation_has_exact_norm(setup):
    model, _, batch = setup
    adv = LatentAdversary(model, AdversaryConfig(sites=["embed", "layer.0"], epsilon=1.5))
    p = adv.random(batch, torch.Generator().manual_seed(0))
    ex = adv.example_mask(p.row_mask, 2)
    for d in p.deltas.values():
        assert torch.allclose(token_norms(d, ex, "l2_token"), torch.full((int(ex.sum()),), 1.5), atol=1e-5)


def test_positions_completion_and_all(setup):
    model, _, batch = setup
    for pos, key in [("completion", "completion_mask"), ("all", "attention_mask")]:
        adv = LatentAdversary(model, AdversaryConfig(sites=["layer.0"], epsilon=2.0, steps=2, positions=pos))
        p = adv.attack(batch, TargetedObjective())
        assert torch.equal(p.row_mask, batch[key].bool())


def test_clamp_to_clean_range(setup):
    model, _, batch = setup
    a = ModelAdapter.from_model(model)
    adv = LatentAdversary(model, AdversaryConfig(sites=["layer.0"], epsilon=50.0, steps=3, step_size=2.0,
                                                 clamp_to_clean_range=True, optimizer="sign"), a)
    p = adv.attack(batch, TargetedObjective())
    lo, hi = p.clamp["layer.0"]
    with adv.apply(p):
        acts = _acts(model, a, batch, ["layer.0"])["layer.0"]
    sel = acts[p.row_mask]
    assert (sel >= lo - 1e-5).all() and (sel <= hi + 1e-5).all()


def test_gradient_checkpointing_gives_same_delta_gradients(setup):
    model, _, batch = setup
    a = ModelAdapter.from_model(model)
    B, T = batch["input_ids"].shape[0] // 2, batch["input_ids"].shape[1]
    grads = []
    for ckpt in (False, True):
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        d = torch.full((B, T, a.hidden_size), 0.1, requires_grad=True)
        with perturb(a, {"layer.0": d}, batch["prompt_mask"]):
            logits, off = forward_logits(model, batch)
        loss = cross_entropy(logits, batch["input_ids"], batch["completion_mask"], off)
        grads.append(torch.autograd.grad(loss, d)[0])
    model.gradient_checkpointing_disable()
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_kv_cache_generation_under_perturbation(tiny):
    model, tok = tiny
    from latkit.models.chat import encode_prompt

    a = ModelAdapter.from_model(model)
    ids = torch.tensor([encode_prompt(tok, "hello there")])
    mask = torch.ones_like(ids, dtype=torch.bool)
    d = torch.randn(1, ids.shape[1], a.hidden_size) * 3
    with torch.no_grad(), perturb(a, {"layer.0": d}, mask):
        out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        # the first new token equals the argmax of a perturbed full forward
        first = model(input_ids=ids).logits[0, -1].argmax()
    assert out[0, ids.shape[1]] == first


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma2", "gemma3", "gpt_neox", "phi3"])
def test_perturbation_is_exact_on_every_family(family, triples):
    model, tok = tiny_model(family, num_layers=3)
    batch = PromptCompletionCollator(tok)(triples)
    a = ModelAdapter.from_model(model)
    clean = _acts(model, a, batch, ["embed", "layer.1"])
    B, T = batch["input_ids"].shape[0] // 2, batch["input_ids"].shape[1]
    d = {"embed": torch.randn(B, T, a.hidden_size), "layer.1": torch.randn(B, T, a.hidden_size)}
    store = {}
    # record the embedding output *after* the perturbation hook (recording hook registered later)
    with perturb(a, d, batch["prompt_mask"]), torch.no_grad(), record(a, ["embed"], store):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              position_ids=batch["position_ids"])
    expect = clean["embed"] + d["embed"].repeat(2, 1, 1) * batch["prompt_mask"].unsqueeze(-1)
    assert torch.allclose(store["embed"], expect, atol=1e-5)
    p = LatentAdversary(model, AdversaryConfig(sites=["layer.1"], epsilon=2.0, steps=3)).attack(
        batch, TargetedObjective(), final_eval=True)
    assert p.stats["loss_after"] < p.stats["loss_before"]


def test_attack_freezes_trainable_parameters_and_restores_them(setup):
    from peft import LoraConfig, get_peft_model

    model, _, batch = setup
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    seen = []
    a = ModelAdapter.from_model(peft)
    h = a.layers[0].register_forward_hook(
        lambda m, i, o: seen.append(any(p.requires_grad for p in peft.parameters())))
    try:
        LatentAdversary(peft, AdversaryConfig(sites=["layer.1"], steps=2)).attack(batch, TargetedObjective())
    finally:
        h.remove()
    assert seen and not any(seen)  # frozen during the inner loop
    assert {n for n, p in peft.named_parameters() if p.requires_grad} == trainable  # and restored
