"""Plain / AT / LAT / RLP fine-tuning of a backdoored classifier, in miniature (the paper's protocol).

For each seed of a scale file (``scales/<scale>.yaml``):

1. ``OUT/seed-S/implant/``: plain training on data with a fraction poisoned by the backdoor trigger;
2. ``OUT/seed-S/<method>/``: each method fine-tunes the implanted model on *clean* data (same data, seed,
   steps, optimiser; methods differ only in the perturbation the defender trains under);
3. ``OUT/seed-S/eval/``: ``latkit eval`` on the implanted and every fine-tuned model — clean accuracy, the seen
   attack (input PGD at AT's ε and 2ε), every novel attack at each severity, backdoor success.

Then ``OUT/benchmark.json`` and ``OUT/table.md``: per method, the mean over seeds (and each seed's value) of
every metric, the training cost in forward+backward example-equivalents, and LAT − AT per seed. Every stage is
skipped when its output exists (an interrupted benchmark resumes; training from its last checkpoint).

    python -m benchmarks.classifiers --scale image-cpu --output runs/classifiers-image
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import benchmark_parser, machine, read_scale, select_methods

HERE = Path(__file__).resolve().parent
SCALES = HERE / "scales"
SECTIONS = ("base", "implant", "finetune", "methods", "seeds")


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "method" else v
    return out


def recipes_for(scale: dict, seed: int, implant_dir: Path) -> tuple[dict, dict[str, dict]]:
    """The implant recipe and each method's fine-tuning recipe (dicts) for ``seed``."""
    base = _merge(scale["base"], {"train": {"seed": seed}})
    implant = _merge(base, scale["implant"])
    implant["name"] = "implant"
    methods = {}
    for name, method in scale["methods"].items():
        r = _merge(base, scale["finetune"])
        r["method"] = method
        r["name"] = name
        r.setdefault("train", {})["init_from"] = str(implant_dir)
        methods[name] = r
    return implant, methods


def _train(data: dict, out: Path, overrides, progress: bool) -> float:
    from latkit.classifiers.recipe import recipe_from_dict
    from latkit.classifiers.trainer import train

    if (out / "model" / "classes.json").is_file():
        return 0.0
    t0 = time.perf_counter()
    train(recipe_from_dict(data, overrides), out, resume=(out / "recipe.yaml").is_file(), progress=progress)
    return time.perf_counter() - t0


def _cost(run: Path) -> dict:
    from latkit.train.summary import read_metrics, run_cost

    rows = read_metrics(run)
    cost = run_cost(rows)
    return {"fb_equivalents": cost["fb_equivalents"], "adversary_fb": cost["adversary_fb"],
            "train_s": sum(r.get("time/step_s", 0.0) for r in rows), "steps": rows[-1]["step"] if rows else 0}


def _stat(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "seeds": vals}


def aggregate(per_seed: dict[int, dict], methods: list[str]) -> dict:
    """Mean / sd over seeds of each method's (and the implanted model's) summary numbers, and LAT − AT per seed."""
    rows = {}
    for m in ["implant", *methods]:
        entries = [per_seed[s][m] for s in sorted(per_seed) if m in per_seed[s]]
        keys = ("clean_accuracy", "novel_mean_accuracy", "backdoor_success")
        row = {k: _stat([e["summary"].get(k) for e in entries]) for k in keys}
        for seen_key in entries[0]["summary"]["seen"]:
            row[f"seen {seen_key}"] = _stat([e["summary"]["seen"][seen_key] for e in entries])
        attacks = entries[0]["summary"].get("novel_by_attack", {})
        row["novel_by_attack"] = {a: _stat([e["summary"]["novel_by_attack"][a] for e in entries]) for a in attacks}
        row["cost"] = {k: _stat([e["cost"][k] for e in entries]) for k in ("fb_equivalents", "train_s")}
        row["n_test"] = entries[0]["summary"]["n"]
        rows[m] = row
    diffs = {}
    if "lat" in methods and "at" in methods:
        for k in ("clean_accuracy", "novel_mean_accuracy", "backdoor_success"):
            diffs[k] = [per_seed[s]["lat"]["summary"].get(k) - per_seed[s]["at"]["summary"].get(k)
                        for s in sorted(per_seed) if per_seed[s]["lat"]["summary"].get(k) is not None]
    return {"summary": rows, "lat_minus_at": diffs}


def _fmt(stat, pct=True) -> str:
    if stat is None:
        return "–"
    scale = 100 if pct else 1
    return f"{scale * stat['mean']:.1f} ± {scale * stat['sd']:.1f}"


def table(agg: dict) -> str:
    rows = agg["summary"]
    first = next(iter(rows.values()))
    seen = [k for k in first if k.startswith("seen ")]
    head = ["method", "clean", *[k[5:] for k in seen], "novel mean", "backdoor success", "FB-equiv. (k)", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in rows.items():
        cells = [m, _fmt(r["clean_accuracy"]), *[_fmt(r[k]) for k in seen], _fmt(r["novel_mean_accuracy"]),
                 _fmt(r["backdoor_success"]), f"{r['cost']['fb_equivalents']['mean'] / 1e3:.1f}",
                 f"{r['cost']['train_s']['mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    attacks = list(first["novel_by_attack"])
    lines += ["", "Accuracy under each novel attack (mean over its severities and the seeds, %):", "",
              "| method | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for m, r in rows.items():
        lines.append(f"| {m} | " + " | ".join(f"{100 * r['novel_by_attack'][a]['mean']:.1f}" for a in attacks) + " |")
    if agg["lat_minus_at"]:
        lines += ["", "LAT − AT per seed (percentage points):", ""]
        for k, v in agg["lat_minus_at"].items():
            lines.append(f"- {k}: " + ", ".join(f"{100 * d:+.1f}" for d in v))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = benchmark_parser("python -m benchmarks.classifiers", __doc__.splitlines()[0], scales="image-cpu",
                         model_help="unused (the scale names the model)")
    p.set_defaults(scale="image-cpu")
    p.add_argument("--seeds", help="comma-separated subset of the scale's seeds")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core CPU two threads ran a SmallCNN step 6x slower)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from latkit.classifiers.evaluate import evaluate_runs

    path, scale = read_scale(args.scale, SCALES, SECTIONS)
    methods = select_methods(scale["methods"], args.methods)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(scale["seeds"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.device == "auto" else args.device
    progress = not args.no_progress
    per_seed = {}
    t_start = time.perf_counter()
    for seed in seeds:
        sd = out / f"seed-{seed}"
        implant, recipes = recipes_for(scale, seed, sd / "implant")
        print(f"[seed {seed}] implant", flush=True)
        _train(implant, sd / "implant", args.overrides, progress)
        for name in methods:
            print(f"[seed {seed}] fine-tune: {name}", flush=True)
            _train(recipes[name], sd / name, args.overrides, progress)
        res_file = sd / "eval" / "results.json"
        runs = [sd / "implant", *[sd / m for m in methods]]
        if res_file.is_file():
            res = json.loads(res_file.read_text())
        else:
            print(f"[seed {seed}] eval", flush=True)
            res = evaluate_runs(runs, sd / "eval", device=device, progress=progress, overwrite=True)
        per_seed[seed] = {}
        for m, run in zip(res["models"], runs):
            per_seed[seed][m["label"]] = {"summary": m["summary"], "backdoor": m["backdoor"], "cost": _cost(run)}
    agg = aggregate(per_seed, methods)
    result = {"benchmark": "classifiers", "scale": str(path), "scale_config": scale, "seeds": seeds,
              "methods": methods, "machine": machine(), "wall_s": time.perf_counter() - t_start,
              "per_seed": per_seed, **agg}
    (out / "benchmark.json").write_text(json.dumps(result, indent=1))
    md = table(agg)
    (out / "table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
