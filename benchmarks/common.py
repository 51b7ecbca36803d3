"""What the method benchmarks (jailbreak_robustness, backdoor_removal, unlearning) share: scale files,
method selection, the machine record, number formatting and the common command-line options."""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import yaml

from latkit.cliutil import add_output_argument


def read_scale(spec: str, scales: Path, sections) -> tuple[Path, dict]:
    """``(path, parsed YAML)`` of a scale given by name (a file in ``scales``) or path, with ``sections``."""
    path = Path(spec) if Path(spec).suffix in (".yaml", ".yml") else scales / f"{spec}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in scales.glob("*.yaml")))
        raise SystemExit(f"unknown scale {spec!r}: use one of {names} or a YAML path")
    scale = yaml.safe_load(path.read_text())
    missing = set(sections) - set(scale)
    if missing:
        raise SystemExit(f"{path}: missing sections {sorted(missing)}")
    return path, scale


def select_methods(available, spec: str | None) -> list[str]:
    """The methods named in a comma-separated ``spec`` (all of ``available`` for None), checked."""
    if not spec:
        return list(available)
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(available))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; the scale has {sorted(available)}")
    return methods


def si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        from latkit.models.precision import cpu_info

        info["device"] = f"CPU ({platform.processor() or platform.machine()})"
        info["cpu"] = cpu_info().describe()  # model, capability, bf16 flags: timings differ with them
    return info


def benchmark_parser(prog: str, description: str, *, scales: str, model_help: str,
                     set_help: str = "recipe override applied to every method (repeatable)") -> argparse.ArgumentParser:
    """The options every method benchmark takes: --scale, --output, --methods, --model, --set, --device,
    --no-progress (each benchmark adds its own)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--scale", default="cpu", help=f"{scales} or a scale YAML (default: cpu)")
    add_output_argument(p, required=True, dest="out", help="output directory (re-run to resume)")
    p.add_argument("--methods", help="comma-separated subset of the scale's methods")
    p.add_argument("--model", help=model_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p
