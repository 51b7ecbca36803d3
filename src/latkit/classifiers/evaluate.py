"""Evaluate classifier runs against unforeseen failures: clean accuracy, the seen attack (input-space PGD at
the training radius and a larger one), every novel attack at each severity, and backdoor success.

``results.json`` has one row per (model, attack, setting) — ``{"model", "attack", "family", "severity",
"epsilon", "accuracy", "ci95", "k", "n"}`` with Wilson 95% intervals — and a ``summary`` per model (clean,
seen, mean novel accuracy with a bootstrap interval over test examples, backdoor success); ``report.md``
shows the same as tables, models side by side.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from latkit.classifiers.backdoor import triggered
from latkit.classifiers.methods import input_pgd
from latkit.classifiers.modality import AttackContext, ClassifierError
from latkit.classifiers.trainer import load_run_model, read_run_recipe
from latkit.evaluation.stats import proportion

SCHEMA = "latkit.classifier-eval/1"
BOOTSTRAP = 1000


def is_classifier_run(path) -> bool:
    p = Path(str(path)) / "recipe.yaml"
    if not p.is_file():
        return False
    import yaml

    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and data.get("kind") == "classifier"


def backdoor_spec(run_dir: Path, depth: int = 0):
    """The run's ``backdoor`` section, else that of the run it was fine-tuned from (``train.init_from``)."""
    recipe = read_run_recipe(run_dir)
    if recipe.backdoor is not None:
        return recipe.backdoor
    if recipe.train.init_from and depth < 8:
        return backdoor_spec(Path(recipe.train.init_from), depth + 1)
    return None


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield torch.arange(i, min(n, i + size))


def _correct(modality, model, raw, labels) -> torch.Tensor:
    with torch.no_grad():
        logits = modality.forward(model, modality.collate(raw))
    return logits.argmax(-1).cpu() == labels


def seen_settings(recipe, modality_cls) -> tuple[str, list[float]]:
    e = recipe.eval
    m = recipe.method
    if m.kind == "at":
        norm, eps = m.norm, [m.epsilon, 2 * m.epsilon]
    else:
        norm, eps = modality_cls.default_pgd[0], list(modality_cls.default_pgd[1])
    return e.pgd_norm or norm, e.pgd_epsilons or eps


def _row(label, attack, family, correct: torch.Tensor, severity=None, epsilon=None) -> dict:
    k, n = int(correct.sum()), int(correct.numel())
    p = proportion(k, n)
    return {"model": label, "attack": attack, "family": family, "severity": severity, "epsilon": epsilon,
            "accuracy": p["rate"], "ci95": p["ci95"], "k": k, "n": n}


def bootstrap_mean(matrix: torch.Tensor, seed: int, reps: int = BOOTSTRAP) -> list[float]:
    """95% percentile interval of the mean of ``matrix`` (cells × examples, 0/1) resampling examples."""
    n = matrix.shape[1]
    if n == 0:
        return [0.0, 1.0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (reps, n), generator=g)
    per_example = matrix.float().mean(0)
    means = per_example[idx].mean(1)
    return [float(means.quantile(0.025)), float(means.quantile(0.975))]


def evaluate_run(run_dir, *, label: str | None = None, device: str = "cpu", limit: int | None = None,
                 progress: bool = True) -> dict:
    """Rows and summary of one classifier run (see the module docstring)."""
    run_dir = Path(run_dir)
    recipe, modality, model, names = load_run_model(run_dir, device)
    model.eval()
    label = label or run_dir.name
    ev = recipe.eval
    test = modality.load_data(recipe.train.seed).test
    n_max = min(x for x in (len(test), ev.limit, limit) if x is not None)
    test = test.select(torch.arange(n_max))
    bs = ev.batch_size
    rows: list[dict] = []
    t0 = time.perf_counter()

    clean = torch.cat([_correct(modality, model, test.select(i).raw, test.labels[i]) for i in _batches(len(test), bs)])
    rows.append(_row(label, "clean", "clean", clean))

    norm, epsilons = seen_settings(recipe, type(modality))
    seen_rows = []
    for eps in epsilons:
        parts = []
        for i in _batches(len(test), bs):
            b = test.select(i)
            inputs, y = modality.collate(b.raw), b.labels.to(modality.device)
            delta = input_pgd(modality, model, inputs, y, norm=norm, epsilon=eps, steps=ev.pgd_steps)
            with torch.no_grad(), modality.perturb_input(model, delta):
                parts.append(modality.forward(model, inputs).argmax(-1).cpu() == b.labels)
        seen_rows.append(_row(label, f"pgd-{norm}", "seen", torch.cat(parts), epsilon=eps))
    rows += seen_rows

    attacks = modality.novel_attacks()
    chosen = ev.attacks if ev.attacks is not None else list(attacks)
    cells = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(attacks[a].severities) for a in chosen), desc=f"novel attacks {label}", leave=False)
    for a_i, name in enumerate(chosen):
        attack = attacks[name]
        for s_i, severity in enumerate(attack.severities):
            parts = []
            for b_i, i in enumerate(_batches(len(test), bs)):
                b = test.select(i)
                g = torch.Generator().manual_seed(((ev.seed * 1009 + a_i) * 101 + s_i) * 100_003 + b_i)
                ctx = AttackContext(modality, model, b.labels) if attack.needs_model else None
                parts.append(_correct(modality, model, attack(b.raw, severity, g, ctx), b.labels))
            correct = torch.cat(parts)
            cells.append(correct)
            rows.append(_row(label, name, "novel", correct, severity=severity))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    summary = {"clean_accuracy": rows[0]["accuracy"], "clean_ci95": rows[0]["ci95"],
               "seen": {f"{r['attack']}@{r['epsilon']:.4g}": r["accuracy"] for r in seen_rows}, "n": len(test)}
    if cells:
        matrix = torch.stack(cells)
        summary["novel_mean_accuracy"] = float(matrix.float().mean())
        summary["novel_mean_ci95"] = bootstrap_mean(matrix, ev.seed)
        by = {}
        for r in rows:
            if r["family"] == "novel":
                by.setdefault(r["attack"], []).append(r["accuracy"])
        summary["novel_by_attack"] = {k: sum(v) / len(v) for k, v in by.items()}

    spec = backdoor_spec(run_dir)
    backdoor = None
    if spec is not None:
        trig = modality.triggers()[spec.trigger]
        trig_test = triggered(test, trig, spec.params, spec.target, ev.seed)
        target = lambda i: torch.full((len(i),), spec.target, dtype=torch.long)  # noqa: E731
        hits = torch.cat([_correct(modality, model, trig_test.select(i).raw, target(i))  # predicted the target
                          for i in _batches(len(trig_test), bs)]) if len(trig_test) else torch.zeros(0, dtype=torch.bool)
        p = proportion(int(hits.sum()), int(hits.numel()))
        backdoor = {"trigger": spec.trigger, "target": spec.target, "success": p["rate"], "ci95": p["ci95"],
                    "k": p["k"], "n": p["n"]}
        summary["backdoor_success"] = p["rate"]
        summary["backdoor_ci95"] = p["ci95"]
    summary["eval_s"] = time.perf_counter() - t0
    return {"label": label, "source": str(run_dir), "modality": recipe.modality, "method": recipe.method.kind,
            "recipe": recipe.name, "seed": recipe.train.seed, "classes": names, "rows": rows, "summary": summary,
            "backdoor": backdoor}


def evaluate_runs(run_dirs, output, *, device: str = "cpu", limit: int | None = None, progress: bool = True,
                  overwrite: bool = False) -> dict:
    """Evaluate each run; write ``OUTPUT/results.json`` and ``OUTPUT/report.md``; return the results."""
    from latkit.provenance import collect
    from latkit.train.checkpoint import atomic_write_text

    out = Path(output)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ClassifierError(f"{out} is not empty; pass --overwrite to replace its results")
    for r in run_dirs:
        if not is_classifier_run(r):
            raise ClassifierError(f"{r} is not a classifier run (no recipe.yaml with kind: classifier)")
    labels = [Path(str(r)).name for r in run_dirs]
    labels = [f"{lab}-{i}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]
    models = [evaluate_run(r, label=lab, device=device, limit=limit, progress=progress)
              for r, lab in zip(run_dirs, labels)]
    results = {"schema": SCHEMA, "kind": "classifier",
               "models": [{k: v for k, v in m.items() if k != "rows"} for m in models],
               "results": [row for m in models for row in m["rows"]],
               "provenance": collect(device=torch.device(device), dtype=torch.float32)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "report.md", render_report(results))
    return results


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""


def render_report(results: dict) -> str:
    """Markdown: a summary table (models side by side), then accuracy per attack and setting."""
    models = results["models"]
    lines = ["# Classifier evaluation", "",
             "Accuracy in % with Wilson 95% intervals (mean novel accuracy: bootstrap over test examples); "
             "backdoor success = share of triggered non-target test inputs classified as the target.", "",
             "| model | method | n | clean | " + " | ".join(models[0]["summary"]["seen"]) +
             " | novel mean | backdoor success |",
             "|---|---|---|---|" + "---|" * len(models[0]["summary"]["seen"]) + "---|---|"]
    for m in models:
        s = m["summary"]
        seen = " | ".join(_pct(v) for v in s["seen"].values())
        bd = "–" if s.get("backdoor_success") is None else f"{_pct(s['backdoor_success'])} {_ci(s['backdoor_ci95'])}"
        nm = "–" if s.get("novel_mean_accuracy") is None else \
            f"{_pct(s['novel_mean_accuracy'])} {_ci(s['novel_mean_ci95'])}"
        lines.append(f"| {m['label']} | {m['method']} | {s['n']} | {_pct(s['clean_accuracy'])} {_ci(s['clean_ci95'])} "
                     f"| {seen} | {nm} | {bd} |")
    keys, table = [], {}
    for r in results["results"]:
        setting = r["severity"] if r["severity"] is not None else (f"ε={r['epsilon']:.4g}" if r["epsilon"] else "")
        key = (r["attack"], str(setting))
        if key not in table:
            keys.append(key)
        table.setdefault(key, {})[r["model"]] = r
    labels = [m["label"] for m in models]
    lines += ["", "## Accuracy by attack", "", "| attack | setting | " + " | ".join(labels) + " |",
              "|---|---|" + "---|" * len(labels)]
    for key in keys:
        cells = [(f"{_pct(table[key][lab]['accuracy'])} {_ci(table[key][lab]['ci95'])}" if lab in table[key] else "–")
                 for lab in labels]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
