"""Count the dtype casts (``aten::_to_copy``) and matmuls per PGD step of a configuration.

``python -m benchmarks.step_throughput.casts --shape smollm2-135m reference+bf16 latkit+share+bf16``

Per PGD step = (ops of an outer step with 2·n PGD steps − ops with n) / n, so setup and the defender cancel.
Casts are split into parameters (weights autocast re-casts) and activations, with the bytes read.
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.step_throughput.core import (Probe, Spec, Workload, add_lora, build_model, make_batches, run_step,
                                             site_preset)


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.bytes = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.calls[name] += 1
        if name == "_to_copy":
            x = args[0]
            key = f"{'param' if isinstance(x, torch.nn.Parameter) else 'act'}:{x.dtype}->{kwargs.get('dtype')}"
            self.calls[key] += 1
            self.bytes[key] += x.numel() * x.element_size()
        return func(*args, **kwargs)


def per_pgd_step(w: Workload, spec: Spec, steps: int = 2) -> dict:
    w.configure(spec)
    base = w.adversary
    counts = []
    for n in (steps, 2 * steps):
        w.adversary = base.model_copy(update={"steps": n})
        c = OpCount()
        with c:
            run_step(w, spec, Probe(w.device))
        counts.append(c)
    w.adversary = base
    a, b = counts
    keys = sorted(set(b.calls) | set(a.calls))
    return {"calls": {k: (b.calls[k] - a.calls[k]) / steps for k in keys if k in ("_to_copy", "mm", "bmm", "addmm")
                      or ":" in k},
            "cast_mib": {k: (b.bytes[k] - a.bytes[k]) / steps / 2 ** 20 for k in keys if ":" in k}}


def main(argv=None):
    from latkit.adversary import AdversaryConfig
    from latkit.models.adapter import ModelAdapter
    from latkit.objectives import TargetedObjective, DefenderLosses

    p = argparse.ArgumentParser(prog="python -m benchmarks.step_throughput.casts", description=__doc__)
    p.add_argument("configs", nargs="+")
    p.add_argument("--shape", default="tiny")
    p.add_argument("--sites", default="jailbreak")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    m = add_lora(build_model(None, a.shape, "cpu", torch.float32), 8)
    ad = ModelAdapter.from_model(m)
    adv = AdversaryConfig(sites=site_preset(a.sites, ad.num_layers), epsilon=6.0, steps=2, positions="prompt")
    hb, bb = make_batches(ad.base.config.vocab_size, 2, 32, 24, 6)
    w = Workload(model=m, adapter=ad, harmful=hb, benign=bb, adversary=adv,
                 objective=TargetedObjective(toward=.5, away=.5),
                 defender=DefenderLosses(toward=.5, away=.5, sft=1.5))
    out = {}
    for c in a.configs:
        out[c] = per_pgd_step(w, Spec.parse(c))
        print(c, out[c], flush=True)
    return out


if __name__ == "__main__":
    main()
