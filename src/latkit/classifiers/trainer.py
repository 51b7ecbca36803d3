"""Train a classifier from a ``kind: classifier`` recipe: Plain / AT / LAT / RLP, with the decoder runs' layout.

``OUTPUT/recipe.yaml`` (resolved), ``OUTPUT/metrics.jsonl`` (a provenance row, then one row per logged step),
``OUTPUT/checkpoints/step-N/`` (atomic, manifest-checked: :mod:`latkit.train.checkpoint`; the whole
``state_dict`` — batch-norm buffers included — optimiser, scheduler and every RNG) and ``OUTPUT/model/``
(``model.safetensors``, ``classes.json``). ``--resume`` continues from the newest intact checkpoint and
reproduces the uninterrupted run's weights bit for bit: the batch order is a function of the seed and the
step alone, and the method's random generator is checkpointed.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import yaml

from latkit.classifiers.backdoor import poison
from latkit.classifiers.methods import build_method
from latkit.classifiers.modality import ClassifierError, modality_class
from latkit.classifiers.recipe import ClassifierRecipe, recipe_from_dict
from latkit.train.checkpoint import (atomic_write_text, checkpoint_dirs, latest_checkpoint, rng_state,
                                     save_checkpoint, set_rng_state)

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("description", "train.steps")


def _without_resumable(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    data.pop("description", None)
    (data.get("train") or {}).pop("steps", None)
    return data


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The examples of (0-based) ``step``: epochs of a seeded permutation, so the order depends on the step alone."""
    per_epoch = max(1, n // batch_size)  # drop the last partial batch
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if n < batch_size:
        return perm
    return perm[pos * batch_size:(pos + 1) * batch_size]


def _lr_lambda(train):
    def f(step):
        if step < train.warmup_steps:
            return (step + 1) / (train.warmup_steps + 1)
        t = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        if train.schedule == "linear":
            return max(0.0, 1 - t)
        if train.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0
    return f


def read_run_recipe(run_dir: Path) -> ClassifierRecipe:
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise ClassifierError(f"{run_dir} is not a classifier run (no recipe.yaml)")
    return recipe_from_dict(yaml.safe_load(path.read_text()) or {})


def load_run_model(run_dir: Path, device="cpu"):
    """``(recipe, modality, model, class_names)`` of a finished classifier run."""
    run_dir = Path(run_dir)
    recipe = read_run_recipe(run_dir)
    classes_file = run_dir / "model" / "classes.json"
    if not classes_file.is_file():
        raise ClassifierError(f"{run_dir} has no finished model (no model/classes.json): train it to the end first")
    names = json.loads(classes_file.read_text())
    modality = modality_class(recipe.modality)(recipe, device)
    return recipe, modality, modality.load_saved(run_dir / "model", len(names)), names


class ClassifierTrainer:
    def __init__(self, recipe: ClassifierRecipe, output, *, resume: bool = False, progress: bool = True,
                 device: str = "cpu"):
        self.recipe, self.out, self.resume, self.progress = recipe, Path(output), resume, progress
        self.device = torch.device(device)
        self.step = 0

    # ------------------------------------------------------------------ setup
    def _check_output_dir(self):
        recipe_file = self.out / "recipe.yaml"
        if self.resume:
            if not recipe_file.exists():
                raise ClassifierError(f"--resume: {self.out} holds no run (no recipe.yaml)")
            old = yaml.safe_load(recipe_file.read_text()) or {}
            if _without_resumable(old) != _without_resumable(self.recipe.model_dump(mode="json")):
                raise ClassifierError(f"--resume: the recipe differs from the one in {recipe_file}; resume with the "
                                      f"same recipe and overrides (only {', '.join(RESUMABLE_CHANGES)} may change)")
        elif (self.out / "metrics.jsonl").exists() or checkpoint_dirs(self.out / "checkpoints") \
                or (self.out / "model").exists():
            raise ClassifierError(f"{self.out} already holds a run; use --resume or a new --output")

    def setup(self):
        r = self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_output_dir()
        torch.manual_seed(r.train.seed)
        self.modality = modality_class(r.modality)(r, self.device)
        self.splits = self.modality.load_data(r.train.seed)
        self.poisoned = 0
        if r.backdoor is not None and r.backdoor.poison_fraction > 0:
            if not 0 <= r.backdoor.target < self.splits.num_classes:
                raise ClassifierError(f"backdoor.target {r.backdoor.target} is not a class (0..{self.splits.num_classes - 1})")
            trig = self.modality.triggers()[r.backdoor.trigger]
            self.splits.train, self.poisoned = poison(self.splits.train, trig, r.backdoor.params, r.backdoor.target,
                                                      r.backdoor.poison_fraction, r.train.seed)
        if r.train.init_from:
            init_recipe, _, model, names = load_run_model(Path(r.train.init_from), self.device)
            if init_recipe.modality != r.modality or names != self.splits.class_names:
                raise ClassifierError(f"train.init_from {r.train.init_from}: its modality/classes "
                                      f"({init_recipe.modality}, {names}) differ from this run's")
            self.model = model
        else:
            self.model = self.modality.load_model(self.splits.num_classes)
        self.model.train()
        self.method = build_method(r.method)
        params = [p for p in self.model.parameters() if p.requires_grad]
        t = r.train
        if t.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        elif t.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(t))
        self.generator = torch.Generator().manual_seed(t.seed * 7919)
        atomic_write_text(self.out / "recipe.yaml", r.to_yaml())
        if self.resume:
            self._restore()

    def _restore(self):
        ckpt = latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            log.warning("--resume: no intact checkpoint in %s; starting from step 0", self.out)
            return
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(ckpt / "trainable.safetensors"), device=str(self.device)))
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        set_rng_state(torch.load(ckpt / "rng-0.pt", weights_only=True), self.generator)
        self.step = json.loads((ckpt / "state.json").read_text())["step"]
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop rows logged after the checkpoint (they are recomputed)
            keep = [ln for ln in metrics.read_text().splitlines(keepends=True)
                    if ln.strip() and json.loads(ln).get("step", 0) <= self.step and ln.endswith("\n")]
            atomic_write_text(metrics, "".join(keep))

    def _save(self):
        save_checkpoint(self.out / "checkpoints", self.step, trainable=self.model.state_dict(),
                        optimizer=self.optimizer, scheduler=self.scheduler, state={"poisoned": self.poisoned},
                        rng=rng_state(self.generator), keep=self.recipe.train.keep_checkpoints)

    def provenance(self) -> dict:
        from latkit.provenance import collect

        r = self.recipe
        return collect(device=self.device, dtype=torch.float32, recipe=r,
                       seeds={"train.seed": r.train.seed, "data": r.train.seed, "method_generator": r.train.seed * 7919},
                       extra={"modality": r.modality, "method": r.method.kind, "train_examples": len(self.splits.train),
                              "test_examples": len(self.splits.test), "poisoned": self.poisoned,
                              "parameters": sum(p.numel() for p in self.model.parameters())})

    # ------------------------------------------------------------------ the loop
    def train_step(self) -> dict:
        r = self.recipe
        idx = batch_indices(len(self.splits.train), r.train.batch_size, self.step, r.train.seed)
        batch = self.splits.train.select(idx)
        inputs, labels = self.modality.collate(batch.raw), batch.labels.to(self.device)
        loss, metrics = self.method.loss(self.modality, self.model, inputs, labels, self.generator)
        if not torch.isfinite(loss):
            raise ClassifierError(f"step {self.step + 1}: the loss is {float(loss)}; lower train.lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if r.train.max_grad_norm is not None:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.train.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        metrics.update({"step": self.step, "loss/task": float(loss.detach()), "lr": self.scheduler.get_last_lr()[0]})
        return metrics

    def train(self) -> Path:
        self.setup()
        r = self.recipe
        fresh = self.step == 0 and not (self.out / "metrics.jsonl").exists()
        with (self.out / "metrics.jsonl").open("a") as f:
            if fresh:
                f.write(json.dumps({"step": 0, "provenance": self.provenance()}) + "\n")
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=r.train.steps, initial=self.step, desc=f"{r.method.kind} {r.name}", leave=False)
            try:
                while self.step < r.train.steps:
                    t0 = time.perf_counter()
                    m = self.train_step()
                    m["time/step_s"] = time.perf_counter() - t0
                    if self.step % r.train.log_every == 0 or self.step == r.train.steps:
                        f.write(json.dumps(m) + "\n")
                        f.flush()
                    if r.train.checkpoint_every and self.step % r.train.checkpoint_every == 0 \
                            and self.step < r.train.steps:
                        self._save()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{m['loss/task']:.3f}")
            finally:
                if bar is not None:
                    bar.close()
        self._save()
        return self._write_model()

    def _write_model(self) -> Path:
        target, tmp = self.out / "model", self.out / ".tmp-model"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.modality.save_model(self.model, tmp)
        (tmp / "classes.json").write_text(json.dumps(self.splits.class_names))
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
        return target


def train(recipe: ClassifierRecipe, output, **kw) -> Path:
    return ClassifierTrainer(recipe, output, **kw).train()
