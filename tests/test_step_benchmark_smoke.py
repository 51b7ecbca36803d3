"""The step-throughput benchmark runs end to end on a tiny model in seconds and writes sane JSON."""
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _run(tmp_path, *extra):
    from benchmarks.step_throughput import main

    out = tmp_path / "bench.json"
    argv = ["--pgd-steps", "2", "--repeats", "1", "--batch-size", "2", "--prompt-len", "12", "--completion-len", "8",
            "--jitter", "3", "--threads", "1", "--out", str(out), *extra]
    threads = torch.get_num_threads()
    try:
        res = main(argv)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    return res


def test_compare_reference_and_latkit_on_a_tiny_model(tmp_path):
    res = _run(tmp_path, "--model", "tiny:llama", "--sites", "embed,layer.1,layer.2",
               "--compare", "reference", "latkit", "latkit+prefix+sign")
    assert set(res["configs"]) == {"reference", "latkit", "latkit+prefix+sign"}
    for name, c in res["configs"].items():
        assert len(c["steps"]) == 1
        m = c["median"]
        assert m["adversary_s"] > 0 and m["defender_s"] > 0
        assert m["step_s"] == pytest.approx(m["adversary_s"] + m["defender_s"])
        assert c["tokens_per_s"] > 0
        assert all(v > 0 for v in c["peak_mem_bytes"].values())
        assert all(c["flops"][ph] > 0 for ph in ("adversary", "defender"))
        assert all(0 < v < 1.5 for v in c["mfu"].values())
        assert c["forward_equivalents"]["adversary"] > 1  # 2 PGD steps, each a forward and a backward
    # the reference computes full logits and the two groups separately: more FLOPs than latkit's batched pass
    assert res["configs"]["reference"]["flops"]["adversary"] > res["configs"]["latkit"]["flops"]["adversary"]
    assert set(res["ratios"]) == {"reference / latkit", "reference / latkit+prefix+sign"}
    assert all(r["speedup_step"] > 0 for r in res["ratios"].values())
    assert res["peak_matmul_flops"]["float32"] > 0
    assert res["recipe"]["sites"] == ["embed", "layer.1", "layer.2"]


def test_prefix_cache_cuts_adversary_flops_with_a_mid_depth_site(tmp_path):
    res = _run(tmp_path, "--shape", "tiny", "--sites", "layer.2", "--defender-steps", "1",
               "--compare", "latkit", "latkit+prefix")
    f = {k: v["flops"]["adversary"] for k, v in res["configs"].items()}
    assert f["latkit+prefix"] < f["latkit"]
    assert res["model"]["name"] == "random:tiny"


def test_bad_configuration_is_refused():
    from benchmarks.step_throughput.core import Spec

    assert Spec.parse("latkit+prefix+bf16+eager").name == "latkit+prefix+bf16+eager"
    with pytest.raises(SystemExit):
        Spec.parse("fast")
    with pytest.raises(SystemExit):
        Spec.parse("reference+prefix")


def test_site_presets_scale_to_depth_without_duplicates():
    from benchmarks.step_throughput.core import site_preset

    assert site_preset("jailbreak", 32) == ["embed", "layer.8", "layer.16", "layer.24", "layer.30"]
    assert site_preset("jailbreak", 30) == ["embed", "layer.8", "layer.15", "layer.22", "layer.28"]
    assert site_preset("jailbreak", 4) == ["embed", "layer.1", "layer.2", "layer.3"]  # 30/32·4 and 24/32·4 coincide
    assert site_preset("mid", 30) == ["layer.8"]
    assert site_preset("embed, layer.2", 4) == ["embed", "layer.2"]


def test_flop_counter_counts_gqa_attention_per_query_head_on_every_fused_kernel():
    """torch's own SDPA formulas assert equal head counts; a GQA kernel call (fewer key/value heads) broke the
    tiny-shape run on an H200. Every fused kernel gets the per-query-head count, CPU's measured here."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.step_throughput.core import flop_counter

    q = torch.randn(2, 4, 8, 16, requires_grad=True)
    k, v = (torch.randn(2, 2, 8, 16, requires_grad=True) for _ in range(2))
    fc = flop_counter()
    with fc:
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True).sum().backward()
    per_pass = 2 * (2 * 2 * 4 * 8 * 8 * 16)  # QK^T and AV, 4 query heads
    assert fc.get_total_flops() == 3 * per_pass  # forward + backward (2x)
    aten = torch.ops.aten
    fused = [getattr(aten, n) for n in ("_scaled_dot_product_efficient_attention",
                                        "_scaled_dot_product_flash_attention",
                                        "_scaled_dot_product_cudnn_attention") if hasattr(aten, n)]
    assert fused, "no fused SDPA kernel in this torch"
    default = FlopCounterMode(display=False).flop_registry
    for op in fused:  # ours replaces torch's formula, and counts GQA shapes instead of asserting
        assert fc.flop_registry[op] is not default.get(op)
        assert fc.flop_registry[op]((2, 4, 8, 16), (2, 2, 8, 16), (2, 2, 8, 16)) == per_pass
