"""``latkit analyze basis`` and ``latkit analyze removal``: register with :func:`register`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from latkit.cliutil import add_output_argument

__all__ = ["register", "cmd_basis", "cmd_removal", "save_bases", "load_bases"]


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="JSONL/JSON/CSV of texts or of prompt/completion pairs")
    p.add_argument("--text-column", default=None, help="column with plain texts (loss on every token)")
    p.add_argument("--prompt-column", default=None, help="column with chat prompts")
    p.add_argument("--completion-column", default=None, help="column with completions (loss on these)")
    p.add_argument("--max-examples", type=int, default=64, help="use at most this many examples (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=128, help="truncate examples to this many tokens (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per forward pass (default: %(default)s)")


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", type=int, default=2,
                   help="Rademacher probes over output positions for M' (0: exact, slow)")
    p.add_argument("--probe-mode", choices=["positions", "full"], default="positions",
                   help="'positions': exact over output coordinates; 'full': signs over coordinates too (cheaper)")
    p.add_argument("--readout-probes", type=int, default=16, help="sign probes for the logits readout")
    p.add_argument("--chunk", type=int, default=32, help="VJPs per batched autograd call")
    p.add_argument("--dtype", default="float32", help="model weights dtype (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the random probes (default: %(default)s)")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` command (sub-commands ``basis`` and ``removal``) to ``subparsers``."""
    ap = subparsers.add_parser("analyze", help="interaction-basis analyses of a model's residual stream",
                               description="Interaction-basis analyses (Bushnaq et al. 2024) of the residual stream.")
    sub = ap.add_subparsers(dest="analyze_command", metavar="{basis,removal}")
    sub.required = True

    b = sub.add_parser("basis", help="fit interaction bases at layers; write bases + HTML summary")
    b.add_argument("--model", required=True, help="smollm2-135m, a local HF dir, a run dir or a .gguf")
    b.add_argument("--layers", type=int, nargs="+", required=True,
                   help="residual streams entering these decoder layers (num_layers: after the last)")
    b.add_argument("--readout", choices=["logits", "pca"], default="logits",
                   help="last node: logits (every layer gets an interaction basis) or PCA of the last layer")
    add_output_argument(b, dest="out", default="analysis/basis",
                        help="output directory for the bases and summary.html (default: %(default)s)")
    b.add_argument("--ks", type=int, nargs="*", default=None, help="ablation k values (default 0,1,2,4,...)")
    b.add_argument("--no-ablation", action="store_true", help="skip the node-ablation curves")
    b.add_argument("--no-edges", action="store_true", help="skip the edges between consecutive layers")
    b.add_argument("--experimental", action="store_true", help="also write layer diagnostics (experimental)")
    _data_args(b)
    _fit_args(b)
    b.set_defaults(func=cmd_basis)

    r = sub.add_parser("removal", help="removal vs suppression report: base vs trained models")
    r.add_argument("--base", required=True, help="the base model (the basis is fitted on it)")
    r.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a model to compare (repeatable), e.g. lat=runs/lat1")
    r.add_argument("--layer", type=int, required=True, help="the residual stream (entering this decoder layer) to compare models in")
    r.add_argument("--next-layer", type=int, default=None, help="later layer for (iii) edges and the metric")
    r.add_argument("--top-k", type=int, default=8, help="harmful-relevant directions compared (default: %(default)s)")
    r.add_argument("--rank-by", choices=["attribution", "lambda"], default="attribution",
                   help="rank directions by attribution to the harmful loss or by eigenvalue (default: %(default)s)")
    r.add_argument("--no-restore", action="store_true", help="skip (iv), the restoring perturbation")
    r.add_argument("--restore-steps", type=int, default=15, help="(iv): optimisation steps of the restoring perturbation (default: %(default)s)")
    r.add_argument("--restore-batches", type=int, default=4, help="(iv): batches it is fitted on (0: all; default: %(default)s)")
    r.add_argument("--restore-fraction", type=float, default=0.9,
                   help="(iv): share of the gap to the base model's harmful loss to restore (default: %(default)s)")
    r.add_argument("--experimental", action="store_true", help="also report layer diagnostics (experimental)")
    add_output_argument(r, dest="out", default="analysis/removal",
                        help="output directory for the report (default: %(default)s)")
    _data_args(r)
    _fit_args(r)
    r.set_defaults(func=cmd_removal)
    return ap


def _log(msg: str) -> None:
    print(f"[analyze] {msg}", file=sys.stderr, flush=True)


def _load(name: str, dtype: str):
    from latkit.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(name, dtype=dtype, require_chat_template=False)
    model.eval()
    return model, tok


def _batches(tok, args):
    from latkit.analysis.data import load_batches

    return load_batches(tok, args.data, batch_size=args.batch_size, max_length=args.max_length,
                        limit=args.max_examples, text_column=args.text_column, prompt_column=args.prompt_column,
                        completion_column=args.completion_column)


def save_bases(out_dir, bases: dict) -> list[Path]:
    """One ``basis_layer{l}.safetensors`` per layer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for l, b in bases.items():
        p = out / f"basis_layer{l}.safetensors"
        b.save(p)
        paths.append(p)
    return paths


def load_bases(out_dir) -> dict:
    """``{layer: LayerBasis}`` from a directory written by :func:`save_bases`."""
    from latkit.analysis.interaction_basis import LayerBasis

    bases = {}
    for p in sorted(Path(out_dir).glob("basis_layer*.safetensors")):
        bases[int(p.stem[len("basis_layer"):])] = LayerBasis.load(p)
    return dict(sorted(bases.items()))


def _threads(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def cmd_basis(args) -> int:
    from latkit.analysis.ablation import hf_ablation_curve
    from latkit.analysis.hf import fit_interaction_basis, interaction_edges
    from latkit.analysis.removal import layer_diagnostics
    from latkit.analysis.report import basis_summary

    _threads(args)
    t0 = time.time()
    model, tok = _load(args.model, args.dtype)
    batches = _batches(tok, args)
    _log(f"{sum(int(b['attention_mask'].sum()) for b in batches)} tokens in {len(batches)} batches")
    probes = None if args.probes == 0 else args.probes
    bases = fit_interaction_basis(model, batches, args.layers, readout=None if args.readout == "pca" else "logits",
                                  probes=probes, probe_mode=args.probe_mode, readout_probes=args.readout_probes,
                                  chunk=args.chunk, tokenizer=tok, seed=args.seed, progress=_log)
    paths = save_bases(args.out, bases)
    _log(f"wrote {len(paths)} bases to {args.out}")
    curves = {}
    if not args.no_ablation:
        for l, b in bases.items():
            _log(f"ablation curve at layer {l}")
            curves[l] = hf_ablation_curve(model, batches, l, b, args.ks, tokenizer=tok)
    edges = {}
    layers = list(bases)
    if not args.no_edges:
        for l1, l2 in zip(layers, layers[1:]):
            _log(f"edges {l1} -> {l2}")
            edges[(l1, l2)] = interaction_edges(model, batches, bases, l1, l2, probes=probes or None,
                                                chunk=args.chunk, tokenizer=tok, seed=args.seed)
    diag = layer_diagnostics(bases) if args.experimental else None
    meta = {"model": args.model, "data": args.data, "layers": layers, "readout": args.readout,
            "probes": args.probes, "probe_mode": args.probe_mode, "seconds": round(time.time() - t0, 1)}
    page = basis_summary(args.out, bases, curves, edges, diag, meta)
    _log(f"summary: {page}")
    return 0


def cmd_removal(args) -> int:
    from latkit.analysis.removal import removal_report
    from latkit.analysis.report import removal_summary

    _threads(args)
    t0 = time.time()
    base, tok = _load(args.base, args.dtype)
    others = {}
    for spec in args.model:
        if "=" not in spec:
            raise SystemExit(f"--model expects NAME=PATH, got {spec!r}")
        name, path = spec.split("=", 1)
        others[name] = _load(path, args.dtype)[0]
    batches = _batches(tok, args)
    report = removal_report(base, others, batches, layer=args.layer, next_layer=args.next_layer, top_k=args.top_k,
                            rank_by=args.rank_by, probes=max(args.probes, 1), probe_mode=args.probe_mode,
                            readout_probes=args.readout_probes,
                            chunk=args.chunk, restore=not args.no_restore, restore_batches=args.restore_batches,
                            restore_steps=args.restore_steps, restore_fraction=args.restore_fraction,
                            experimental=args.experimental, tokenizer=tok,
                            seed=args.seed, log=_log)
    save_bases(args.out, report["bases"])
    meta = {"base": args.base, "models": args.model, "data": args.data, "seconds": round(time.time() - t0, 1)}
    page = removal_summary(args.out, report, meta)
    for line in report["summary"]:
        print(line)
    _log(f"report: {page}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m latkit.analysis.cli analyze ...``)."""
    ap = argparse.ArgumentParser(prog="latkit")
    register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
