"""Saving trained models the way the Hugging Face ecosystem expects them.

- The adapter's ``base_model_name_or_path`` is something ``AutoModelForCausalLM.from_pretrained`` (and so
  ``peft.AutoPeftModelForCausalLM``) can load offline: the bundled SmolLM2 is recorded under its hub id
  ``HuggingFaceTB/SmolLM2-135M-Instruct`` and its de-quantized copy is registered in the local Hugging
  Face cache under that id (unless a real snapshot is already there); a local model dir is recorded by
  its absolute path; a base that has no loadable name (``tiny-random:*``, a ``.gguf``, a run whose
  adapter was merged in) is saved once as ``RUN/base-model/`` and recorded by that path.
- Nothing is looked up on the hub at save time (``save_embedding_layers=False``: latkit never resizes
  the embeddings).
- Every saved model gets a model card (``README.md``) saying base model, method, recipe, data and, after
  ``latkit eval``, the robustness/utility table.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from latkit.models.loading import BUNDLED, HUB_IDS, TINY_PREFIX, ModelLoadError, cache_dir, hub_reachable
from latkit.models.store import CARD, atomic_save

BASE_DIR = "base-model"
EVAL_BEGIN, EVAL_END = "<!-- latkit:eval:begin -->", "<!-- latkit:eval:end -->"
#: the fake commit under which the bundled copy is registered in the HF cache (says where it came from)
BUNDLED_REVISION = hashlib.sha1(b"latkit bundled de-quantized copy").hexdigest()


# ------------------------------------------------------------------ base model references
def hf_hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def register_in_hf_cache(model_dir: Path, repo_id: str) -> Path | None:
    """Make ``from_pretrained(repo_id)`` find ``model_dir`` offline: a snapshot of symlinks in the HF cache.

    Leaves an existing snapshot alone (a real download wins). Returns the snapshot dir (None if skipped)."""
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file() and (repo / "snapshots" / ref.read_text().strip() / "config.json").exists():
        return None
    snap = repo / "snapshots" / BUNDLED_REVISION
    try:
        snap.mkdir(parents=True, exist_ok=True)
        for f in Path(model_dir).iterdir():
            link = snap / f.name
            if f.is_file() and not link.exists():
                os.symlink(f.resolve(), link)
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(BUNDLED_REVISION)
    except OSError:  # a read-only cache: latkit itself still resolves the hub id to the bundled copy
        return None
    return snap


def base_reference(name: str) -> str | None:
    """What to record as the adapter's base for the starting model ``name``; None = save it as ``base-model/``."""
    if name in BUNDLED or name in HUB_IDS.values():
        alias = name if name in BUNDLED else next(k for k, v in HUB_IDS.items() if v == name)
        from latkit.models.loading import bundled_model_dir

        local = bundled_model_dir(alias)
        if local is not None:
            register_in_hf_cache(local, HUB_IDS[alias])
        return HUB_IDS[alias]
    if name.startswith(TINY_PREFIX) or name.endswith(".gguf"):
        return None
    path = Path(os.path.expanduser(name))
    if path.exists():
        from latkit.models.loading import resolve_model_dir

        path = resolve_model_dir(path)
        if (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            return str(path.resolve())
        return None  # an adapter / run dir: its merged weights are this run's base
    return name  # a hub id


def save_base(model, tokenizer, run_dir: Path) -> str:
    """Save the (pre-LoRA) starting model as ``RUN/base-model/`` and return its absolute path."""
    target = Path(run_dir) / BASE_DIR
    if not (target / "config.json").exists():
        atomic_save(model, tokenizer, target)
    return str(target.resolve())


# ------------------------------------------------------------------ model card
def method_name(recipe: dict) -> str:
    """RT / RT-EAT / RT-EAT-LAT / untargeted LAT / RLP / R2D2 / DPO(-LAT) / unlearning / SFT, from the recipe."""
    adv = recipe.get("adversary") or {}
    kind = (adv.get("objective") or {}).get("kind", "none")
    sites = adv.get("sites") or []
    latent = any(s != "embed" for s in sites)
    if recipe.get("unlearn"):
        base = f"{recipe['unlearn'].get('method', 'ga').upper()} unlearning"
        return base + (" + LAT" if kind != "none" else "")
    if (recipe.get("defender") or {}).get("preference"):
        return "DPO-LAT" if kind == "dpo" else "DPO"
    if recipe.get("r2d2"):
        return "R2D2-style adversarial training"
    if (recipe.get("data") or {}).get("harmful") is None:
        return "SFT"
    name = {"none": "RT (refusal training)", "random": "RLP (random latent perturbations)",
            "untargeted": "untargeted LAT" if latent else "untargeted AT (embedding space)",
            "targeted": "RT-EAT-LAT (targeted LAT)" if latent else "RT-EAT (embedding-space AT)",
            }.get(kind, kind)
    return name + (" + safety-recovery augmentation" if recipe.get("recovery") else "")


def model_card(recipe: dict, *, base: str, kind: str = "adapter", provenance: dict | None = None,
               summary: str | None = None) -> str:
    """A model card (YAML front matter + Markdown) for a model trained from ``recipe`` (a dict)."""
    name = recipe.get("name") or "latkit-run"
    adv = recipe.get("adversary") or {}
    data = recipe.get("data") or {}
    harmful, benign = data.get("harmful"), data.get("benign")
    tags = ["latkit", "latent-adversarial-training", "safety"] + (["lora", "peft"] if kind == "adapter" else [])
    front = ["---", f"base_model: {json.dumps(base)}",
             f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
             "pipeline_tag: text-generation", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    ft = recipe.get("finetune") or {}
    lora = ft.get("lora") or {}
    rows = [("method", method_name(recipe)), ("base model", f"`{base}`" + (
        f" (recipe: `{(recipe.get('model') or {}).get('name')}`)" if (recipe.get("model") or {}).get("name") != base else "")),
        ("fine-tuning", f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, targets {lora.get('target_modules')}"
         if ft.get("method") == "lora" else ft.get("method", "full")),
        ("adversary", "none" if (adv.get("objective") or {}).get("kind", "none") == "none" else
         f"{adv['objective'].get('kind')} at {', '.join(adv.get('sites') or [])}, ε={adv.get('epsilon')}, "
         f"{adv.get('constraint')}, {adv.get('optimizer')} × {adv.get('steps')} steps"),
        ("defender", ", ".join(f"{k}={v}" for k, v in (recipe.get("defender") or {}).items() if v not in (None, 0, 0.0))),
        ("training", ", ".join(f"{k}={(recipe.get('train') or {}).get(k)}" for k in
                               ("steps", "batch_size", "lr", "schedule", "seed"))),
        ("harmful data", "none" if not harmful else
         f"`{harmful.get('source')}` (limit {harmful.get('limit')}; harmful completions from {harmful.get('harmful_from')}, "
         f"refusals from {harmful.get('refusal_from')})"),
        ("benign data", "none" if not benign else f"`{benign.get('source')}` (limit {benign.get('limit')})")]
    if recipe.get("unlearn"):
        u = recipe["unlearn"]
        rows.append(("unlearning", f"{u.get('method')}: forget {json.dumps(u.get('forget'), default=str)[:200]}"))
    lines = front + [f"# {name}", "", recipe.get("description") or "",
                     "", f"Trained with [latkit](https://pypi.org/project/latkit/) "
                         "(latent adversarial training for Hugging Face decoder LLMs).", "",
                     "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    if summary:
        lines += ["## Training", "", "```text", summary.strip(), "```", ""]
    lines += ["## Use", "", "```python"]
    if kind == "adapter":
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("PATH")  # this directory',
                  'tok = AutoTokenizer.from_pretrained("PATH")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("PATH")  # this directory',
                  'tok = AutoTokenizer.from_pretrained("PATH")']
    lines += ["```", "", "or `latkit eval --model PATH --suite quick --output DIR` to attack it.", "",
              EVAL_BEGIN, "## Evaluation", "", "Not evaluated yet: run `latkit eval --model PATH …` "
              "(the table appears here).", EVAL_END, ""]
    if provenance:
        v = provenance.get("versions") or {}
        git = provenance.get("git") or {}
        lines += ["## Provenance", "",
                  f"latkit {v.get('latkit')}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
                  f"peft {v.get('peft')}; device {provenance.get('device')} ({provenance.get('dtype')}); "
                  f"recipe sha256 `{(provenance.get('recipe_sha256') or '')[:16]}`"
                  + (f"; commit `{git.get('commit', '')[:12]}`{' (dirty)' if git.get('dirty') else ''}" if git else ""),
                  "", "The full recipe is `recipe.yaml` in the run directory.", ""]
    return "\n".join(lines)


def eval_section(results: dict, label: str) -> str | None:
    """The card's evaluation table for model ``label`` in a ``latkit eval`` results dict (None if absent)."""
    rows = [r for r in results.get("results", []) if r.get("model") == label]
    util = (results.get("utility") or {}).get(label) or {}
    if not rows and not util:
        return None
    out = ["## Evaluation", "", f"`latkit eval`, suite `{(results.get('suite') or {}).get('name')}`, judge "
           f"`{results.get('primary_judge')}` ({results.get('created')}). ASR = attack success rate "
           "(lower is more robust), 95% Wilson interval, n behaviours.", "",
           "| attack | dataset | ASR | 95% CI | n |", "|---|---|---|---|---|"]
    for r in rows:
        asr = "–" if r.get("asr") is None else f"{100 * r['asr']:.1f}%"
        lo, hi = r.get("ci95") or (0, 0)
        out.append(f"| {r['attack']} | {r['dataset']} | {asr} | {100 * lo:.1f}–{100 * hi:.1f}% | {r.get('n')} |")
    bc, mm = util.get("benign_compliance") or {}, util.get("mmlu") or {}
    if bc.get("rate") is not None:
        out += ["", f"Benign compliance: {100 * bc['rate']:.1f}% (n={bc.get('n')})."]
    if mm.get("accuracy") is not None:
        out += ["", f"MMLU accuracy: {100 * mm['accuracy']:.1f}% (n={mm.get('n')})."]
    return "\n".join(out)


def update_card_eval(model_dir: Path, section: str) -> bool:
    """Replace the evaluation section of ``model_dir/README.md`` (a latkit card); False if there is none."""
    card = Path(model_dir) / CARD
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8")
    if EVAL_BEGIN not in text or EVAL_END not in text:
        return False
    head, rest = text.split(EVAL_BEGIN, 1)
    _, tail = rest.split(EVAL_END, 1)
    tmp = card.with_name(f".{CARD}.tmp")
    tmp.write_text(f"{head}{EVAL_BEGIN}\n{section}\n{EVAL_END}{tail}", encoding="utf-8")
    tmp.replace(card)
    return True


# ------------------------------------------------------------------ export
def export_run(run: str | Path, output: str | Path, *, merge: bool = False, push_to_hub: str | None = None,
               private: bool = False) -> Path:
    """Write ``run``'s model (a run dir, its model/, or a checkpoints/step-N dir) to ``output``."""
    from latkit.models.loading import load_model_and_tokenizer, resolve_model_dir

    src = resolve_model_dir(Path(run).expanduser())
    if not src.is_dir():
        raise ModelLoadError(f"export: {run} is not a directory")
    is_adapter = (src / "adapter_config.json").exists()
    if not is_adapter and not (src / "config.json").exists():
        raise ModelLoadError(f"export: {src} holds no model (no adapter_config.json or config.json)")
    out = Path(output).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ModelLoadError(f"export: {out} exists and is not empty")
    card_text = (src / CARD).read_text(encoding="utf-8") if (src / CARD).is_file() else None
    if merge and is_adapter:
        model, tok = load_model_and_tokenizer(str(src), require_chat_template=False)
        merged = model.merge_and_unload()
        base = json.loads((src / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if card_text:
            card_text = (card_text.replace("library_name: peft", "library_name: transformers")
                         .replace("from peft import AutoPeftModelForCausalLM\n", "")
                         .replace("AutoPeftModelForCausalLM.from_pretrained", "AutoModelForCausalLM.from_pretrained")
                         .replace("- lora\n- peft\n", "- merged\n")
                         .replace('from transformers import AutoTokenizer', 'from transformers import AutoModelForCausalLM, AutoTokenizer'))
            card_text = card_text.replace("\n---\n", f"\nbase_model_relation: merge\n---\n", 1) if base else card_text
        atomic_save(merged, tok, out, card=card_text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        shutil.rmtree(tmp)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng-*.pt",
                                                              "state.json", "trainable.safetensors"))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    if push_to_hub:
        push_folder(out, push_to_hub, private=private)
    return out


def push_folder(folder: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload ``folder`` to hub repo ``repo_id`` (created if needed); a clear error when the hub is unreachable."""
    if not hub_reachable():
        raise ModelLoadError(f"push to hub: the Hugging Face hub is unreachable; {folder} was written locally")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                 commit_message="Upload model trained with latkit")
    except Exception as e:  # auth, permissions, network
        raise ModelLoadError(f"push to hub {repo_id!r} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return str(getattr(info, "commit_url", info))
