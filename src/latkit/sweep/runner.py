"""Run a sweep point by point, resumably: train (or continue training), evaluate, score, report.

The output directory::

    OUT/sweep.yaml                      the sweep as it was last run
    OUT/points/<id>/point.json          method, overrides, status, scores, compute
    OUT/points/<id>/run/                the training run (``latkit train`` layout)
    OUT/points/<id>/eval/               its evaluation (``latkit eval`` layout: results.json, generations.jsonl)
    OUT/references/<label>/eval/        the reference models' evaluations
    OUT/sweep.json, report.md, pareto.png

Rerunning the same command continues where it stopped: a finished training run is not retrained, a
half-finished one resumes from its last checkpoint, an evaluation is reused when the suite and its
overrides are unchanged (else it is redone). A point's id holds the hash of its resolved recipe, so a
changed recipe trains a new point and never reuses a stale run.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from latkit.sweep.config import Point, SweepConfig, SweepError, expand_points

__all__ = ["run_sweep", "sweep_status", "load_points"]

POINT_FILE = "point.json"


def _log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _suite_of(cfg: SweepConfig):
    from latkit.evaluation.schema import load_suite, override_suite

    e = cfg.eval
    return override_suite(load_suite(cfg.suite), max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                          limit=e.limit)


def _eval_key(suite, data_dir) -> str:
    blob = json.dumps({"suite": suite.model_dump(mode="json"), "data_dir": data_dir}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _selected(points: Sequence[Point], only: Sequence[str] | None) -> list[Point]:
    if not only:
        return list(points)
    known = {p.id for p in points} | {p.method for p in points}
    bad = [o for o in only if o not in known]
    if bad:
        raise SweepError(f"--only {', '.join(bad)}: not a method or point id of this sweep "
                         f"(see `latkit sweep --dry-run`)")
    return [p for p in points if p.id in only or p.method in only]


def sweep_status(cfg: SweepConfig, output: str | os.PathLike) -> list[dict]:
    """One row per point: ``id``, ``method``, ``overrides`` and ``status`` (new / training / trained /
    evaluated / failed), without running anything (``latkit sweep --dry-run``)."""
    out = Path(output)
    rows = []
    for p in expand_points(cfg):
        rec = _read_json(out / "points" / p.id / POINT_FILE) or {}
        rows.append({"id": p.id, "method": p.method, "overrides": p.overrides, "status": rec.get("status", "new")})
    return rows


DATA_FILES = ("harmful.jsonl", "benign.jsonl", "fingerprint")


def _share_data(recipe, run_dir: Path, points_dir: Path) -> Path | None:
    """Seed a fresh run's data cache from another point whose data section is the same (same fingerprint:
    the prompts, the generated answers, the seed), so a sweep generates its training data once. The
    trainer checks the fingerprint again and rebuilds a cache that does not match."""
    from latkit.train.recipe import data_fingerprint

    want = data_fingerprint(recipe)
    for stamp in sorted(points_dir.glob("*/run/data/fingerprint")):
        src = stamp.parent
        if src.parent == run_dir or stamp.read_text().strip() != want:
            continue
        if not all((src / f).is_file() for f in DATA_FILES):
            continue
        (run_dir / "data").mkdir(parents=True, exist_ok=True)
        for f in DATA_FILES:
            shutil.copy2(src / f, run_dir / "data" / f)
        return src
    return None


def _train_point(p: Point, run_dir: Path, *, progress: bool, trainer_kwargs: Mapping) -> None:
    from latkit.train import Trainer, load_recipe

    recipe = load_recipe(p.recipe, p.set_args())
    resume = (run_dir / "recipe.yaml").is_file()
    if resume:
        _log(f"{p.id}: resuming training: {p.label()}")
    else:
        _log(f"{p.id}: training: {p.label()}")
        if run_dir.exists():  # an earlier attempt that died before it wrote its recipe: nothing to keep
            shutil.rmtree(run_dir)
        shared = _share_data(recipe, run_dir, run_dir.parent.parent)
        if shared is not None:
            _log(f"{p.id}: training data from {shared} (same data section)")
    trainer = Trainer(recipe, run_dir, resume=resume, progress=progress, **trainer_kwargs)
    try:
        trainer.train()
    finally:
        del trainer
        gc.collect()


def _evaluate(label: str, source: str, eval_dir: Path, suite, cfg: SweepConfig, *, device: str, progress: bool,
              suite_kwargs: Mapping) -> dict:
    from latkit.evaluation.runner import ModelSpec, run_suite
    from latkit.evaluation.safety import staged_output

    with staged_output(eval_dir) as staging:  # earlier results stay until this evaluation has finished
        results = run_suite(suite, [ModelSpec(label=label, source=source)], staging, data_dir=cfg.data_dir,
                            device=device, progress=progress, **suite_kwargs)
    gc.collect()
    return results


def _compute(run_dir: Path) -> dict:
    from latkit.train.summary import read_metrics, run_cost

    cost = run_cost(read_metrics(run_dir))
    return {"fb_equivalents": cost.get("fb_equivalents"), "wall_s": cost.get("wall_s")}


def _run_one(p: Point, out: Path, suite, eval_key: str, cfg: SweepConfig, *, device: str, progress: bool,
             suite_kwargs: Mapping, trainer_kwargs: Mapping) -> dict:
    from latkit.sweep.pareto import point_scores

    pdir = out / "points" / p.id
    pdir.mkdir(parents=True, exist_ok=True)
    rec = _read_json(pdir / POINT_FILE) or {}
    rec.update(id=p.id, method=p.method, index=p.index, recipe=p.recipe, overrides=p.overrides, key=p.key)
    run_dir, eval_dir = pdir / "run", pdir / "eval"
    if not (rec.get("trained") and (run_dir / "model").is_dir()):
        rec.update(status="training", trained=False, error=None)
        _write_json(pdir / POINT_FILE, rec)
        _train_point(p, run_dir, progress=progress, trainer_kwargs=trainer_kwargs)
        rec.update(status="trained", trained=True, compute=_compute(run_dir))
        _write_json(pdir / POINT_FILE, rec)
    results = _read_json(eval_dir / "results.json") if rec.get("eval_key") == eval_key else None
    if rec.get("status") != "evaluated" or results is None:
        _log(f"{p.id}: evaluating")
        results = _evaluate(p.id, str(run_dir), eval_dir, suite, cfg, device=device, progress=progress,
                            suite_kwargs=suite_kwargs)
        rec.update(status="evaluated", eval_key=eval_key, eval_errors=len(results.get("errors") or []))
    rec["scores"] = point_scores(results, p.id)
    _write_json(pdir / POINT_FILE, rec)
    return rec


def _run_reference(label: str, out: Path, suite, eval_key: str, cfg: SweepConfig, *, device: str, progress: bool,
                   suite_kwargs: Mapping) -> dict:
    from latkit.sweep.pareto import point_scores

    rid = "ref-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    rdir = out / "references" / rid
    rdir.mkdir(parents=True, exist_ok=True)
    rec = _read_json(rdir / POINT_FILE) or {}
    results = _read_json(rdir / "eval" / "results.json") if rec.get("eval_key") == eval_key else None
    if results is None:
        _log(f"{rid}: evaluating the reference model {label}")
        results = _evaluate(rid, label, rdir / "eval", suite, cfg, device=device, progress=progress,
                            suite_kwargs=suite_kwargs)
    rec.update(id=rid, method=rid, reference=True, source=label, overrides={}, status="evaluated", eval_key=eval_key,
               eval_errors=len(results.get("errors") or []), scores=point_scores(results, rid))
    _write_json(rdir / POINT_FILE, rec)
    return rec


def load_points(cfg: SweepConfig, output: str | os.PathLike, points: Sequence[Point] | None = None) -> list[dict]:
    """The records of every point (and reference) of ``cfg`` found in ``output``, in sweep order (``points``:
    ``cfg``'s points as already expanded, so a recipe file edited while the sweep ran does not change them)."""
    out = Path(output)
    recs = []
    for label in cfg.references:
        for f in sorted((out / "references").glob(f"ref-*/{POINT_FILE}")):
            rec = _read_json(f)
            if rec and rec.get("source") == label:
                recs.append(rec)
    for p in expand_points(cfg) if points is None else points:
        rec = _read_json(out / "points" / p.id / POINT_FILE)
        # the overrides as this sweep file spells them (same id: the same resolved recipe)
        recs.append({**rec, "overrides": p.overrides} if rec else
                    {"id": p.id, "method": p.method, "overrides": p.overrides, "status": "new"})
    return recs


def run_sweep(cfg: SweepConfig, output: str | os.PathLike, *, only: Sequence[str] | None = None, device: str = "auto",
              progress: bool = True, fail_fast: bool = False, suite_kwargs: Mapping[str, Any] | None = None,
              trainer_kwargs: Mapping[str, Any] | None = None,
              on_point: Callable[[dict], None] | None = None) -> dict:
    """Train and evaluate every point of ``cfg`` (or those of ``only``: method names or point ids) into
    ``output``, resuming what is there; write ``sweep.json``, ``report.md`` and ``pareto.png``.

    A point that fails with an expected error is recorded (``status: failed``, its message) and the sweep
    goes on, unless ``fail_fast``. ``suite_kwargs`` / ``trainer_kwargs`` go to ``run_suite`` / ``Trainer``.
    Returns the summary written to ``sweep.json``."""
    from latkit.errors import EXPECTED
    from latkit.sweep.report import write_report

    out = Path(output).expanduser()
    every = expand_points(cfg)  # validates every override before anything trains
    points = _selected(every, only)
    suite = _suite_of(cfg)
    eval_key = _eval_key(suite, cfg.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    kw = dict(device=device, progress=progress, suite_kwargs=dict(suite_kwargs or {}))
    for label in cfg.references if not only else ():
        _run_reference(label, out, suite, eval_key, cfg, **kw)
    for p in points:
        try:
            rec = _run_one(p, out, suite, eval_key, cfg, trainer_kwargs=dict(trainer_kwargs or {}), **kw)
        except EXPECTED as e:
            if fail_fast:
                raise
            _log(f"{p.id}: failed: {e}")
            pfile = out / "points" / p.id / POINT_FILE
            rec = {**(_read_json(pfile) or {}), "id": p.id, "method": p.method, "overrides": p.overrides,
                   "status": "failed", "error": f"{type(e).__name__}: {e}"}
            _write_json(pfile, rec)
        if on_point is not None:
            on_point(rec)
    return write_report(cfg, out, load_points(cfg, out, every))
