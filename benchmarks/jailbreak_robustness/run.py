"""Jailbreak robustness in miniature: RT, RT-EAT, RT-EAT-LAT, untargeted LAT, RLP and R2D2-style.

One command trains every method of a scale file (``scales/<scale>.yaml``) with the
same data, seed, LoRA and number of defender updates, evaluates the base model and
every trained model with the scale's HarmBench-*val* suite, and writes

- ``OUT/runs/<method>/``: the training runs (``latkit train`` layout);
- ``OUT/eval_val/``: ``results.json``, ``generations.jsonl``, ``report.html``;
- ``OUT/table_val.md`` and ``OUT/benchmark.json``: ASR per attack, benign compliance,
  MMLU and training cost (wall time, forward+backward token-equivalents, tokens).

``--final`` adds the held-out evaluation (HarmBench *test* + StrongREJECT) in
``OUT/eval_test`` and ``OUT/table_test.md``: run it once, after the settings are fixed.
Every stage is skipped when its output exists, so an interrupted benchmark resumes
(training runs resume from their last checkpoint).

    python -m benchmarks.jailbreak_robustness --scale cpu --output runs/jailbreak-cpu
    python -m benchmarks.jailbreak_robustness --scale cpu --output runs/jailbreak-cpu --final
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import benchmark_parser, machine, read_scale, select_methods, si

HERE = Path(__file__).resolve().parent
SCALES = HERE / "scales"
# columns of the table, in order: (result label prefix, header)
ATTACK_ORDER = ("direct", "prefill", "many_shot", "templates", "latent", "gcg", "refusal_direction", "finetune")


def load_scale(spec: str) -> dict:
    """A scale by name (``cpu``, ``gpu``, ``tiny``) or path; checks its recipes and suites validate."""
    path, scale = read_scale(spec, SCALES, ("recipe", "methods", "suite_val"))
    for method in scale["methods"]:
        method_recipe(scale, method)  # validate early: a typo fails before hours of training
    from latkit.evaluation.suite import load_suite

    for key in ("suite_val", "suite_test"):
        if scale.get(key):
            load_suite(scale[key])
    scale["path"] = str(path)
    return scale


def method_recipe(scale: dict, method: str, extra: list[str] | None = None):
    """The base recipe with the method's overrides (then ``extra`` ``key=value`` ones)."""
    from latkit.train.recipe import recipe_from_dict

    over = [f"{k}={json.dumps(v)}" for k, v in (scale["methods"][method] or {}).items()]
    base = json.loads(json.dumps(scale["recipe"]))
    base["name"] = f"{base.get('name', 'run')}-{method}"
    return recipe_from_dict(base, over + list(extra or []))


def prepare_shared_data(recipe, data_dir: Path, log=print) -> None:
    """Generate the harmful/benign data once (with the base model) for every method.

    The cache is stamped with the recipe's data fingerprint, as a training run stamps its own: a run
    seeded with it (:func:`train_method`) then reuses it instead of regenerating it, and a cache built
    from another data section is rebuilt here."""
    from latkit.train.checkpoint import atomic_write_text
    from latkit.train.recipe import data_fingerprint

    want = data_fingerprint(recipe)
    stamp = data_dir / "fingerprint"
    have = stamp.read_text().strip() if stamp.exists() else None
    complete = (data_dir / "harmful.jsonl").exists() and (recipe.data.benign is None or (data_dir / "benign.jsonl").exists())
    if complete and have in (want, None):  # None: a cache from before the stamp, with this scale's data
        if have is None:
            atomic_write_text(stamp, want + "\n")
        return
    if have is not None and have != want:
        log(f"[bench] the shared data in {data_dir} was built from a different data section: rebuilding it")
        for f in data_dir.glob("*.jsonl"):
            f.unlink()
    from latkit.models.loading import load_model_and_tokenizer
    from latkit.train.data import prepare_data

    data_dir.mkdir(parents=True, exist_ok=True)
    model, tok = load_model_and_tokenizer(recipe.model.name, dtype="float32",
                                          trust_remote_code=recipe.model.trust_remote_code,
                                          chat_template=recipe.model.chat_template)
    prepare_data(recipe, model, tok, data_dir, log=log)
    atomic_write_text(stamp, want + "\n")


def train_method(scale: dict, method: str, out: Path, extra: list[str], progress: bool) -> dict:
    """Train one method (resuming if interrupted); return its cost summary."""
    from latkit.train import Trainer
    from latkit.train.summary import read_metrics, run_cost

    run_dir = out / "runs" / method
    recipe = method_recipe(scale, method, extra)
    if not (run_dir / "model").exists():
        resume = (run_dir / "recipe.yaml").exists()
        if not resume:
            (run_dir / "data").mkdir(parents=True, exist_ok=True)
            for f in [*(out / "data").glob("*.jsonl"), out / "data" / "fingerprint"]:
                if f.exists():
                    shutil.copy(f, run_dir / "data" / f.name)
        print(f"[bench] training {method} -> {run_dir}{' (resuming)' if resume else ''}", flush=True)
        Trainer(recipe, run_dir, resume=resume, progress=progress).train()
    cost = run_cost(read_metrics(run_dir))
    cost["steps"] = recipe.train.steps
    cost["defender_updates"] = recipe.train.steps * recipe.train.defender_steps * recipe.train.grad_accum
    return cost


def evaluate(scale: dict, suite_key: str, models: list[str], out_dir: Path, device: str, progress: bool) -> dict:
    from latkit.evaluation.suite import run_suite

    done = out_dir / "results.json"
    if done.exists():
        res = json.loads(done.read_text())
        if {m["source"] for m in res["models"]} == set(models) and not res["errors"]:
            print(f"[bench] {out_dir} is complete; not re-evaluating", flush=True)
            return res
    print(f"[bench] evaluating {len(models)} models with {suite_key} -> {out_dir}", flush=True)
    return run_suite(scale[suite_key], models, out_dir, device=device, progress=progress)


# ------------------------------------------------------------------------------ table
def _columns(results: dict) -> list[tuple[str, str]]:
    """(dataset, attack label) pairs present, attacks in ATTACK_ORDER then the rest."""
    seen = []
    for r in results["results"]:
        key = (r["dataset"], r["attack"])
        if key not in seen:
            seen.append(key)

    def rank(key):
        attack = key[1]
        base = attack.split("[")[0]
        return (key[0], ATTACK_ORDER.index(base) if base in ATTACK_ORDER else len(ATTACK_ORDER), attack)

    return sorted(seen, key=rank)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}"


def table(results: dict, costs: dict[str, dict], labels: dict[str, str]) -> tuple[str, list[dict]]:
    """A markdown table (rows = models, ASR % per attack, utility, cost) and the same as records."""
    cols = _columns(results)
    by = {(r["model"], r["dataset"], r["attack"]): r for r in results["results"]}
    multi_ds = len({d for d, _ in cols}) > 1
    head = [f"{a} ({d})" if multi_ds else a for d, a in cols]
    util = results.get("utility") or {}
    has_benign = any((u or {}).get("benign_compliance") for u in util.values())
    has_mmlu = any((u or {}).get("mmlu") for u in util.values())
    head += (["benign compl."] if has_benign else []) + (["MMLU"] if has_mmlu else [])
    head += ["train wall (s)", "train FB-equiv (tokens)", "× RT", "tokens through layers"]
    ref = (costs.get("RT") or {}).get("fb_equivalents")
    lines = ["| method | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    records = []
    for m in results["models"]:
        label = m["label"]
        name = labels.get(m["source"], label)
        rec = {"method": name, "asr": {}, "n": {}}
        cells = []
        for d, a in cols:
            r = by.get((label, d, a))
            key = f"{a} ({d})" if multi_ds else a
            rec["asr"][key] = None if r is None else r["asr"]
            rec["n"][key] = None if r is None else r["n"]
            cells.append(_pct(None if r is None else r["asr"]))
        u = util.get(label) or {}
        if has_benign:
            rec["benign_compliance"] = (u.get("benign_compliance") or {}).get("rate")
            cells.append(_pct(rec["benign_compliance"]))
        if has_mmlu:
            rec["mmlu"] = (u.get("mmlu") or {}).get("accuracy")
            cells.append("–" if rec["mmlu"] is None else f"{100 * rec['mmlu']:.1f}")
        c = costs.get(name)
        rec["cost"] = c
        if c:
            cells += [f"{c['wall_s']:.0f}", si(c["fb_equivalents"]),
                      f"{c['fb_equivalents'] / ref:.1f}" if ref else "–", si(c["token_passes"])]
        else:
            cells += ["–"] * 4
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        records.append(rec)
    ns = sorted({r["n"] for r in results["results"]})
    lines.append("")
    judge = next((r.get("judge") for r in results["results"] if r.get("judge")), "?")
    lines.append(f"ASR in % ({judge} judge), n per cell between {ns[0]} and {ns[-1]} behaviours; "
                 "FB-equiv = forward+backward token-equivalents through the decoder (latkit.train.compute).")
    return "\n".join(lines), records


def main(argv: list[str] | None = None) -> dict:
    p = benchmark_parser("python -m benchmarks.jailbreak_robustness", __doc__.split("\n")[0], scales="cpu, gpu, tiny",
                         model_help="train and evaluate this model instead of the scale's (a name, dir or .gguf)")
    p.add_argument("--final", action="store_true", help="also run the held-out test suite (once, at the end)")
    p.add_argument("--skip-eval", action="store_true", help="train only")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    scale = load_scale(args.scale)
    if args.model:
        scale["recipe"].setdefault("model", {})["name"] = args.model
    methods = select_methods(scale["methods"], args.methods)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    base_recipe = method_recipe(scale, methods[0], args.overrides)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    prepare_shared_data(base_recipe, out / "data")
    timings["data_s"] = time.perf_counter() - t
    costs = {}
    t = time.perf_counter()
    for m in methods:
        costs[m] = train_method(scale, m, out, args.overrides, progress)
    timings["train_s"] = time.perf_counter() - t

    report = {"scale": scale["path"], "command": " ".join(["python -m benchmarks.jailbreak_robustness",
                                                           *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "base_model": base_recipe.model.name, "methods": methods, "costs": costs,
              "recipes": {m: method_recipe(scale, m, args.overrides).model_dump(mode="json") for m in methods}}
    bench_json = out / "benchmark.json"
    if bench_json.exists():  # keep earlier stages' numbers (e.g. val tables when adding --final)
        old = json.loads(bench_json.read_text())
        report = {**old, **report, "timings": {**old.get("timings", {}), **timings}}
    else:
        report["timings"] = timings
    if not args.skip_eval:
        models = [base_recipe.model.name] + [str(out / "runs" / m) for m in methods]
        labels = {base_recipe.model.name: "base", **{str(out / "runs" / m): m for m in methods}}
        stages = [("suite_val", "eval_val", "val")] + ([("suite_test", "eval_test", "test")] if args.final else [])
        for suite_key, folder, tag in stages:
            if not scale.get(suite_key):
                raise SystemExit(f"scale {args.scale!r} has no {suite_key}")
            t = time.perf_counter()
            res = evaluate(scale, suite_key, models, out / folder, args.device, progress)
            report["timings"][f"eval_{tag}_s"] = time.perf_counter() - t
            md, records = table(res, costs, labels)
            (out / f"table_{tag}.md").write_text(md + "\n")
            report[f"table_{tag}"] = records
            print(md, flush=True)
    report["timings"]["total_s"] = report["timings"].get("total_s", 0.0) + time.perf_counter() - t_start
    bench_json.write_text(json.dumps(report, indent=1))
    print(f"[bench] wrote {bench_json}", flush=True)
    return report
