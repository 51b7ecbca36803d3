"""Show that the inner loop needs no communication: run under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each rank wraps a tiny LoRA model in DDP (as ``accelerate`` does), attacks its own micro-batch with the
unwrapped module (as :class:`latkit.train.Trainer` does), then takes one defender step through the DDP
wrapper. Collective calls are counted two ways during each phase: Python wrappers around every
``torch.distributed`` collective, and the process group's sequence number (which also counts the calls
DDP's C++ reducer makes). Writes ``<out>.<rank>.json``.

    torchrun --nproc_per_node=2 benchmarks/step_throughput/dist_check.py /tmp/counts
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "all_gather_object",
               "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "broadcast", "broadcast_object_list", "reduce", "barrier", "all_to_all",
               "all_to_all_single", "gather", "scatter", "send", "recv", "isend", "irecv", "batch_isend_irecv")


class Counter:
    def __init__(self):
        self.calls = 0
        self.names: list[str] = []
        self._orig = []

    def install(self):
        import torch.distributed.distributed_c10d as c10d

        for mod in (dist, c10d):
            for name in COLLECTIVES:
                fn = getattr(mod, name, None)
                if fn is None:
                    continue

                def wrapped(*a, _fn=fn, _name=name, **k):
                    self.calls += 1
                    self.names.append(_name)
                    return _fn(*a, **k)

                self._orig.append((mod, name, fn))
                setattr(mod, name, wrapped)

    def uninstall(self):
        for mod, name, fn in reversed(self._orig):
            setattr(mod, name, fn)


def seq_number() -> int | None:
    pg = dist.distributed_c10d._get_default_group()
    get = getattr(pg, "_get_sequence_number_for_group", None)
    try:
        return int(get()) if get else None
    except RuntimeError:
        return None


def main(out: str):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from latkit.adversary import AdversaryConfig, LatentAdversary
    from latkit.data.collator import PromptCompletionCollator
    from latkit.models.lora import LoraSettings, apply_lora
    from latkit.objectives import TargetedObjective, DefenderLosses, harmful_losses
    from latkit.testing import tiny_model

    model, tok = tiny_model("llama", num_layers=3)
    model = apply_lora(model, LoraSettings(r=4))
    ddp = DDP(model)  # broadcasts the weights once, here
    inner = ddp.module
    records = [
        {"prompt": f"rank {rank} question {i}: how do I do this thing?", "harmful": "Sure, here is how",
         "refusal": "I'm sorry, I can't help."} for i in range(2)
    ]
    batch = PromptCompletionCollator(tok)(records)
    objective = TargetedObjective()
    adversary = LatentAdversary(inner, AdversaryConfig(sites=["embed", "layer.1"], epsilon=4.0, steps=3,
                                                       step_size=0.1, prefix_cache=True))
    counts = {}
    counter = Counter()
    counter.install()
    try:
        s0 = seq_number()
        inner.eval()
        pert = adversary.attack(batch, objective, final_eval=True)
        s1 = seq_number()
        counts["attack"] = {"python_calls": counter.calls, "calls": list(counter.names),
                            "seq_delta": (s1 - s0) if s0 is not None else None, "pgd_steps": len(pert.losses),
                            "loss_decreased": pert.stats["loss_after"] < pert.stats["loss_before"]}
        counter.calls, counter.names = 0, []
        ddp.train()
        loss, _, _, _ = harmful_losses(ddp, batch, DefenderLosses(), lambda rows: adversary.apply(pert, rows))
        loss.backward()  # DDP all-reduces the LoRA gradients here
        s2 = seq_number()
        counts["defender"] = {"python_calls": counter.calls, "calls": list(counter.names),
                              "seq_delta": (s2 - s1) if s1 is not None else None}
    finally:
        counter.uninstall()
    Path(f"{out}.{rank}.json").write_text(json.dumps(counts))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
