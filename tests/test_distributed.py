"""Scale-out, proven on CPU: 2-process FSDP2 and DDP (gloo) LAT runs against one process on the same global batch.

Each run is ``tests/dist_worker.py`` (targeted LAT or DPO-LAT, sites embed + layer.0, 4 PGD steps per attack,
2 outer steps), launched once per module and shared by the tests below. The two-process runs take
``batch_size`` 2 per rank; the one-process reference takes 4, which is exactly the union of the ranks'
examples (``IndexStream``: rank r takes the r-th slice of each global batch).

What makes the comparison exact rather than approximate:

- latkit's losses are token-weighted means *per process*; DDP/FSDP average the ranks' gradients. The data
  here give every example completions of the same token length, so the per-rank means average to the
  global mean (with unequal lengths a multi-process run re-weights tokens; see docs/scaling.md).
- each rank's adversary loss is a mean over its 2 examples, the reference's over 4: a rank's δ-gradients
  are exactly 2× the reference's. δ itself follows the same path only for an optimiser invariant to that
  scale: these runs use ``optimizer: l2`` (normalised steps). Adam's ε breaks the invariance for near-zero
  gradient entries (measured: final δ within 2.4e-2, weights within 2.6e-3, relative to their max).

Tolerance: every compared tensor within 1e-4 of the reference, relative to the reference's largest entry
(measured ≤ 1.1e-6 for gradients and δ, ≤ 1e-5 for weights after 2 steps).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
TOL = 1e-4
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_data(d: Path):
    """Prompts of different lengths (so ranks pad differently); completions of one token length each."""
    d.mkdir(parents=True, exist_ok=True)
    words = "how do I bake bread mix flour water salt and yeast knead rest the quick brown fox".split()
    with (d / "harmful.jsonl").open("w") as f, (d / "benign.jsonl").open("w") as g:
        for i in range(16):
            p = " ".join(words[(i * 3) % len(words):][: 3 + i % 5]) + f" {i}?"
            f.write(json.dumps({"prompt": "Explain " + p, "harmful": "Sure, here is how: step one",
                                "refusal": "I'm sorry, I can't help."}) + "\n")
            g.write(json.dumps({"prompt": "Tip about " + p, "response": "Use fresh yeast and rest the dough."}) + "\n")
    return d


def _launch(out: Path, cfg: dict, nproc: int, engine: str | None = None, reshard: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    for k in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(k, None)
    if engine == "fsdp2":  # what `accelerate launch` sets from benchmarks/accelerate/fsdp2_lora.yaml
        env.update({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                    "FSDP_RESHARD_AFTER_FORWARD": str(reshard).lower()})
    if nproc == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(WORKER)]
    r = subprocess.run(cmd + [str(out), json.dumps(cfg)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return [torch.load(out / f"trace-rank{i}.pt", weights_only=False) for i in range(nproc)]


class Runs:
    def __init__(self, root: Path):
        self.root = root
        self.data = _write_data(root / "data")
        self._cache = {}

    def get(self, name, *, finetune="lora", objective="targeted", nproc=1, engine=None, reshard=True, **extra):
        if name not in self._cache:
            cfg = {"finetune": finetune, "objective": objective, "batch": 4 // (nproc * extra.get("accum", 1)),
                   "steps": 2,
                   "data": str(self.data), "optimizer": "l2", **extra}
            self._cache[name] = _launch(self.root / name, cfg, nproc, engine, reshard)
        return self._cache[name]

    def dir(self, name):
        return self.root / name

    # the runs
    def single_lora(self):
        return self.get("single-lora")

    def fsdp_lora(self):  # FSDP2, reshard after forward on
        return self.get("fsdp-lora", nproc=2, engine="fsdp2", reshard=True)

    def ddp_lora(self):
        return self.get("ddp-lora", nproc=2)

    def single_full_dpo(self):
        return self.get("single-full-dpo", finetune="full", objective="dpo")

    def single_lora_accum(self):  # 2 micro-batches of 2 per step
        return self.get("single-lora-accum", accum=2)

    def fsdp_lora_accum(self):  # 2 ranks × 2 micro-batches of 1: micro-batch i is the reference's, split
        return self.get("fsdp-lora-accum", nproc=2, engine="fsdp2", accum=2)

    def fsdp_full_dpo(self):  # FSDP2, reshard after forward off, full fine-tuning, DPO-LAT
        return self.get("fsdp-full-dpo", finetune="full", objective="dpo", nproc=2, engine="fsdp2", reshard=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("dist"))


def _rel(x, ref):
    return float((x.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def _mean_rel(x, ref):
    return float((x.float() - ref.float()).abs().mean() / ref.float().abs().mean().clamp_min(1e-12))


def assert_equivalent(single, ranks, accum=1, tol=TOL, grad_tol=None, weight_diff=_rel):
    """δ-gradients (2× per rank: a mean over half the examples), final δ, defender gradients and final
    weights of a multi-process run equal the one-process run's on the same global batch (``accum``
    micro-batches per step in both)."""
    ref = single[0]
    assert ref["world"] == 1 and all(r["world"] == len(ranks) for r in ranks)
    assert ref["done"] and all(r["done"] for r in ranks)
    # the ranks took disjoint halves of each global batch, in order
    for step, idx in enumerate(ref["examples"]):
        assert sum((r["examples"][step] for r in ranks), []) == idx
    scale = len(ranks)
    n_attacks = len(ref["delta_grads"])
    assert n_attacks == 2 * accum and all(len(r["delta_grads"]) == n_attacks for r in ranks)
    for a in range(n_attacks):
        assert len(ref["delta_grads"][a]) == 4  # PGD steps
        for k, grads in enumerate(ref["delta_grads"][a]):
            assert set(grads) == {"embed", "layer.0"}
            for site, per_ex in grads.items():
                mine = sum((r["delta_grads"][a][k][site] for r in ranks), [])
                assert len(mine) == len(per_ex) == 4 // accum
                for x, y in zip(mine, per_ex):
                    assert x.shape == y.shape and y.abs().max() > 0
                    assert _rel(x / scale, y) < tol, (a, k, site, _rel(x / scale, y))
        for site, per_ex in ref["deltas"][a].items():
            mine = sum((r["deltas"][a][site] for r in ranks), [])
            for x, y in zip(mine, per_ex):
                assert _rel(x, y) < tol, (a, site)
    assert len(ref["defender_grads"]) == 2
    for step, grads in enumerate(ref["defender_grads"]):
        assert grads
        for r in ranks:
            assert r["defender_grads"][step].keys() == grads.keys()
            for n, g in grads.items():
                assert _rel(r["defender_grads"][step][n], g) < (grad_tol or tol), (step, n, _rel(r["defender_grads"][step][n], g))
    for r in ranks:
        assert r["final"].keys() == ref["final"].keys()
        for n, w in ref["final"].items():
            assert weight_diff(r["final"][n], w) < tol, (n, weight_diff(r["final"][n], w))


# ---------------------------------------------------------------- FSDP2
def _assert_weights_split(ranks):
    """Each rank holds its shard of every parameter only: the ranks' local elements add up to the model's."""
    total = ranks[0]["full_numel"]
    assert all(r["full_numel"] == total for r in ranks)
    assert sum(r["local_numel"] for r in ranks) == total
    assert all(r["local_numel"] <= total / len(ranks) + 1024 for r in ranks)  # (dim-0 shards round up)


def test_fsdp2_lora_targeted_matches_one_process(runs):
    ranks = runs.fsdp_lora()
    assert all(r["sharded"] and r["fsdp"].startswith("FSDP") for r in ranks)  # really sharded (DTensor)
    _assert_weights_split(ranks)
    assert_equivalent(runs.single_lora(), ranks)


def test_fsdp2_full_finetune_dpo_without_reshard_matches_one_process(runs):
    ranks = runs.fsdp_full_dpo()
    assert all(r["sharded"] and r["fsdp"].startswith("FSDP") for r in ranks)
    _assert_weights_split(ranks)
    assert_equivalent(runs.single_full_dpo(), ranks)


def test_fsdp2_grad_accum_matches_one_process_and_skips_the_reduce_scatter_of_non_final_micro_batches(runs):
    """grad_accum 2 under FSDP2: the run equals one process with the same micro-batches, and the first
    micro-batch's backward makes no reduce-scatter (FSDPModule.set_requires_gradient_sync(False)): the
    gradients accumulate unsharded and are reduce-scattered in the last micro-batch's backward only.
    (Measured per outer step: [2, 2] reduce-scatters before, [0, 3] now; the 3rd is FSDP2 firing the last
    block's post-backward twice in that backward, which runs the harmful and the benign forward.)"""
    ranks = runs.fsdp_lora_accum()
    assert all(r["sharded"] for r in ranks)
    assert_equivalent(runs.single_lora_accum(), ranks, accum=2)
    plain = runs.fsdp_lora()  # grad_accum 1, the same model and FSDP units
    for r, p in zip(ranks, plain):
        assert len(r["reduce_scatters"]) == len(p["reduce_scatters"]) == 2  # per optimiser step
        assert all(len(b) == 1 and b[0] > 0 for b in p["reduce_scatters"])  # the counter sees FSDP2's
        for first, last in r["reduce_scatters"]:
            assert first == 0 and last >= p["reduce_scatters"][0][0], r["reduce_scatters"]
        assert sum(map(sum, r["reduce_scatters"])) < 2 * sum(map(sum, p["reduce_scatters"]))


def test_fsdp2_under_bf16_autocast_matches_one_process_to_bf16_rounding(runs):
    """bf16 autocast (what ``mixed_precision: auto`` picks on AMX / AVX512-BF16 CPUs and on GPUs) under FSDP2:
    the run trains (the attack's once-per-attack weight casts must leave FSDP's parameters alone: they made
    the defender's loss lose its grad_fn) and agrees with one process to bf16 rounding. The ranks' batches are
    padded differently, so bf16 sums differ. Measured (2 steps): δ-gradients ≤ 7.1e-3, δ ≤ 4.4e-3, defender
    gradients ≤ 7.0e-2 (step 2's lora_A gradients are ~1e-5, proportional to the just-trained lora_B), final
    weights ≤ 4.4e-3 in mean absolute difference; the largest single weight entry differs by 0.53 of the
    largest: AdamW's first steps are ±lr for any gradient, so an entry whose gradient is bf16 noise moves by
    a whole step either way. Tolerances: 2e-2; defender gradients 1.5e-1; weights by mean difference."""
    ranks = runs.get("fsdp-lora-bf16", nproc=2, engine="fsdp2", precision="bf16")
    assert all(r["sharded"] for r in ranks)
    single = runs.get("single-lora-bf16", precision="bf16")
    assert_equivalent(single, ranks, tol=2e-2, grad_tol=1.5e-1, weight_diff=_mean_rel)
    assert all(w.abs().max() > 0 for n, w in ranks[0]["final"].items() if "lora_B" in n)  # it trained


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        assert _rel(b[k], a[k]) < TOL, k


def _assert_same_checkpoints(single: Path, multi: Path, world: int):
    steps = sorted(p.name for p in (single / "checkpoints").glob("step-*"))
    assert steps and steps == sorted(p.name for p in (multi / "checkpoints").glob("step-*"))
    for s in steps:
        a, b = single / "checkpoints" / s, multi / "checkpoints" / s
        rng = {f"rng-{i}.pt" for i in range(world)}
        assert {p.name for p in b.iterdir()} == ({p.name for p in a.iterdir()} - {"rng-0.pt"}) | rng
        _assert_same_tensors(load_file(str(a / "trainable.safetensors")), load_file(str(b / "trainable.safetensors")))
        oa = torch.load(a / "optimizer.pt", weights_only=True)
        ob = torch.load(b / "optimizer.pt", weights_only=True)  # plain tensors: no DTensor in the file
        assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
        for i in oa["state"]:
            assert oa["state"][i].keys() == ob["state"][i].keys()
            for n, v in oa["state"][i].items():
                assert type(ob["state"][i][n]) is torch.Tensor and v.shape == ob["state"][i][n].shape
                if v.dim():
                    assert _rel(ob["state"][i][n], v) < TOL
                else:
                    assert torch.equal(ob["state"][i][n], v)
        sa, sb = json.loads((a / "state.json").read_text()), json.loads((b / "state.json").read_text())
        assert sa.keys() == sb.keys() and sa["step"] == sb["step"]


def test_fsdp2_lora_checkpoint_and_model_have_the_single_process_layout(runs):
    from peft import PeftModel

    from latkit.testing import tiny_model

    runs.single_lora(), runs.fsdp_lora()
    single, multi = runs.dir("single-lora"), runs.dir("fsdp-lora")
    _assert_same_checkpoints(single, multi, 2)
    ma, mb = single / "model", multi / "model"
    assert {p.name for p in ma.iterdir()} == {p.name for p in mb.iterdir()}
    ca, cb = (json.loads((m / "adapter_config.json").read_text()) for m in (ma, mb))
    # each run's base is its own RUN/base-model/ copy (a tiny random model has no loadable name)
    assert [Path(c.pop("base_model_name_or_path")).name for c in (ca, cb)] == ["base-model", "base-model"]
    assert set(ca.pop("target_modules")) == set(cb.pop("target_modules")) and ca == cb  # (a set: order varies)
    wa, wb = load_file(str(ma / "adapter_model.safetensors")), load_file(str(mb / "adapter_model.safetensors"))
    _assert_same_tensors(wa, wb)
    # loadable with plain PEFT, weights as trained
    base, _ = tiny_model("llama")
    loaded = PeftModel.from_pretrained(base, str(mb))
    final = runs.fsdp_lora()[0]["final"]
    got = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert got.keys() == final.keys()
    assert all(torch.equal(got[n], final[n]) for n in final)


def test_fsdp2_full_finetune_model_dir_equals_single_process(runs):
    from transformers import AutoModelForCausalLM

    runs.single_full_dpo(), runs.fsdp_full_dpo()
    single, multi = runs.dir("single-full-dpo"), runs.dir("fsdp-full-dpo")
    _assert_same_checkpoints(single, multi, 2)
    assert {p.name for p in (single / "model").iterdir()} == {p.name for p in (multi / "model").iterdir()}
    _assert_same_tensors(load_file(str(single / "model" / "model.safetensors")),
                         load_file(str(multi / "model" / "model.safetensors")))
    m = AutoModelForCausalLM.from_pretrained(str(multi / "model"))
    final = runs.fsdp_full_dpo()[0]["final"]
    got = dict(m.named_parameters())
    assert all(torch.equal(got[n], final[n]) for n in final)


def test_fsdp2_resume_after_a_stop_is_exact(runs):
    """Stopped after step 1 (a callback that raises, as if killed after that checkpoint), resumed under
    FSDP2: the same final weights, bit for bit, as the uninterrupted FSDP2 run."""
    uninterrupted = runs.fsdp_lora()
    first = runs.get("fsdp-lora-resume", nproc=2, engine="fsdp2", stop_after=1)
    assert not first[0]["done"] and first[0]["step"] == 1
    again = _launch(runs.dir("fsdp-lora-resume"),
                    {"finetune": "lora", "objective": "targeted", "batch": 2, "steps": 2,
                     "data": str(runs.data), "optimizer": "l2", "resume": True}, 2, "fsdp2")
    for r, u in zip(again, uninterrupted):
        assert r["done"] and r["step"] == 2
        assert r["examples"] == u["examples"][1:]  # the data stream continued where it stopped
        assert all(torch.equal(r["final"][n], u["final"][n]) for n in u["final"])
    lines = (runs.dir("fsdp-lora-resume") / "metrics.jsonl").read_text().splitlines()[1:]  # 0: provenance
    ref = (runs.dir("fsdp-lora") / "metrics.jsonl").read_text().splitlines()[1:]
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert json.loads(lines[-1])["loss/total"] == json.loads(ref[-1])["loss/total"]


# ---------------------------------------------------------------- DDP
def test_ddp_lora_targeted_matches_one_process(runs):
    ranks = runs.ddp_lora()
    assert not any(r["sharded"] for r in ranks)
    assert_equivalent(runs.single_lora(), ranks)
    _assert_same_checkpoints(runs.dir("single-lora"), runs.dir("ddp-lora"), 2)
    _assert_same_tensors(load_file(str(runs.dir("single-lora") / "model" / "adapter_model.safetensors")),
                         load_file(str(runs.dir("ddp-lora") / "model" / "adapter_model.safetensors")))
