"""Greedy generation with vLLM (an optional extra: ``pip install 'latkit[vllm]'``, CUDA only).

:class:`VLLMGenerator` answers the same chat prompts as :func:`latkit.models.generate.generate`, with the
same tokens in and the same decoding out: latkit's tokenizer encodes each prompt (chat template, system
prompt, prefill, one BOS) into token ids, vLLM continues them greedily (``SamplingParams(temperature=0)``)
until the same stop tokens (EOS, ``<|im_end|>``) or ``max_new_tokens``, and latkit's tokenizer decodes the
generated ids (special tokens skipped, stripped). A PEFT adapter (a latkit run's ``model/``) is served on its
base with ``LoRARequest``; a full model directory, a bundled name or a hub id is served as it is.

Install: ``pip install 'latkit[vllm]'`` brings vLLM, which pins its own torch build; install it into an
environment of its own (vLLM needs a CUDA GPU; on CPU it is refused with a clear error, not tried).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from latkit.models.chat import Prompt, encode_prompt
from latkit.models.generate import stop_ids

#: what vLLM may reserve of the GPU by default: the Hugging Face copy of the model stays loaded beside it
#: (attacks that need hooks or gradients, utility metrics); ``generation.vllm`` in a suite overrides it.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.5


class VLLMError(RuntimeError):
    """vLLM cannot serve here (not installed, no GPU, a model vLLM cannot load); the message says why."""


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def require_vllm():
    """The ``vllm`` module, or :class:`VLLMError` naming what is missing (the package, a CUDA GPU)."""
    try:
        import vllm
    except ImportError as e:
        raise VLLMError(f"generation.backend 'vllm' needs the vllm package ({e}); install it with "
                        "pip install 'latkit[vllm]' on a machine with a CUDA GPU, or use backend 'hf'") from None
    if not _cuda_available():
        raise VLLMError("generation.backend 'vllm' needs a CUDA GPU and none is available; use backend 'hf'")
    return vllm


def serving_paths(source: str) -> tuple[str, str | None]:
    """``(model, adapter_dir or None)`` for vLLM, resolved by the rules of
    :func:`latkit.models.loading.load_model_and_tokenizer` (bundled names, run dirs, adapter dirs)."""
    from latkit.models import loading as L

    src = str(source)
    if not src:
        raise VLLMError("generation.backend 'vllm' needs each model as a name or path (not an object in memory)")
    if src.startswith(L.TINY_PREFIX) or src.endswith(".gguf"):
        raise VLLMError(f"generation.backend 'vllm' cannot serve {src!r} (a tiny random model or a GGUF file); "
                        "use backend 'hf'")
    alias = src if src in L.BUNDLED else next((a for a, hub in L.HUB_IDS.items()
                                                if src == hub and L.bundled_installed(a)), None)
    if alias is not None:
        d = L.bundled_model_dir(alias)
        if d is None:
            raise VLLMError(f"the bundled model {alias} has not been unpacked yet (load it once with latkit)")
        return str(d), None
    path = Path(src).expanduser()
    if not path.exists():
        return src, None  # a hub id: vLLM fetches (or finds in the HF cache) it itself
    path = L.resolve_model_dir(path)
    if (path / "adapter_config.json").exists():
        cfg = json.loads((path / "adapter_config.json").read_text())
        base = cfg.get("base_model_name_or_path")
        if not base:
            raise VLLMError(f"{path}/adapter_config.json does not name its base model")
        moved = [d / "base-model" for d in (path.parent, path.parent.parent, path.parent.parent.parent)]
        if not Path(base).exists() and Path(base).name == "base-model":  # a run dir that was moved
            base = str(next((d for d in moved if (d / "config.json").exists()), base))
        base_path, nested = serving_paths(base)
        if nested is not None:
            raise VLLMError(f"{path}: an adapter on an adapter cannot be served by vLLM; merge the base adapter first")
        return base_path, str(path)
    return str(path), None


def _lora_rank(adapter: str) -> int:
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    ranks = [int(cfg.get("r") or 8), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


class VLLMGenerator:
    """One vLLM engine for one evaluated model; :meth:`generate` has the signature of the HF path's.

    ``model`` is the Hugging Face model the engine mirrors: :func:`latkit.models.generate.generate` hands
    a prompt list to this engine only when asked to generate from that very model (an attack that
    fine-tunes a copy, or hooks the model, is not served by vLLM). ``llm_kwargs`` go to ``vllm.LLM``."""

    def __init__(self, source: str, tokenizer, model=None, *, seed: int = 0, **llm_kwargs: Any):
        vllm = require_vllm()
        self.source, self.tokenizer, self.model = source, tokenizer, model
        self.base, self.adapter = serving_paths(source)
        kw: dict[str, Any] = {"gpu_memory_utilization": DEFAULT_GPU_MEMORY_UTILIZATION, "seed": seed}
        if self.adapter is not None:
            kw.update(enable_lora=True, max_lora_rank=_lora_rank(self.adapter), max_loras=1)
        kw.update(llm_kwargs)
        self.llm_kwargs = kw
        try:
            self.llm = vllm.LLM(model=self.base, **kw)
        except Exception as e:  # vLLM's own errors are long; the first line says what
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise VLLMError(f"vLLM could not load {self.base}: {first}") from None
        self.lora_request = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("latkit-adapter", 1, self.adapter)  # (name, int id > 0, path)

    def serves(self, model) -> bool:
        return self.model is None or model is self.model

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int = 64, prefills: Sequence[str] | None = None,
                 system: str | None = None) -> list[str]:
        """Greedy answers, one per prompt, in the prompts' order (see the module docstring)."""
        from vllm import SamplingParams

        if prefills is not None and len(prefills) != len(prompts):
            raise ValueError("prefills must have one entry per prompt")
        if not prompts:
            return []
        requests = [{"prompt_token_ids": encode_prompt(self.tokenizer, p, system,
                                                       prefill=(prefills[i] if prefills else ""))}
                    for i, p in enumerate(prompts)]  # vllm.inputs.TokensPrompt is this TypedDict
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids(self.tokenizer),
                                skip_special_tokens=True)
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)
        if len(outputs) != len(requests):
            raise VLLMError(f"vLLM returned {len(outputs)} outputs for {len(requests)} prompts")
        return [self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True).strip()
                for o in outputs]
