"""Modular-addition reproduction of the interaction basis (LIB, arXiv 2405.10928).

Trains a 1-layer transformer on (a + b) mod 113 (30% of pairs, AdamW, weight decay 1.0),
fits the interaction basis at every residual node (exact Jacobian metric, float64),
and writes ablation curves vs PCA, Fourier dominance of the top directions and edge
sparsity to JSON. Published reference (MLP input, 8 of 129 directions kept): 0.89 (LIB)
vs 0.69 (PCA) accuracy.

    python benchmarks/interaction_basis/modular_addition.py --output modular_addition.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from latkit.cliutil import add_output_argument
from latkit.analysis.toy_modular import run_modular_reproduction


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, default=113)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--frac", type=float, default=0.3)
    ap.add_argument("--n-fit", type=int, default=2048, help="random inputs used to fit the bases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    add_output_argument(ap, dest="out", default="modular_addition.json", help="JSON file to write (default: %(default)s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    r = run_modular_reproduction(args.p, train_kwargs=dict(frac=args.frac, steps=args.steps, seed=args.seed),
                                 n_fit=args.n_fit, seed=args.seed, log=print)
    r.pop("bases")
    summary = {}
    for name, node in r["nodes"].items():
        ab = node["ablation"]
        acc = {m: dict(zip(ab["k"], ab["curves"][m]["accuracy"])) for m in ab["curves"]}
        summary[name] = {
            "dim": node["dim"], "rank_lambda": node["rank_lambda"],
            "acc_at_8": {"interaction": acc["interaction"].get(8), "pca": acc["pca"].get(8)},
            "fourier_top8_mean_fraction": {m: node["fourier"][m]["mean_fraction"] for m in node["fourier"]},
            "fourier_top8_frequencies": node["fourier"]["interaction"]["frequency"],
        }
    r["summary"] = summary
    r["published"] = {"node": "MLP input (resid_mid), 129 dims incl. a bias coordinate", "k": 8,
                      "acc_interaction": 0.89, "acc_pca": 0.69}
    r["total_seconds"] = time.time() - t0
    with open(args.out, "w") as fh:
        json.dump(r, fh, indent=1)
    print(json.dumps({"full_acc": r["full_acc"], "summary": summary, "total_seconds": r["total_seconds"]}, indent=1))
    return r


if __name__ == "__main__":
    main()
