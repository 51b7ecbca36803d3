"""What keeps ``latkit eval`` from losing results or failing late.

- :func:`check_output_dir`: a non-empty output directory is refused unless ``overwrite``.
- :func:`validate_before_generation`: every attack name and its settings, and every model source
  (``--model``, ``--base-model``), are checked before the first generation, so a typo in the
  second model or the last attack does not surface after hours of evaluation.
- :func:`staged_output`: the suite writes into a staging directory inside the output directory;
  only a finished run replaces ``results.json`` / ``generations.jsonl`` / ``report.html``
  (each by an atomic rename, results last-but-report), so the three files always come from
  the same run. A run that fails keeps the earlier files untouched and its partial output in
  ``failed-<UTC time>/``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

OUTPUT_FILES = ("generations.jsonl", "results.json", "report.html")  # in the order they are moved into place
STAGING_PREFIX = ".staging-"


def _suite_error(msg: str):
    from latkit.evaluation.schema import SuiteError

    return SuiteError(msg)


def check_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a non-empty ``output`` unless ``overwrite`` (stale staging dirs of killed runs don't count)."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise _suite_error(f"--output {out} exists and is not a directory")
    if out.is_dir() and not overwrite:
        entries = [p.name for p in out.iterdir() if not p.name.startswith(STAGING_PREFIX)]
        if entries:
            raise _suite_error(f"--output {out} is not empty ({', '.join(sorted(entries)[:3])}"
                               f"{' …' if len(entries) > 3 else ''}): pass --overwrite to replace its results, "
                               "or choose a new directory")
    return out


# --------------------------------------------------------------------------- suite validation
def check_attacks(suite, overrides: Mapping[str, Any] | None = None) -> None:
    """Every attack of ``suite`` exists and accepts its settings (builds each attack object; no model needed)."""
    from latkit.attacks import ATTACKS, AttackError
    from latkit.evaluation.plan import expand_attacks, resolve_attack

    for run in expand_attacks(suite, overrides):
        name = run.entry.name
        if overrides and name in overrides:
            continue
        if name not in ATTACKS:
            raise _suite_error(f"unknown attack {name!r} in suite {suite.name!r}; available: {', '.join(ATTACKS)}")
        try:
            resolve_attack(name, run.params)
        except (AttackError, TypeError, ValueError) as e:
            raise _suite_error(f"attack {run.key!r}: {e}") from None


def check_model_source(source: str) -> None:
    """Refuse a model source that cannot load, without loading it (cheap checks on names and files)."""
    from latkit.models.loading import BUNDLED, TINY_PREFIX, cache_dir, resolve_model_dir

    s = str(source)
    if s.startswith(TINY_PREFIX):
        from latkit.testing import FAMILIES

        if s[len(TINY_PREFIX):] not in FAMILIES:
            raise _suite_error(f"--model {s}: unknown tiny family; known: {', '.join(FAMILIES)}")
        return
    if s in BUNDLED:
        if not (cache_dir() / "models" / BUNDLED[s]["cache_name"] / "model.safetensors").exists():
            from latkit.models.loading import ModelLoadError, bundled_gguf_path

            try:
                bundled_gguf_path(s)
            except ModelLoadError as e:
                raise _suite_error(f"--model {s}: {e}") from None
        return
    path = Path(os.path.expanduser(s))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise _suite_error(f"--model {s}: GGUF file not found")
        return
    if path.exists():
        if not path.is_dir():
            raise _suite_error(f"--model {s}: not a model directory or a .gguf file")
        path = resolve_model_dir(path)
        if (path / "adapter_config.json").exists():
            if not (path / "adapter_model.safetensors").is_file():
                raise _suite_error(f"--model {s}: {path} has no adapter_model.safetensors (safetensors only)")
            try:
                base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            except ValueError:
                raise _suite_error(f"--model {s}: {path}/adapter_config.json is not valid JSON") from None
            if not base:
                raise _suite_error(f"--model {s}: {path}/adapter_config.json does not name its base model")
            check_model_source(base)
            return
        if not (path / "config.json").exists():
            raise _suite_error(f"--model {s}: {path} has neither config.json nor adapter_config.json")
        if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").exists():
            raise _suite_error(f"--model {s}: {path} has no *.safetensors weights (latkit loads safetensors only)")
        return
    if s.startswith((".", "/", "~")) or os.sep + os.sep in s:
        raise _suite_error(f"--model {s}: model path not found")
    from latkit.models.loading import hub_reachable

    if not hub_reachable():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = isinstance(try_to_load_from_cache(s, "config.json"), str)
        except Exception:  # not a valid repo id
            cached = False
        if not cached:
            raise _suite_error(f"--model {s}: not a bundled name ({', '.join(BUNDLED)}), not a local path, and "
                               "not in the local Hugging Face cache (the hub is unreachable)")


def check_generation_backend(suite, models: Sequence) -> None:
    """``generation.backend: vllm``: vllm importable, a CUDA GPU, one process, every model named by a path or
    name vLLM can serve (not an object in memory, a tiny random model or a GGUF file)."""
    if suite.generation.backend != "vllm":
        return
    from latkit.evaluation.sharding import world_size
    from latkit.models.vllm_engine import VLLMError, require_vllm, serving_paths

    try:
        require_vllm()
        if world_size() > 1:
            raise VLLMError("generation.backend 'vllm' runs in one process (vLLM spreads a model over GPUs with "
                            "vllm.tensor_parallel_size); launch latkit eval without torchrun / accelerate launch")
        for m in models:
            source = m if isinstance(m, str) else ("" if getattr(m, "model", None) is not None
                                                   else getattr(m, "source", ""))
            serving_paths(str(source))
    except VLLMError as e:
        raise _suite_error(str(e)) from None


def validate_before_generation(suite, models: Sequence, *, overrides=None, base_model: str | None = None,
                               custom_loader: bool = False) -> None:
    """Everything that can be checked before the first generation: attacks, then every model source.

    Models given as loaded objects, or loaded by a caller's ``model_loader``, are the caller's business."""
    check_attacks(suite, overrides)
    check_generation_backend(suite, models)
    if custom_loader:
        return
    for m in models:
        source = m if isinstance(m, str) else (getattr(m, "source", "") if getattr(m, "model", None) is None else "")
        if source:
            check_model_source(str(source))
    if base_model:
        check_model_source(base_model)


# --------------------------------------------------------------------------- atomic, consistent output
def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def staged_output(output: str | os.PathLike):
    """Yield a staging directory inside ``output``; on success move the result files into ``output``.

    On an exception the files already in ``output`` stay as they were, and whatever the run wrote
    is kept in ``output/failed-<time>/`` (its path is printed to stderr by the caller)."""
    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        if any(staging.iterdir()):
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            failed = out / f"failed-{stamp}"
            os.replace(staging, failed)
            import sys

            print(f"latkit: the partial output of the failed run is in {failed}; the earlier results in {out} "
                  "are untouched", file=sys.stderr)
        else:
            staging.rmdir()
        raise
    publish(staging, out)


def publish(staging: Path, out: Path) -> None:
    """Move the result files of a finished run from ``staging`` into ``out`` (fsync, then atomic renames)."""
    present = [name for name in OUTPUT_FILES if (staging / name).exists()]
    for name in present:
        _fsync(staging / name)
    for name in OUTPUT_FILES:  # a file of the earlier run that this run did not write would be inconsistent
        if name not in present and (out / name).exists():
            (out / name).unlink()
    for name in present:
        os.replace(staging / name, out / name)
    for extra in staging.iterdir():  # anything else the suite wrote
        target = out / extra.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(extra, target)
    staging.rmdir()
    try:
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover
        pass
