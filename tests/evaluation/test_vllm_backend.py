"""``generation.backend: vllm``: the clear errors where vLLM cannot run, and the request/response mapping of
:class:`latkit.models.vllm_engine.VLLMGenerator` against the HF path, through a stand-in ``vllm`` module.

The stand-in has vLLM's interface as latkit uses it (``vllm.LLM(model=..., **engine_args)``,
``LLM.generate(prompts, sampling_params, use_tqdm=, lora_request=)`` answering ``RequestOutput``-like objects
in the prompts' order, ``SamplingParams``, ``vllm.lora.request.LoRARequest(name, int_id, path)``) and computes
with the real weights: it loads the model vLLM would load (the base directory, plus the LoRA adapter of the
request) with transformers and decodes each token-id prompt greedily on its own, unpadded, until a stop id or
``max_tokens``, as vLLM does. So the HF path and the engine mapping are compared on the same numbers.
"""
import argparse
import json
import sys
import types

import pytest
import torch

from latkit.evaluation.cli import register, run_eval
from latkit.models import vllm_engine
from latkit.models.chat import encode_prompt
from latkit.models.generate import generate, stop_ids
from latkit.testing import tiny_model


class _SamplingParams:
    def __init__(self, **kw):
        self.kw = kw


class _LoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class _LLM:
    instances: list = []

    def __init__(self, model, **kw):
        from transformers import AutoModelForCausalLM

        self.model_path, self.kw, self.calls = model, kw, []
        self.base = AutoModelForCausalLM.from_pretrained(model).eval()
        self._lora = {}
        _LLM.instances.append(self)

    def _model(self, lora):
        if lora is None:
            return self.base
        assert self.kw.get("enable_lora"), "a LoRA request to an engine built without enable_lora"
        if lora.lora_path not in self._lora:
            import copy

            from peft import PeftModel

            self._lora[lora.lora_path] = PeftModel.from_pretrained(copy.deepcopy(self.base), lora.lora_path).eval()
        return self._lora[lora.lora_path]

    @torch.no_grad()
    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
        self.calls.append({"prompts": prompts, "params": sampling_params.kw, "lora": lora_request})
        p = sampling_params.kw
        assert p["temperature"] == 0.0
        model, outs = self._model(lora_request), []
        for req in prompts:
            ids = torch.tensor([req["prompt_token_ids"]])
            new = []
            for _ in range(p["max_tokens"]):
                nxt = int(model(input_ids=torch.cat([ids, torch.tensor([new], dtype=torch.long)], 1)).logits[0, -1].argmax())
                new.append(nxt)
                if nxt in p["stop_token_ids"]:
                    break
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tuple(new), text="?")]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = _LLM, _SamplingParams
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = _LoRARequest
    vllm.lora, lora.request = lora, request
    for name, mod in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    _LLM.instances = []
    return vllm


@pytest.fixture
def tiny_dir(tmp_path):
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def _loaded(source):
    from latkit.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(str(source))


PROMPTS = ["Tell me about thing one", "A much longer request about the second thing, with more words in it",
           [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and now?"}]]


def test_generator_sends_latkit_token_ids_and_returns_the_hf_answers_in_order(fake_vllm, tiny_dir):
    model, tok = _loaded(tiny_dir)
    engine = vllm_engine.VLLMGenerator(str(tiny_dir), tok, model, seed=3, max_model_len=512)
    llm = _LLM.instances[-1]
    assert llm.model_path == str(tiny_dir) and engine.lora_request is None
    assert llm.kw == {"gpu_memory_utilization": vllm_engine.DEFAULT_GPU_MEMORY_UTILIZATION, "seed": 3,
                      "max_model_len": 512}
    prefills = ["", "Sure, here", ""]
    got = engine.generate(PROMPTS, max_new_tokens=6, prefills=prefills, system="Be brief.")
    want = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, prefills=prefills, system="Be brief.")
    assert got == want and len(set(got)) > 1  # distinct answers: the order is checked, not only the set
    call, = llm.calls
    assert [r["prompt_token_ids"] for r in call["prompts"]] == \
           [encode_prompt(tok, p, "Be brief.", prefill=f) for p, f in zip(PROMPTS, prefills)]
    assert call["params"] == {"temperature": 0.0, "max_tokens": 6, "stop_token_ids": stop_ids(tok),
                              "skip_special_tokens": True}
    assert call["lora"] is None
    assert engine.generate([], max_new_tokens=6) == [] and len(llm.calls) == 1
    with pytest.raises(ValueError, match="one entry per prompt"):
        engine.generate(PROMPTS, prefills=["x"])


def test_an_adapter_is_served_on_its_base_with_a_lora_request(fake_vllm, tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tok = _loaded(tiny_dir)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))  # (zero-initialised: no effect)
    peft.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    adapter = tmp_path / "run" / "model"
    model, tok = _loaded(tmp_path / "run")  # the run dir, as `latkit eval -m RUN` gets it
    engine = vllm_engine.VLLMGenerator(str(tmp_path / "run"), tok, model)
    llm = _LLM.instances[-1]
    assert llm.model_path == str(tiny_dir)
    assert llm.kw["enable_lora"] is True and llm.kw["max_lora_rank"] == 4 and llm.kw["max_loras"] == 1
    assert (engine.lora_request.lora_name, engine.lora_request.lora_int_id, engine.lora_request.lora_path) == \
           ("latkit-adapter", 1, str(adapter))
    got = engine.generate(PROMPTS, max_new_tokens=5)
    assert llm.calls[-1]["lora"] is engine.lora_request
    assert got == generate(model, tok, PROMPTS, max_new_tokens=5, batch_size=1)
    plain = generate(_loaded(tiny_dir)[0], tok, PROMPTS, max_new_tokens=5, batch_size=1)
    assert got != plain  # the adapter changed the answers: it was applied, not ignored


def test_generate_hands_only_the_mirrored_model_to_the_engine(fake_vllm, tiny_dir):
    from latkit.models.generate import generation_backend

    model, tok = _loaded(tiny_dir)
    other, _ = _loaded(tiny_dir)
    engine = vllm_engine.VLLMGenerator(str(tiny_dir), tok, model)
    with generation_backend(engine):
        generate(model, tok, PROMPTS[:1], max_new_tokens=2)
        assert len(_LLM.instances[-1].calls) == 1
        generate(other, tok, PROMPTS[:1], max_new_tokens=2)  # e.g. a fine-tuned copy: the HF path
        generate(model, tok, PROMPTS[:1], max_new_tokens=2, do_sample=True)  # sampling: the HF path
        assert len(_LLM.instances[-1].calls) == 1
    generate(model, tok, PROMPTS[:1], max_new_tokens=2)  # outside the context
    assert len(_LLM.instances[-1].calls) == 1


def test_sources_vllm_cannot_serve_are_refused(fake_vllm, tmp_path):
    for src, msg in [("tiny-random:llama", "tiny random"), (str(tmp_path / "m.gguf"), "GGUF"),
                     ("", "name or path")]:
        with pytest.raises(vllm_engine.VLLMError, match=msg):
            vllm_engine.serving_paths(src)
    assert vllm_engine.serving_paths("org/some-model") == ("org/some-model", None)  # a hub id: vLLM fetches it


# ------------------------------------------------------------------------------------------ latkit eval
def _parser():
    p = argparse.ArgumentParser(prog="latkit")
    register(p.add_subparsers(dest="command", required=True))
    return p


def _suite(tmp_path, backend=None):
    rows = "".join(f"q{i},Please do bad thing number {i}{' now' * (i % 3)},Sure\n" for i in range(4))
    (tmp_path / "b.csv").write_text("id,prompt,target\n" + rows)
    suite = tmp_path / "suite.yaml"
    gen = "{max_new_tokens: 5, batch_size: 1" + (f", backend: {backend}" if backend else "") + "}"
    suite.write_text(
        "name: vllm-test\n"
        f"generation: {gen}\n"
        f"datasets: [{{name: {tmp_path / 'b.csv'}, label: mine, columns: {{prompt: prompt, id: id, target: target}}}}]\n"
        "attacks: [{name: direct}, {name: prefill}, {name: latent, params: {epsilons: [1.0], steps: 1}}]\n"
        "utility: {benign: {limit: 2, max_new_tokens: 2}}\n"
        "report: {enabled: false}\n"
    )
    return suite


def _eval(args):
    return run_eval(_parser().parse_args(["eval", *args, "--no-progress", "--device", "cpu"]))


def test_eval_without_vllm_exits_2_with_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    suite = _suite(tmp_path, backend="vllm")
    assert _eval(["-m", str(tiny_dir), "-s", str(suite), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the vllm package" in err and "latkit[vllm]" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_eval_with_vllm_but_no_gpu_exits_2_with_one_line(fake_vllm, tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: False)
    suite = _suite(tmp_path)  # the backend comes from the command line here
    assert _eval(["-m", str(tiny_dir), "-s", str(suite), "-o", str(tmp_path / "o"), "--generation-backend", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    assert _eval(["-m", "tiny-random:llama", "-s", str(suite), "-o", str(tmp_path / "p"),
                  "--generation-backend", "vllm"]) == 2  # (with a "GPU" now) a model vLLM cannot load
    assert "cannot serve 'tiny-random:llama'" in capsys.readouterr().err


def test_eval_with_the_vllm_backend_writes_the_hf_answers(fake_vllm, tiny_dir, tmp_path):
    suite = _suite(tmp_path)
    assert _eval(["-m", str(tiny_dir), "-s", str(suite), "-o", str(tmp_path / "hf")]) == 0
    assert not _LLM.instances  # backend hf: no engine
    assert _eval(["-m", str(tiny_dir), "-s", str(suite), "-o", str(tmp_path / "vllm"),
                  "--generation-backend", "vllm"]) == 0
    llm, = _LLM.instances  # one engine for the model
    served = sum(len(c["prompts"]) for c in llm.calls)
    assert served == 4 + 4  # direct and prefill; latent (hooks on the HF model) and utility keep the HF path

    def rows(d):
        return [json.loads(x) for x in (tmp_path / d / "generations.jsonl").read_text().splitlines()]

    hf, vl = rows("hf"), rows("vllm")
    assert len(hf) == len(vl) > 8
    keys = ("attack", "behaviour_id", "attacked_prompt", "answer")
    for a, b in zip(hf, vl):
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
    res = json.loads((tmp_path / "vllm" / "results.json").read_text())
    assert res["suite"]["config"]["generation"]["backend"] == "vllm"
    hf_res = json.loads((tmp_path / "hf" / "results.json").read_text())
    assert [r["asr"] for r in res["results"]] == [r["asr"] for r in hf_res["results"]]
