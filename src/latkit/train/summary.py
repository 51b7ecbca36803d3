"""A short, human summary of a run from its metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-step rows of ``RUN/metrics.jsonl`` (without its provenance header row)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "provenance" not in r]  # the header row says what produced the run


def read_provenance(run_dir: Path) -> dict | None:
    """The provenance header row of ``RUN/metrics.jsonl`` (versions, device, commit, seeds, recipe hash)."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines()[:1]:
            row = json.loads(line)
            if "provenance" in row:
                return row["provenance"]
    return None


def _mean(rows, key):
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if vals else None


def summarize_run(run_dir: Path, window: int = 3) -> str:
    """What changed over the run: defender losses first→last, what the adversary achieved, cost."""
    rows = read_metrics(run_dir)
    if not rows:
        return f"{run_dir}: no metrics yet"
    head, tail = rows[:window], rows[-window:]
    lines = [f"run {run_dir}: {rows[-1]['step']} steps"]
    for key in sorted({k for r in rows for k in r if k.startswith("loss/")}):
        a, b = _mean(head, key), _mean(tail, key)
        lines.append(f"  {key:<22} {a:8.4f} -> {b:8.4f}  (mean of first/last {window} steps)")
    if any("adv/loss_before" in r for r in rows):
        before, after = _mean(tail, "adv/loss_before"), _mean(tail, "adv/loss_after")
        lines.append(f"  adversary loss (last {window} steps): {before:.4f} before PGD -> "
                     f"{after if after is not None else float('nan'):.4f} after")
    for key in sorted({k for r in rows for k in r if k.endswith("/norm_mean")}):
        site = key[len("adv/"):-len("/norm_mean")]
        lines.append(
            f"  |δ| at {site:<9} mean {_mean(rows, key):.3f}, max {_mean(rows, f'adv/{site}/norm_max'):.3f}, "
            f"constraint active on {100 * _mean(rows, f'adv/{site}/active_frac'):.0f}% of tokens")
    t_adv = sum(r.get("time/adversary_s", 0) for r in rows)
    t_def = sum(r.get("time/defender_s", 0) for r in rows)
    toks = sum(r.get("tokens", 0) for r in rows)
    lines.append(f"  time: adversary {t_adv:.1f}s, defender {t_def:.1f}s; {toks} tokens")
    cost = run_cost(rows)
    if cost["fb_equivalents"]:
        lines.append(f"  compute: {cost['fb_equivalents']:.3g} forward+backward token-equivalents "
                     f"({100 * cost['adversary_fb'] / cost['fb_equivalents']:.0f}% in the adversary)")
    return "\n".join(lines)


def run_cost(rows: list[dict]) -> dict[str, float]:
    """Total training cost of a run from its metrics rows (see :mod:`latkit.train.compute`).

    Exact when every step was logged (``log_every: 1``, the default)."""
    total = {k: sum(r.get(f"cost/{k}", 0.0) for r in rows)
             for k in ("adversary_fb", "defender_fb", "adversary_token_passes", "defender_token_passes")}
    total["fb_equivalents"] = total["adversary_fb"] + total["defender_fb"]
    total["token_passes"] = total["adversary_token_passes"] + total["defender_token_passes"]
    total["wall_s"] = sum(r.get("time/adversary_s", 0.0) + r.get("time/defender_s", 0.0) for r in rows)
    return total
