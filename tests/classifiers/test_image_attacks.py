"""The novel image attacks and triggers: shape, dtype and range kept, severity monotone, deterministic."""
import pytest
import torch

from latkit.classifiers.image_attacks import LEVELS, image_attacks, image_triggers
from latkit.classifiers.image_data import synthetic_shapes

ATTACKS = image_attacks()


@pytest.fixture(scope="module")
def batch():
    return synthetic_shapes(12, 6, seed=3).raw


def test_every_family_of_the_issue_is_there():
    assert set(ATTACKS) == {"jpeg", "blur", "gaussian_noise", "fog", "snow", "elastic", "gabor", "pixelate", "hue",
                            "brightness"}
    assert all(len(a.severities) >= 3 for a in ATTACKS.values())
    assert set(LEVELS) == set(ATTACKS)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_shape_dtype_range_and_determinism(name, batch):
    attack = ATTACKS[name]
    for s in attack.severities:
        y = attack(batch, s, torch.Generator().manual_seed(0))
        assert y.shape == batch.shape and y.dtype == batch.dtype
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        assert not torch.equal(y, batch)
        torch.testing.assert_close(y, attack(batch, s, torch.Generator().manual_seed(0)), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_severity_monotone_in_distance(name, batch):
    attack = ATTACKS[name]
    dist = [float((attack(batch, s, torch.Generator().manual_seed(0)) - batch).abs().mean()) for s in attack.severities]
    assert all(b > a for a, b in zip(dist, dist[1:])), dist


def test_random_attacks_depend_on_the_generator(batch):
    for name in ("gaussian_noise", "fog", "snow", "elastic", "gabor"):
        a, b = (ATTACKS[name](batch, 2, torch.Generator().manual_seed(k)) for k in (0, 1))
        assert not torch.equal(a, b), name


def test_bad_severity_is_an_error(batch):
    with pytest.raises(ValueError, match="severity"):
        ATTACKS["blur"](batch, 7, torch.Generator())


def test_triggers():
    x = synthetic_shapes(4, 4, seed=0).raw
    trig = image_triggers()
    y = trig["patch"](x, {}, torch.Generator())
    assert y.shape == x.shape and torch.equal(y[..., :-4, :], x[..., :-4, :])  # only the bottom-right corner
    assert torch.equal(y[:, :, -4:, -4:], y[:1, :, -4:, -4:].expand(4, -1, -1, -1))  # the same patch everywhere
    z = trig["patch"](x, {"size": 6, "position": "tl"}, torch.Generator())
    assert not torch.equal(z[:, :, :6, :6], x[:, :, :6, :6]) and torch.equal(z[:, :, 6:, :], x[:, :, 6:, :])
    b = trig["blend"](x, {}, torch.Generator())
    assert b.shape == x.shape and 0 < float((b - x).abs().mean()) < 0.2 and float(b.max()) <= 1
    with pytest.raises(ValueError, match="size"):
        trig["patch"](x, {"size": 99}, torch.Generator())
