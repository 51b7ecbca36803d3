"""Eval sharding: which behaviours a rank attacks and the merge back into one-process order; the 2-process
``latkit eval`` (torchrun, gloo) writes the results.json one process writes."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from latkit.evaluation.sharding import SHARDABLE, keyed, merge, run_sharded, shard_indices


def test_shards_cover_every_behaviour_once_and_are_balanced():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [shard_indices(n, r, world) for r in range(world)]
            assert sorted(sum(parts, [])) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        shard_indices(3, 2, 2)


def _inputs(n):
    return [{"prompt": f"p{i}", "id": f"b{i}"} for i in range(n)]


def _behaviour_major(xs):  # like templates: several outputs per behaviour, behaviour by behaviour
    return [{"behaviour": x, "style": s, "extras": {}} for x in xs for s in ("a", "b", "c")]


def _split_major(xs):  # like latent: one pass over the behaviours per ε
    return [{"behaviour": x, "extras": {"epsilon": e}} for e in (4.0, 1.0) for x in xs]


def _simulate(fn, inputs, world):
    """Every rank's share, keyed, merged: what run_sharded does with a real process group."""
    parts = []
    for r in range(world):
        pos = shard_indices(len(inputs), r, world)
        mine = [inputs[p] for p in pos]
        parts.append(keyed(fn(mine), mine, pos))
    return merge(parts)


@pytest.mark.parametrize("fn", [_behaviour_major, _split_major])
@pytest.mark.parametrize("n,world", [(5, 2), (7, 3), (2, 3), (1, 2)])
def test_merge_restores_the_one_process_order(fn, n, world):
    inputs = _inputs(n)
    assert _simulate(fn, inputs, world) == fn(inputs)


def test_run_sharded_runs_only_this_ranks_share_and_gathers():
    inputs = _inputs(5)
    seen = []

    def run(xs):
        seen.append([x["id"] for x in xs])
        return [{"behaviour": x, "extras": {}} for x in xs]

    others = keyed(run([inputs[i] for i in (1, 3)]), [inputs[i] for i in (1, 3)], [1, 3])
    seen.clear()
    out = run_sharded("direct", run, inputs, rank=0, world=2, gather=lambda mine: [mine, others])
    assert seen == [["b0", "b2", "b4"]]
    assert [o["behaviour"]["id"] for o in out] == [f"b{i}" for i in range(5)]
    # attacks that learn from the other behaviours are never split
    seen.clear()
    assert "finetune" not in SHARDABLE and "many_shot" not in SHARDABLE
    out = run_sharded("finetune", run, inputs, rank=0, world=2, gather=lambda mine: pytest.fail("gathered"))
    assert seen == [[f"b{i}" for i in range(5)]] and len(out) == 5


def test_overlapping_shards_are_refused():
    inputs = _inputs(2)
    part = keyed([{"behaviour": inputs[0], "extras": {}}], inputs[:1], [0])
    with pytest.raises(ValueError, match="overlap"):
        merge([part, part])


def test_real_attacks_sharded_give_the_one_process_outputs():
    """direct / prefill / templates on a tiny model: the shards' merged outputs are the whole run's."""
    from latkit.attacks import get_attack
    from latkit.testing import tiny_model

    model, tok = tiny_model("llama")
    inputs = [{"prompt": f"Tell me about thing {i} " + "x" * i, "target": "Sure", "id": f"q{i}"} for i in range(5)]
    for name in ("direct", "prefill", "templates"):
        attack = get_attack(name, max_new_tokens=4, batch_size=1)
        whole = attack.run(model, tok, inputs)
        merged = _simulate(lambda xs: attack.run(model, tok, xs), inputs, 2)
        assert [(o.behaviour.id, o.attacked_prompt, o.answer) for o in merged] == \
               [(o.behaviour.id, o.attacked_prompt, o.answer) for o in whole], name


# --------------------------------------------------------------- 2 processes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timeless(x):
    """results.json without what differs between any two runs: timestamps, wall-clock times and the provenance
    record (its command line and process count differ by design)."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items()
                if k not in ("created", "seconds", "provenance") and "wall_time" not in k}
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_eval_writes_the_one_process_results(tmp_path):
    from latkit.testing import tiny_model

    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    rows = "".join(f"q{i},Please do bad thing number {i}{' now' * (i % 3)},Sure\n" for i in range(5))
    (tmp_path / "b.csv").write_text("id,prompt,target\n" + rows)
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: shard-test\n"
        "generation: {max_new_tokens: 4, batch_size: 1}\n"
        f"datasets: [{{name: {tmp_path / 'b.csv'}, label: mine, columns: {{prompt: prompt, id: id, target: target}}}}]\n"
        "attacks: [{name: direct}, {name: prefill}, {name: templates}]\n"
        "utility: {benign: {limit: 2, max_new_tokens: 2}}\n"
        "report: {enabled: false}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    args = ["eval", "--model", str(tmp_path / "tiny"), "--suite", str(suite), "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "latkit.cli", *args, "--output", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                          str(_free_port()), "-m", "latkit.cli", *args, "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [r["attack"] for r in a["results"]] == ["direct", "prefill", "templates"]
    assert a["results"][0]["n"] == 5
    assert _timeless(a) == _timeless(b)
    ga = [_timeless(json.loads(x)) for x in (tmp_path / "one" / "generations.jsonl").read_text().splitlines()]
    gb = [_timeless(json.loads(x)) for x in (tmp_path / "two" / "generations.jsonl").read_text().splitlines()]
    assert ga == gb and len(ga) > 5
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
