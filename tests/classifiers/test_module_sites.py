"""δ on non-decoder modules by module path: a tiny 2-block CNN and a tiny 2-layer encoder."""
import pytest
import torch
from torch import nn

from latkit.adversary import PerturbationError, perturb, record
from latkit.adversary.modules import ModuleSites
from latkit.models.adapter import AdapterError



class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


def test_cnn_site_by_path_shapes_and_removal():
    torch.manual_seed(0)
    net, x = TinyCNN(), torch.rand(2, 3, 8, 8)
    sites = ModuleSites(net)
    store = {}
    with record(sites, ["layer1"], store):
        clean = net(x)
    assert store["layer1"].shape == (2, 4, 8, 8)
    delta = torch.randn(2, 4, 8, 8)
    with perturb(sites, {"layer1": delta}, None):
        with record(sites, ["layer1"], store):
            out = net(x)
    assert not torch.allclose(out, clean)
    manual = net.fc(net.layer2(net.layer1(x) + delta).mean((2, 3)))
    torch.testing.assert_close(out, manual)
    torch.testing.assert_close(net(x), clean)  # hooks removed
    with pytest.raises(PerturbationError):
        with perturb(sites, {"layer1": torch.zeros(2, 4, 4, 4)}, None):
            net(x)
    torch.testing.assert_close(net(x), clean)  # removed even on the exception
    with pytest.raises(AdapterError, match="no module"):
        sites.site_module("layer9")


def test_encoder_layer_site_tuple_or_modeloutput():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, num_labels=2)
    net = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (2, 5))
    sites = ModuleSites(net)
    clean = net(input_ids=ids).logits
    delta = torch.randn(2, 5, 16)
    with perturb(sites, {"bert.encoder.layer.0": delta}, None):
        out = net(input_ids=ids).logits
    assert out.shape == clean.shape and not torch.allclose(out, clean)
    torch.testing.assert_close(net(input_ids=ids).logits, clean)


@pytest.mark.parametrize("kind", ["l2", "linf"])
def test_pgd_whole_raises_loss_within_ball(kind):
    from latkit.adversary.modules import pgd_whole

    torch.manual_seed(0)
    net, x, y = TinyCNN(), torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    sites = ModuleSites(net)
    ce = nn.functional.cross_entropy

    def neg_ce(d):  # the adversary minimises; untargeted = maximise the task loss
        with perturb(sites, d, None):
            return -ce(net(x), y)

    eps = 0.5
    out = pgd_whole({"layer1": torch.zeros(4, 4, 8, 8)}, neg_ce, kind=kind, eps=eps, step_size=0.2, steps=5)
    d = out["layer1"]
    size = d.flatten(1).norm(dim=1) if kind == "l2" else d.flatten(1).abs().amax(1)
    assert (size <= eps + 1e-5).all()
    with torch.no_grad():
        assert -neg_ce(out) > ce(net(x), y)
