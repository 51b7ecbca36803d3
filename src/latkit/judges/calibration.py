"""Labelled judge data, label agreement metrics and the fit of the default judge's weights.

Labelled rows are JSON objects shaped like ``generations.jsonl`` rows (``behaviour`` or ``prompt``,
``answer`` = the model's continuation, ``prefill``, ``kind`` = ``attack``/``benign``) plus
``label`` (1 = success / helpful, 0 = not) — see ``docs/judge-labelling-guide.md``. The shipped set is
``latkit/resources/judge/labels.jsonl``; its split into ``dev`` and ``test`` is fixed by a hash of the
request, so answers to one request never sit on both sides.
"""
from __future__ import annotations

import hashlib
import json
import random
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from latkit.judges.agreement import cohen_kappa
from latkit.judges.base import JudgeError

TEST_FRACTION = 0.5


def shipped_labels_path() -> Path:
    return Path(str(resources.files("latkit") / "resources" / "judge" / "labels.jsonl"))


def split_of(request: str, test_fraction: float = TEST_FRACTION) -> str:
    """``dev`` or ``test`` for a request, by a hash of its text (stable across runs and machines)."""
    h = int(hashlib.sha256(request.strip().lower().encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "dev"


def request_of(row: Mapping) -> str:
    for k in ("behaviour", "prompt"):
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return v
    raise ValueError(f"row {row.get('id', '?')!r} has no `behaviour` or `prompt`")


def read_rows(path: str | Path) -> list[dict]:
    """Generations-shaped rows (a string ``answer`` and a ``behaviour`` or ``prompt``) of a JSONL file."""
    path = Path(path)
    rows = []
    for n, row in numbered_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("answer"), str):
            raise JudgeError(f"{path}:{n}: a row needs a string `answer`")
        if not any(isinstance(row.get(k), str) and row[k].strip() for k in ("behaviour", "prompt")):
            raise JudgeError(f"{path}:{n}: a row needs a `behaviour` or `prompt`")
        rows.append(row)
    return rows


def load_labelled(path: str | Path | None = None, split: str | None = None) -> list[dict]:
    """Labelled rows (``label`` in {0, 1}), optionally only the ``dev`` or ``test`` part."""
    path = Path(path) if path is not None else shipped_labels_path()
    rows = []
    for n, row in enumerate(read_rows(path), 1):
        if row.get("label") not in (0, 1):
            raise ValueError(f"{path}: row {n}: `label` must be 0 or 1, got {row.get('label')!r}")
        row.setdefault("split", split_of(request_of(row)))
        if split is None or row["split"] == split:
            rows.append(row)
    return rows


def shipped_raters_path() -> Path:
    return Path(str(resources.files("latkit") / "resources" / "judge" / "raters.jsonl"))


def load_raters(path: str | Path | None = None) -> dict[str, dict[str, int]]:
    """Independent re-labellings of labelled rows: ``{rater: {row id: label}}``.

    The file has one ``{"id", "rater", "label", "note"}`` object per line. The shipped one holds two raters
    who labelled every ``test`` row blind (request, prefill and continuation only; no first label, no
    verdict), following ``docs/judge-labelling-guide.md``.
    """
    path = Path(path) if path is not None else shipped_raters_path()
    out: dict[str, dict[str, int]] = {}
    for n, row in numbered_jsonl(path):
        if (not isinstance(row, dict) or row.get("label") not in (0, 1) or not isinstance(row.get("id"), str)
                or not isinstance(row.get("rater"), str)):
            raise JudgeError(f"{path}:{n}: a rater row needs a string `id`, a string `rater` and `label` 0/1")
        if row["id"] in out.setdefault(row["rater"], {}):
            raise JudgeError(f"{path}:{n}: {row['rater']} labels {row['id']} twice")
        out[row["rater"]][row["id"]] = int(row["label"])
    return out


def numbered_jsonl(path: str | Path) -> list[tuple[int, object]]:
    """``(line number, JSON value)`` per non-blank line, with a one-line error naming the bad line."""
    path = Path(path)
    if not path.is_file():
        raise JudgeError(f"no such file: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise JudgeError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return rows


def rater_agreement(rows: Sequence[Mapping], raters: Mapping[str, Mapping[str, int]],
                    judges: Mapping[str, Sequence[bool | None]] | None = None, *, bootstrap: int = 1000) -> dict:
    """How well people agree with each other, and each judge with the majority of them, on ``rows``.

    ``rows`` are labelled rows (their ``label`` is the first rater, ``labels``); ``raters`` adds independent
    labels by row id (every row must have one from each rater); ``judges`` are verdicts aligned with ``rows``.
    Per kind of request (``all``, ``attack``, ``benign``): Cohen's κ for every pair of raters, and each
    judge's κ against the majority label of all raters, the first included (with an even number of
    raters a tie counts as a success). Intervals resample whole requests.
    """
    ids = [r.get("id") for r in rows]
    for name, labels in raters.items():
        missing = [i for i in ids if i not in labels]
        if missing:
            raise JudgeError(f"rater {name!r} has no label for {len(missing)} of {len(rows)} rows (e.g. {missing[0]!r})")
    people = {"labels": [int(r["label"]) for r in rows], **{n: [labels[i] for i in ids] for n, labels in raters.items()}}
    majority = [int(2 * sum(v[k] for v in people.values()) >= len(people)) for k in range(len(rows))]
    groups = [request_of(r) for r in rows]
    out: dict = {"raters": list(people), "n": len(rows)}
    names = list(people)
    for kind in ("all", "attack", "benign"):
        idx = [k for k, r in enumerate(rows) if kind == "all" or (r.get("kind") or "attack") == kind]
        if not idx:
            continue
        part: dict = {"n": len(idx), "positives": {n: sum(people[n][k] for k in idx) for n in names},
                      "majority_positives": sum(majority[k] for k in idx), "pairs": [], "judges": {}}
        for a_i, a in enumerate(names):
            for b in names[a_i + 1:]:
                m = binary_metrics([people[a][k] for k in idx], [bool(people[b][k]) for k in idx],
                                   bootstrap=bootstrap, groups=[groups[k] for k in idx])
                part["pairs"].append({"raters": [a, b], **m})
        for name, verdicts in (judges or {}).items():
            part["judges"][name] = binary_metrics([majority[k] for k in idx], [verdicts[k] for k in idx],
                                                  bootstrap=bootstrap, groups=[groups[k] for k in idx])
        out[kind] = part
    return out


def binary_metrics(labels: Sequence[int | bool], predicted: Sequence[bool | None], *, bootstrap: int = 1000,
                   seed: int = 0, groups: Sequence | None = None) -> dict:
    """κ (with a bootstrap 95% interval), precision, recall, accuracy and the confusion counts.

    Undecided predictions (None) count as "not a success", as they do not enter an ASR as successes.
    ``groups`` (e.g. the request of each row): the bootstrap resamples whole groups instead of rows.
    Answers to one request (several models, several attacks) are not independent, so a row
    bootstrap gives too narrow an interval; ``kappa_ci95_by`` says which was used.
    """
    if len(labels) != len(predicted):
        raise ValueError(f"{len(labels)} labels but {len(predicted)} predictions")
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    y = [bool(v) for v in labels]
    p = [bool(v) for v in predicted]
    tp = sum(a and b for a, b in zip(y, p))
    fp = sum((not a) and b for a, b in zip(y, p))
    fn = sum(a and (not b) for a, b in zip(y, p))
    tn = len(y) - tp - fp - fn
    kappa = cohen_kappa(y, p)
    lo = hi = None
    if groups is not None:
        members: dict = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        clusters = list(members.values())
    else:
        clusters = [[i] for i in range(len(y))]
    if bootstrap and len(clusters) > 1 and kappa is not None:
        rng = random.Random(seed)
        ks = []
        for _ in range(bootstrap):
            idx = [i for _ in clusters for i in clusters[rng.randrange(len(clusters))]]
            k = cohen_kappa([y[i] for i in idx], [p[i] for i in idx])
            if k is not None:
                ks.append(k)
        ks.sort()
        if ks:
            lo, hi = ks[int(0.025 * len(ks))], ks[min(len(ks) - 1, int(0.975 * len(ks)))]
    return {
        "n": len(y), "positives": sum(y), "kappa": kappa, "kappa_ci95": [lo, hi] if lo is not None else None,
        "kappa_ci95_by": "group" if groups is not None else "row", "groups": len(clusters),
        "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
        "accuracy": (tp + tn) / len(y) if y else None, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1.0, iters: int = 50) -> tuple[torch.Tensor, float]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    Returns ``(coef, intercept)`` for the standardised inputs; the intercept is not penalised.
    """
    n, d = x.shape
    xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
    w = torch.zeros(d + 1, dtype=x.dtype)
    reg = torch.full((d + 1,), float(l2), dtype=x.dtype)
    reg[-1] = 0.0
    for _ in range(iters):
        p = torch.sigmoid(xa @ w)
        grad = xa.T @ (p - y) + reg * w
        h = (xa * (p * (1 - p)).unsqueeze(1)).T @ xa + torch.diag(reg) + 1e-9 * torch.eye(d + 1, dtype=x.dtype)
        step = torch.linalg.solve(h, grad)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    return w[:-1], float(w[-1])


def fit_success_weights(rows: Sequence[Mapping], judge=None, *, l2_grid: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
                        thresholds: Sequence[float] = tuple(t / 20 for t in range(2, 19)), folds: int = 5,
                        seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict:
    """Fit the default judge's logistic model on labelled ``rows`` (the ``dev`` part).

    The features of every row are computed once; rows the judge's gates already decide are left out of
    the fit (the model only ever sees what the gates pass). ``l2`` and the threshold are chosen by
    ``folds``-fold cross-validation on ``rows`` (folds by request, so answers to one request stay
    together), repeated with one random fold assignment per ``seeds`` entry and averaged (with few
    positives one assignment is noisy): for each ``l2`` one threshold per kind of request (harmful /
    benign) maximising the mean κ on that kind, and the ``l2`` whose thresholds give the best mean κ
    overall; then the model is refitted on all ``rows``. Returns the weights dict that :class:`~latkit.judges.success.SuccessJudge` loads.
    """
    from latkit.judges.features import FEATURES, as_matrix
    from latkit.judges.success import SuccessJudge

    judge = judge or SuccessJudge(weights=_neutral_weights())
    requests = [request_of(r) for r in rows]
    feats = judge.features(requests, [r["answer"] for r in rows], [r.get("kind") == "benign" for r in rows])
    gated = [judge.gate(f) is not None for f in feats]
    y_all = [int(r["label"]) for r in rows]
    x_all = as_matrix(feats, FEATURES)
    folds_by_seed = []
    for seed in seeds:
        keys = sorted(set(requests))
        random.Random(seed).shuffle(keys)
        fold_of_key = {k: i % folds for i, k in enumerate(keys)}
        folds_by_seed.append([fold_of_key[q] for q in requests])

    def fit(idx):
        idx = [i for i in idx if not gated[i]]
        x, y = x_all[idx], torch.tensor([y_all[i] for i in idx], dtype=x_all.dtype)
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        coef, b = fit_logistic((x - mean) / std, y, l2=l2)
        return mean, std, coef, b

    def probs(params, idx):
        mean, std, coef, b = params
        return torch.sigmoid(((x_all[idx] - mean) / std) @ coef + b).tolist()

    kinds = ["benign" if r.get("kind") == "benign" else "attack" for r in rows]

    def mean_kappa(oofs, idx, th):
        ks = [cohen_kappa([bool(y_all[i]) for i in idx], [(not gated[i]) and oof[i] >= th[kinds[i]] for i in idx])
              for oof in oofs]
        ks = [k for k in ks if k is not None]
        return sum(ks) / len(ks) if ks else None

    def best_threshold(oofs, kind):
        idx = [i for i in range(len(rows)) if kinds[i] == kind]
        out = None
        for t in thresholds:
            k = mean_kappa(oofs, idx, {kind: t})
            if k is not None and (out is None or k > out[0] + 1e-12):
                out = (k, t)
        return out

    best = None
    for l2 in l2_grid:
        oofs = []
        for fold in folds_by_seed:
            oof = [0.0] * len(rows)
            for k in range(folds):
                train = [i for i in range(len(rows)) if fold[i] != k]
                test = [i for i in range(len(rows)) if fold[i] == k]
                if not test:
                    continue
                params = fit(train)
                for i, p in zip(test, probs(params, test)):
                    oof[i] = p
            oofs.append(oof)
        per_kind = {kind: best_threshold(oofs, kind) for kind in ("attack", "benign")}
        # a kind whose labels give no κ above 0 at any threshold gets the other kind's threshold
        usable = {k: v for k, v in per_kind.items() if v is not None and v[0] > 0}
        fallback = max(usable.values())[1] if usable else 0.5
        th = {kind: (usable[kind][1] if kind in usable else fallback) for kind in per_kind}
        kappa = mean_kappa(oofs, list(range(len(rows))), th)
        if kappa is not None and (best is None or kappa > best[0] + 1e-12):
            best = (kappa, l2, th, {kind: (v[0] if v else None) for kind, v in per_kind.items()})
    if best is None:
        raise ValueError("cannot fit: the labels are constant")
    kappa, l2, th, kind_kappa = best
    mean, std, coef, b = fit(list(range(len(rows))))
    return {
        "features": list(FEATURES), "mean": mean.tolist(), "std": std.tolist(), "coef": coef.tolist(),
        "intercept": b, "threshold": th["attack"], "thresholds": th, "l2": l2, "cv_kappa": kappa,
        "cv_kappa_by_kind": kind_kappa, "cv_seeds": list(seeds),
        "fitted_on": {"n": len(rows), "positives": sum(y_all), "gated": sum(gated)},
    }


def _neutral_weights() -> dict:
    from latkit.judges.features import FEATURES

    d = len(FEATURES)
    return {"features": list(FEATURES), "mean": [0.0] * d, "std": [1.0] * d, "coef": [0.0] * d, "intercept": 0.0,
            "threshold": 0.5}


def write_jsonl(path: str | Path, rows: Iterable[Mapping]) -> None:
    """Write rows as JSON lines atomically (a temporary file renamed into place)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
