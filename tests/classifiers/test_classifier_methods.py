"""Plain / AT / LAT / RLP on a 2-block CNN: hooks at non-decoder modules, weights move, δ is fp32 and in its ball."""
import pytest
import torch
import torch.nn.functional as F

from latkit.adversary import PerturbationError
from latkit.classifiers.image import ImageModality, SmallCNN
from latkit.classifiers.methods import LAT, RLP, build_method, frozen_norm_stats, input_pgd
from latkit.classifiers.recipe import recipe_from_dict

BASE = {"kind": "classifier", "modality": "image", "model": {"widths": [4, 8]},
        "data": {"train_size": 32, "test_size": 16, "classes": 3}}
METHODS = {
    "plain": {"kind": "plain"},
    "at": {"kind": "at", "norm": "linf", "epsilon": 0.03, "steps": 3},
    "lat": {"kind": "lat", "norm": "l2", "epsilon": 0.5, "relative": True, "steps": 3},
    "rlp": {"kind": "rlp", "norm": "l2", "epsilon": 0.5, "relative": True},
}


def _setup(method):
    recipe = recipe_from_dict({**BASE, "method": METHODS[method]})
    mod = ImageModality(recipe)
    torch.manual_seed(0)
    model = mod.load_model(3).train()
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return recipe, mod, model, x, y


def _step(method):
    recipe, mod, model, x, y = _setup(method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, metrics = build_method(recipe.method).loss(mod, model, x, y, torch.Generator().manual_seed(0))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    after = model.state_dict()
    return before, after, float(loss.detach()), metrics


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_step_changes_weights(method):
    before, after, loss, metrics = _step(method)
    assert torch.isfinite(torch.tensor(loss))
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert "fc.weight" in changed and "layer1.0.weight" in changed
    assert metrics["cost/defender_fb"] == 6


def test_at_lat_rlp_give_different_losses():
    losses = {m: _step(m)[2] for m in METHODS}
    assert len({round(v, 6) for v in losses.values()}) == 4, losses
    assert losses["at"] > losses["plain"] and losses["lat"] > losses["plain"]  # the adversaries raise the loss
    assert losses["lat"] > losses["rlp"]  # an optimised δ beats a random one of the same norm


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_input_pgd_fp32_in_ball_raises_loss(norm):
    _, mod, model, x, y = _setup("plain")
    model.eval()
    delta = input_pgd(mod, model, x, y, norm=norm, epsilon=0.05, steps=4)
    assert delta.dtype == torch.float32 and delta.shape == x.shape
    size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
    assert float(size.max()) <= 0.05 + 1e-5
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
        with mod.perturb_input(model, delta):
            adv = F.cross_entropy(model(x), y)
        torch.testing.assert_close(model(x), model(x))
    assert adv > clean
    with torch.no_grad():  # the hook is clamp(x + δ) in pixel space
        manual = model((x + delta).clamp(0, 1))
        with mod.perturb_input(model, delta):
            torch.testing.assert_close(model(x), manual)


def test_input_hook_removed_on_exception():
    _, mod, model, x, y = _setup("plain")
    model.eval()
    with torch.no_grad():
        clean = model(x)
        with pytest.raises(PerturbationError):
            with mod.perturb_input(model, torch.zeros(2, 3, 16, 16)):
                model(x)
        with pytest.raises(RuntimeError, match="boom"):
            with mod.perturb_input(model, torch.ones_like(x)):
                raise RuntimeError("boom")
        torch.testing.assert_close(model(x), clean)
    assert not model._forward_pre_hooks


def test_lat_delta_at_the_module_output_fp32_and_hooks_removed():
    recipe, mod, model, x, y = _setup("lat")
    seen = {}
    method = LAT(recipe.method)
    real = method.clean_activation

    def spy(*a):
        h = real(*a)
        seen["h"] = h
        return h

    method.clean_activation = spy
    _, metrics = method.loss(mod, model, x, y, torch.Generator())
    assert seen["h"].shape == (6, 4, 8, 8) and seen["h"].dtype == torch.float32  # layer1's output (after its pool)
    assert mod.default_latent_site(model) == "layer1"
    assert 0 < metrics["adv/layer1/norm_mean"] <= metrics["adv/epsilon"] * (1 + 1e-4)
    assert all(not m._forward_hooks for m in model.modules())


def test_rlp_delta_on_the_sphere_and_seeded():
    recipe, mod, model, x, y = _setup("rlp")
    m = RLP(recipe.method)
    l1, m1 = m.loss(mod, model, x, y, torch.Generator().manual_seed(1))
    l2, _ = m.loss(mod, model, x, y, torch.Generator().manual_seed(1))
    l3, _ = m.loss(mod, model, x, y, torch.Generator().manual_seed(2))
    assert float(l1.detach()) == float(l2.detach()) != float(l3.detach())
    assert m1["adv/layer1/norm_mean"] == pytest.approx(m1["adv/epsilon"], rel=1e-4)


def test_lat_at_any_site_by_path_and_attacks_leave_bn_stats():
    recipe = recipe_from_dict({**BASE, "method": {**METHODS["lat"], "site": "layer2.2"}})
    mod = ImageModality(recipe)
    model = SmallCNN(3, [4, 8]).train()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    with frozen_norm_stats(model):
        delta = LAT(recipe.method)
        h = delta.clean_activation(mod, model, x, "layer2.2")
        assert h.shape == (4, 8, 8, 8)
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    loss, metrics = LAT(recipe.method).loss(mod, model, x, y, torch.Generator())
    assert "adv/layer2.2/norm_mean" in metrics
    # only the defender's forward moved the running statistics (once: the counter went up by one)
    assert int(model.layer1[1].num_batches_tracked) == int(buffers["layer1.1.num_batches_tracked"]) + 1
