"""The fastest correct compute precision for the device at hand (what ``dtype: auto`` resolves to).

bf16 autocast is chosen on CUDA devices that support bf16 and on CPUs with bf16 matmul units
(AMX-BF16 or AVX512-BF16), where oneDNN runs bf16 GEMMs several times faster than fp32. On
other CPUs (e.g. AVX2 only) bf16 is *emulated* and much slower than fp32, so fp32 is chosen.
Whatever is chosen, the master weights, δ, δ's optimiser state and the LoRA weights stay fp32:
only the compute inside the forward runs in bf16 (autocast).

Detection uses what torch reports (``torch.backends.cpu.get_cpu_capability()`` and torch's CPU
feature table) and, as a cross-check, the kernel's ``/proc/cpuinfo`` flags. Either source
saying the CPU has AMX-BF16 or AVX512-BF16 is enough.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

log = logging.getLogger(__name__)

#: CPU features that make bf16 matmuls fast (``/proc/cpuinfo`` / torch feature-table names).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class CpuInfo:
    """What torch and the kernel say about the CPU."""

    model: str
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", …
    bf16_flags: tuple[str, ...] = field(default_factory=tuple)  # the BF16_CPU_FLAGS present

    @property
    def fast_bf16(self) -> bool:
        return bool(self.bf16_flags)

    def describe(self) -> dict:
        return {**asdict(self), "bf16_flags": list(self.bf16_flags), "fast_bf16": self.fast_bf16}


def _proc_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """(model name, flags) of the first CPU in ``path``; ``(None, set())`` where there is no such file."""
    model, flags = None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model is not None and flags:
                    break
    except OSError:
        pass
    return model, flags


def _torch_cpu_features() -> dict:
    """torch's CPU feature table (cpuinfo library), or ``{}`` where this torch build has none."""
    try:
        feats = torch._C._cpu._get_cpu_capability()
        return feats if isinstance(feats, dict) else {}
    except (AttributeError, RuntimeError):
        return {}


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo:
    """The CPU's model, torch's capability level and which bf16 matmul features it has."""
    model, flags = _proc_cpuinfo(cpuinfo_path)
    feats = _torch_cpu_features()
    present = tuple(f for f in BF16_CPU_FLAGS if f in flags or feats.get(f) is True)
    return CpuInfo(model=model or str(feats.get("cpu_name") or "unknown"),
                   capability=str(torch.backends.cpu.get_cpu_capability()), bf16_flags=present)


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision: ``mixed_precision`` is ``"bf16"`` (autocast) or ``"no"`` (fp32)."""

    device: str
    mixed_precision: str
    reason: str
    cpu: CpuInfo | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.mixed_precision == "bf16" else None

    def describe(self) -> dict:
        out = {"device": self.device, "mixed_precision": self.mixed_precision, "reason": self.reason}
        if self.cpu is not None:
            out["cpu"] = self.cpu.describe()
        return out


def choose_precision(device: str | torch.device | None = None, cpu: CpuInfo | None = None) -> PrecisionChoice:
    """bf16 autocast where the device has fast bf16 matmuls, else fp32 (see the module docstring).

    ``device``: ``"cuda"``/``"cpu"`` (default: CUDA when available). ``cpu``: the CPU description
    to decide from (default: :func:`cpu_info`; tests pass one to mock the hardware).
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return PrecisionChoice("cuda", "bf16", f"{torch.cuda.get_device_name(dev)} supports bf16")
        return PrecisionChoice("cuda", "no", "this GPU has no bf16 support")
    if dev.type != "cpu":
        return PrecisionChoice(dev.type, "no", f"no bf16 policy for device type {dev.type!r}")
    cpu = cpu or cpu_info()
    if cpu.fast_bf16:
        return PrecisionChoice("cpu", "bf16", f"{cpu.model} has {', '.join(cpu.bf16_flags)}", cpu)
    return PrecisionChoice("cpu", "no", f"{cpu.model} ({cpu.capability}) has no AMX-BF16/AVX512-BF16: "
                                        "bf16 would be emulated and slower than fp32", cpu)


def resolve_mixed_precision(setting: str, device: str | torch.device | None = None,
                            cpu: CpuInfo | None = None) -> str:
    """``train.mixed_precision`` as the trainer uses it: ``auto`` → :func:`choose_precision` (logged)."""
    if setting != "auto":
        return setting
    choice = choose_precision(device, cpu)
    log.info("precision auto: %s (%s)", "bf16 autocast, fp32 master weights and δ"
             if choice.mixed_precision == "bf16" else "fp32", choice.reason)
    return choice.mixed_precision


# ------------------------------------------------------------------------------ frozen weights held cast
def fsdp_managed(model) -> bool:
    """Whether FSDP2 manages (some of) ``model``: it owns those modules' parameter slots."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def held_master(param: torch.Tensor) -> torch.Tensor | None:
    """The fp32 master of a weight that :func:`frozen_weights_held` holds cast, else None."""
    return getattr(param, "_latkit_master", None)


@contextmanager
def frozen_weights_held(model, dtype: torch.dtype, device_type: str):
    """While active, each frozen fp32 ``nn.Linear`` weight and bias on ``device_type`` is held as a
    ``dtype`` copy in its module's parameter slot.

    Under autocast a linear layer casts its fp32 weight to bf16 at *every* forward and caches the cast
    only for leaves that require grad, so frozen weights (the base model under LoRA, everything during
    the adversary's PGD steps) are re-cast at every forward: for a small model on CPU that costs more
    than the forward's matmuls. Held here, they are cast once; the forward computes exactly what
    autocast computes (the same round-to-nearest cast of the same fp32 values), and memory at the peak
    is what autocast holds anyway (its casts are saved for the backward). Trainable weights, weights
    that are not fp32 (e.g. bf16 on GPU) and FSDP2-managed models (FSDP swaps sharded and unsharded
    parameters in those slots at every forward) are left as they are. Nothing is written to the fp32
    masters; they are put back on exit, also on error. Every forward inside must run under autocast.
    Re-entrant: inside, the held copies are no longer fp32, so a nested call holds only what became
    frozen since (e.g. the LoRA weights, frozen for the attack).
    """
    swapped = []
    try:
        if not fsdp_managed(model):
            for module in model.modules():
                if not isinstance(module, torch.nn.Linear):
                    continue
                for name in ("weight", "bias"):
                    p = module._parameters.get(name)
                    if p is None or p.requires_grad or p.dtype != torch.float32 or p.device.type != device_type:
                        continue
                    held = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
                    held._latkit_master = p
                    swapped.append((module, name, p))
                    module._parameters[name] = held
        yield len(swapped)
    finally:
        for module, name, p in reversed(swapped):
            module._parameters[name] = p


__all__ = ["BF16_CPU_FLAGS", "CpuInfo", "PrecisionChoice", "choose_precision", "cpu_info", "frozen_weights_held",
           "fsdp_managed", "held_master", "resolve_mixed_precision"]
