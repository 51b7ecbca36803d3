"""One LAT run for tests/test_distributed.py, under ``torchrun`` (DDP or FSDP2 over gloo) or as one process.

    python tests/dist_worker.py OUT CONFIG_JSON

CONFIG: {"finetune": "lora"|"full", "objective": "targeted"|"dpo", "batch": per-process batch size,
"steps": outer steps, "accum": train.grad_accum (default 1), "precision": train.mixed_precision (default "no"), "stop_after": int|null, "resume": bool, "data": dir
holding harmful/benign.jsonl}.

Records, per rank, into OUT/trace-rank<r>.pt: every δ-gradient the adversary took (per PGD step, per site, per
example: the gradient at that example's perturbed positions, so that batches padded to different lengths
compare), the final δ of each attack (same layout), the defender's gradients before each optimiser step (full
tensors, gathered when sharded) and the final trainable weights (full). The global index of each example is
recorded too, so the test can line the ranks up against a one-process run over the same global batch. And the
reduce-scatter calls (FSDP2's gradient reduction; counted as ``benchmarks/step_throughput/dist_check.py``
counts collectives) of each defender backward (micro-batch), listed per optimiser step; a backward's count
includes any made since the previous one (the attacks': none).
"""
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import stop_after, tiny_recipe  # noqa: E402

from latkit.adversary.latent import LatentAdversary  # noqa: E402
from latkit.train import Trainer  # noqa: E402
from latkit.train.distributed import full, is_sharded  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "dist_check", Path(__file__).resolve().parents[1] / "benchmarks" / "step_throughput" / "dist_check.py")
dist_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dist_check)

out = Path(sys.argv[1])
cfg = json.loads(sys.argv[2])
data = Path(cfg["data"])
over = {
    "train.steps": cfg["steps"], "train.batch_size": cfg["batch"], "train.benign_batch_size": cfg["batch"],
    "train.checkpoint_every": 1, "train.keep_checkpoints": 10,
    "data.harmful.source": str(data / "harmful.jsonl"), "data.benign.source": str(data / "benign.jsonl"),
    "adversary.steps": 4, "adversary.sites": ["embed", "layer.0"], "finetune.method": cfg["finetune"],
    "adversary.optimizer": cfg.get("optimizer", "adam"), "train.grad_accum": cfg.get("accum", 1),
    # fp32 unless asked: "auto" would pick bf16 autocast on AMX / AVX512-BF16 CPUs, where the one- and
    # two-process runs differ by bf16 rounding (~2e-3), not by anything distribution does
    "train.mixed_precision": cfg.get("precision", "no"),
}
if cfg["objective"] == "dpo":
    over.update({"adversary.objective": {"kind": "dpo"}, "defender.toward": 0.0, "defender.away": 0.0,
                 "defender.kl": 0.0, "defender.preference": {"beta": 0.1, "loss_type": "sigmoid"}})
recipe = tiny_recipe(**over)
stop = [stop_after(cfg["stop_after"])] if cfg.get("stop_after") is not None else []
t = Trainer(recipe, out, progress=False, resume=cfg.get("resume", False), callbacks=stop)
t.setup()
acc = t.accelerator
rank = acc.process_index
trace = {"world": acc.num_processes, "sharded": any(is_sharded(p) for p in t.inner.parameters()),
         "local_numel": sum((p.to_local() if is_sharded(p) else p).numel() for p in t.inner.parameters()),
         "full_numel": sum(p.numel() for p in t.inner.parameters()),
         "fsdp": type(t.inner).__name__, "examples": [], "delta_grads": [], "deltas": [], "defender_grads": [],
         "reduce_scatters": []}

# which global examples this rank attacks: IndexStream's state before each step gives them
stream_next = t.task.harmful_stream.next


def next_indices():
    idx = stream_next()
    trace["examples"].append(idx)
    return idx


t.task.harmful_stream.next = next_indices

_batch = {}
attack = t.adversary.attack


def per_example(d, ex):  # (B, T', H), (B, T) -> [ (n_b, H) ]
    # δ (and its gradient) is in the grouped layout (T' = T) or, under share_prompt, the packed one, whose
    # prompt sits at the same leading positions: index by position, not by a mask of the grouped length
    return [d[b][ex[b].nonzero().squeeze(1)].detach().clone() for b in range(d.shape[0])]


def recording_attack(batch, objective, generator=None, **kw):
    rm = t.adversary.row_mask(batch)
    _batch["ex"] = LatentAdversary.example_mask(rm, batch["n_groups"])
    _batch["grads"] = []
    p = attack(batch, objective, generator, **kw)
    trace["delta_grads"].append(_batch.pop("grads"))
    trace["deltas"].append({s: per_example(d, _batch["ex"]) for s, d in p.deltas.items()})
    return p


t.adversary.attack = recording_attack
_grad = torch.autograd.grad


def recording_grad(outputs, inputs, *a, **kw):
    g = _grad(outputs, inputs, *a, **kw)
    if "grads" in _batch:  # the adversary's δ-gradients (sites in config order)
        _batch["grads"].append({s: per_example(x, _batch["ex"])
                                for s, x in zip(recipe.adversary.sites, g)})
    return g


torch.autograd.grad = recording_grad
opt_step = t.optimizer.step


counter = dist_check.Counter()
_per_backward = []
acc_backward = acc.backward


def recording_backward(loss, **kw):
    out = acc_backward(loss, **kw)
    _per_backward.append(sum(n.startswith("reduce_scatter") for n in counter.names))
    counter.names.clear()
    return out


acc.backward = recording_backward


def recording_step(*a, **kw):
    trace["reduce_scatters"].append(list(_per_backward))  # per defender backward (micro-batch) of this step
    _per_backward.clear()
    trace["defender_grads"].append({n: full(p.grad).clone() for n, p in t.inner.named_parameters()
                                    if p.requires_grad and p.grad is not None})
    return opt_step(*a, **kw)


t.optimizer.step = recording_step
counter.install()
try:
    t.train()
    trace["done"] = True
except KeyboardInterrupt:
    trace["done"] = False
finally:
    counter.uninstall()
trace["step"] = t.step
trace["final"] = {n: full(p).clone() for n, p in t.inner.named_parameters() if p.requires_grad}
torch.save(trace, out / f"trace-rank{rank}.pt")
# Leave the process group before the interpreter exits: a gloo group torn down by interpreter exit
# can abort a rank ("terminate called without an active exception", exit -6) after its work is done.
if torch.distributed.is_available() and torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
