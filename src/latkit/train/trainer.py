"""The one LAT training loop: RT, RT-EAT, targeted LAT, untargeted LAT, RLP, R2D2, DPO(-LAT), unlearning
and safety recovery by recipe alone.

Per outer step the run's task (:mod:`latkit.train.tasks`: its data, batches, objective, losses and
state) makes ``grad_accum`` micro-batches; the adversary attacks each (or draws a random δ, or does
nothing: the objective's :meth:`~latkit.objectives.adversary.Objective.perturb`); then the defender takes
``defender_steps`` optimiser updates on those micro-batches under their fixed δ, with gradients
averaged over micro-batches. Built on ``accelerate``: the same code runs on CPU, one GPU, or
``accelerate launch`` (DDP/FSDP/DeepSpeed). The adversary runs on the unwrapped module: δ is per
example, so the inner loop needs no communication between processes.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch

from latkit.adversary.latent import LatentAdversary, Under
from latkit.errors import LatkitError
from latkit.models.adapter import ModelAdapter
from latkit.models.lora import apply_lora, is_peft, trainable_parameters
from latkit.models.precision import frozen_weights_held
from latkit.train.compute import LayerTokenMeter
from latkit.train.checkpoint import (
    atomic_write_text,
    checkpoint_dirs,
    fsync_dir,
    fsync_file,
    load_checkpoint,
    make_readable,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)
from latkit.train.distributed import (EngineError, check_engine, fsdp2_settings, full, full_optimizer_state,
                                      fully_shard_model, gradient_sync, is_sharded)
from latkit.train.recipe import Recipe
from latkit.train.tasks import Task, TaskContext, build_task

log = logging.getLogger(__name__)


class TrainError(LatkitError, RuntimeError):
    """A run cannot start or continue (bad output dir, resume mismatch, …)."""


class NonFiniteError(TrainError):
    """A loss, a gradient norm or a weight turned NaN / inf: the run stops before saving anything."""


# recipe keys that may change on --resume: a longer run continues (extends) the same one
RESUMABLE_CHANGES = ("description", "train.steps")


def _without_resumable(recipe_yaml: str) -> dict:
    import yaml

    data = yaml.safe_load(recipe_yaml) or {}
    for key in RESUMABLE_CHANGES:
        node = data
        *head, last = key.split(".")
        for k in head:
            node = node.get(k) or {}
        node.pop(last, None)
    return data


def _resolved(data: dict) -> dict:
    """A recipe dict with every field explicit (a recipe.yaml written by an older latkit may spell
    the same run differently, e.g. settings of other objective kinds at their defaults)."""
    from latkit.train.recipe import recipe_from_dict

    return recipe_from_dict(data).model_dump(mode="json")


def read_metrics(path: Path) -> list[dict]:
    """The complete records of a ``metrics.jsonl``, stopping at the first cut-off or garbled line
    (a kill or a full disk can leave one at the end)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            break
        out.append(rec)
    return out


def _scheduler(optimizer, recipe: Recipe):
    t = recipe.train

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "constant":
            return 1.0
        span = max(t.steps - t.warmup_steps, 1)
        frac = min(max(step - t.warmup_steps, 0) / span, 1.0)
        return 1.0 - frac if t.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Runs a :class:`Recipe` into ``output_dir`` (see ``latkit train --help`` for the layout)."""

    def __init__(self, recipe: Recipe, output_dir: str | Path, *, resume: bool = False,
                 model=None, tokenizer=None, progress: bool = True,
                 callbacks: Sequence[Callable[["Trainer"], None]] = (),
                 task: Callable[[Recipe, TaskContext], Task] = build_task):
        self.recipe = recipe
        self.out = Path(output_dir)
        self.resume = resume
        self.progress = progress
        # called with the trainer after every outer step (logged and checkpointed); one that raises stops the run
        self.callbacks = list(callbacks)
        self._make_task = task  # (recipe, context) -> the training task; default: the one the recipe names
        self._model, self._tokenizer = model, tokenizer
        self._given_model = model is not None

    # ------------------------------------------------------------------ setup
    def _check_output_dir(self):
        recipe_file = self.out / "recipe.yaml"
        if self.resume:
            if not recipe_file.exists():
                raise TrainError(f"--resume: {self.out} holds no run (no recipe.yaml)")
            old = recipe_file.read_text()
            if old != self.recipe.to_yaml():
                try:
                    same = _resolved(_without_resumable(old)) == _resolved(_without_resumable(self.recipe.to_yaml()))
                except Exception:  # an unreadable recipe.yaml is a different recipe
                    same = False
                if not same:
                    raise TrainError(f"--resume: the recipe differs from the one in {recipe_file}; resume with "
                                     f"the same recipe and overrides (only {', '.join(RESUMABLE_CHANGES)} may change)")
        elif self._holds_run():
            raise TrainError(f"{self.out} already holds a run; use --resume or a new --output")

    def _holds_run(self) -> bool:
        """Metrics, a checkpoint or a model: an empty ``metrics.jsonl`` from a run that failed at step 1 is not."""
        metrics = self.out / "metrics.jsonl"
        return ((metrics.exists() and metrics.stat().st_size > 0) or bool(checkpoint_dirs(self.out / "checkpoints"))
                or (self.out / "model").exists())

    def _cleanup_failed_setup(self, existed: bool, had: set):
        """A fresh run whose setup failed leaves nothing behind (no recipe.yaml, no data cache)."""
        import shutil

        if not self.is_main or self.resume:
            return
        for p in ("recipe.yaml", "data", "metrics.jsonl", "base-model"):
            path = self.out / p
            if p not in had and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not existed and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def setup(self):
        existed = self.out.exists()
        had = {p.name for p in self.out.iterdir()} if self.out.is_dir() else set()
        try:
            return self._setup()
        except BaseException:
            if hasattr(self, "accelerator"):
                self._cleanup_failed_setup(existed, had)
            raise

    def _setup(self):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        r = self.recipe
        mp = r.train.mixed_precision
        if mp == "auto":  # bf16 autocast on GPUs and AMX/AVX512-BF16 CPUs, fp32 elsewhere (logged)
            from latkit.models.precision import resolve_mixed_precision

            mp = resolve_mixed_precision(mp, "cuda" if torch.cuda.is_available() else "cpu")
        try:
            check_engine()
        except EngineError as e:
            raise TrainError(str(e)) from None
        # cpu=True when there is no GPU, so that `torchrun`/`accelerate launch` on CPU runs DDP over gloo
        from latkit.train.trackers import check_trackers

        trackers = check_trackers(r.train.trackers)
        self.accelerator = acc = Accelerator(mixed_precision=mp, log_with=trackers or None,
                                             project_dir=str(self.out), cpu=not torch.cuda.is_available())
        self.is_main = acc.is_main_process
        try:
            self._fsdp = fsdp2_settings(acc)  # FSDP2 that latkit applies itself (CPU), else None
        except EngineError as e:
            raise TrainError(str(e)) from None
        if self._fsdp is not None and r.output.merge:
            raise TrainError("output.merge under FSDP is not supported: merge the saved adapter afterwards")
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._check_output_dir()
            atomic_write_text(self.out / "recipe.yaml", r.to_yaml())
            (self.out / "data").mkdir(exist_ok=True)
        acc.wait_for_everyone()
        set_seed(r.train.seed, device_specific=False)

        if self._model is None:
            from latkit.models.loading import load_model_and_tokenizer

            dtype = r.model.dtype
            if dtype == "auto":
                dtype = "float32"  # master weights fp32; bf16 compute comes from autocast
            self._model, self._tokenizer = load_model_and_tokenizer(
                r.model.name, dtype=dtype, trust_remote_code=r.model.trust_remote_code,
                chat_template=r.model.chat_template, quantization=r.model.quantization)
        model, tok = self._model, self._tokenizer
        from latkit.models.chat import ensure_chat_template

        ensure_chat_template(tok, r.model.chat_template)
        model.to(acc.device)

        # the task: its data (generated parts made once by the main process, cached in the run dir)
        self.context = TaskContext(recipe=r, tokenizer=tok, accelerator=acc, out=self.out, resume=self.resume,
                                   log=self._print)
        self.task = self._make_task(r, self.context)
        self.task.load_data(self.context, model)

        if is_peft(model):
            # a run / adapter dir as the starting model: fold its adapter into the weights first, so the
            # run trains on top of it (get_peft_model on a PeftModel would replace that adapter), and
            # "adapters disabled" (the DPO / KL reference) is the model the run started from
            model = model.merge_and_unload()
            self._model = model
        self.base_ref = self._base_reference(model, tok)
        if r.finetune.method == "lora":
            model = apply_lora(model, r.finetune.lora)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        self.task.prepare_model(model, ModelAdapter.from_model(model), r.finetune.method)
        self._set_attention(model)  # before the reference copy: both run the same kernel
        self.reference = None
        if self.task.needs_reference:
            if r.finetune.method == "lora":
                self.reference = lambda: self.accelerator.unwrap_model(self.model).disable_adapter()
            else:
                import copy

                self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        if r.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        if self._fsdp is not None:  # before the optimiser: it must hold the sharded parameters
            model = fully_shard_model(model, ModelAdapter.from_model(model).layers, **self._fsdp)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=r.train.lr, weight_decay=r.train.weight_decay)
        scheduler = _scheduler(optimizer, r)
        if self._fsdp is not None:  # already sharded: accelerate must not wrap it in DDP as well
            self.optimizer, self.scheduler = acc.prepare(optimizer, scheduler)
            self.model = model
        else:
            self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        self.inner = acc.unwrap_model(self.model)
        # DTensor parameters (FSDP2, by latkit on CPU or by accelerate on GPU): saving gathers them
        self._sharded = any(is_sharded(p) for p in self.inner.parameters())
        self.adapter = ModelAdapter.from_model(self.inner)
        adv_cfg = r.adversary
        self.adversary = None
        if adv_cfg.objective.uses_adversary:
            self.adversary = LatentAdversary(self.inner, adv_cfg, self.adapter)
        self.generator = torch.Generator().manual_seed(r.train.seed * 7919 + acc.process_index)
        self.task.start(self.context)
        self.meter = LayerTokenMeter(self.adapter)
        self.step = 0
        if self.resume:
            self._load_latest()
        if r.train.trackers:
            from latkit.train.trackers import flat_hparams

            acc.init_trackers(r.name, config=flat_hparams(r.model_dump(mode="json")))
        return self

    def _base_reference(self, model, tok) -> str:
        """The adapter's ``base_model_name_or_path``: loadable by ``from_pretrained`` offline (see models.saving)."""
        from latkit.models.saving import BASE_DIR, base_reference, save_base

        ref = base_reference(self.recipe.model.name)
        if ref is None or self._given_model:  # a model object handed in: save what was actually trained on
            if self.recipe.finetune.method != "lora":
                return self.recipe.model.name  # model/ is a full model; nothing refers to a base
            if self.is_main:
                ref = save_base(model, tok, self.out)
            self.accelerator.wait_for_everyone()
            ref = str((self.out / BASE_DIR).resolve())
        return ref

    def _write_model(self, model, directory: Path, *, kind: str, state_dict: dict | None = None) -> None:
        """An adapter (or full model) + tokenizer + model card into ``directory`` (no hub lookups);
        ``state_dict``: full tensors gathered from FSDP shards, when sharded."""
        from latkit.models.saving import model_card
        from latkit.models.store import save_model
        from latkit.train.summary import summarize_run

        card = model_card(self.recipe.model_dump(mode="json"), base=self.base_ref, kind=kind,
                          provenance=self.provenance(), summary=summarize_run(self.out))
        save_model(model, self._tokenizer, directory, base=self.base_ref if kind == "adapter" else None, card=card,
                   state_dict=state_dict)

    def provenance(self) -> dict:
        """Versions, device and dtypes, git commit, seeds and recipe hash (metrics.jsonl's header row)."""
        from latkit.provenance import collect

        r, acc = self.recipe, self.accelerator
        dtype = next((p.dtype for p in self.inner.parameters()), None)
        seeds = {"train.seed": r.train.seed, "harmful_order": r.train.seed, "benign_order": r.train.seed + 1,
                 "adversary_generator": r.train.seed * 7919}  # + process index on other ranks
        return collect(device=acc.device, dtype=dtype, seeds=seeds, recipe=r,
                       extra={"mixed_precision": acc.mixed_precision, "num_processes": acc.num_processes,
                              "model": r.model.name})

    def _print(self, msg: str):
        if self.accelerator.is_main_process:
            print(f"[latkit] {msg}", flush=True)

    # --------------------------------------------------------------- checkpoints
    def _save(self):
        acc = self.accelerator
        sharded = self._sharded  # gather on every rank: the checkpoint holds full tensors
        full_sd = self._gathered_state_dict()  # collective under FSDP, so outside the main process's write
        save_checkpoint(
            self.out / "checkpoints", self.step,
            trainable={k: full(v) for k, v in trainable_parameters(self.inner).items()},
            optimizer=full_optimizer_state(self.optimizer) if sharded else self.optimizer,
            scheduler=self.scheduler,
            state=self.task.state_dict(),
            rng=rng_state(self.generator), rank=acc.process_index, is_main=acc.is_main_process,
            barrier=acc.wait_for_everyone, keep=self.recipe.train.keep_checkpoints,
            # each checkpoint is also a loadable model (PEFT adapter / full model + tokenizer + card)
            write_extra=lambda d: self._write_model(acc.unwrap_model(self.model), d, kind=(
                "adapter" if hasattr(acc.unwrap_model(self.model), "peft_config") else "full"), state_dict=full_sd),
        )

    def _load_latest(self):
        rank = self.accelerator.process_index
        dirs = checkpoint_dirs(self.out / "checkpoints")
        if not dirs:
            self._print("--resume: no checkpoint yet, starting from step 0")
            self._truncate_metrics(0)
            return
        skipped = []
        for ckpt in reversed(dirs):  # the newest intact checkpoint; a corrupt one is skipped with a warning
            why = verify_checkpoint(ckpt, rank)
            if why is None:
                try:
                    state, rng = load_checkpoint(ckpt, model=self.inner, optimizer=self.optimizer,
                                                 scheduler=self.scheduler, rank=rank, device=self.accelerator.device)
                    break
                except Exception as e:  # verified but unloadable (e.g. another model): try an older one
                    why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            skipped.append(f"{ckpt.name} ({why})")
            log.warning("checkpoint %s is not intact (%s): trying an older one", ckpt, why)
            print(f"latkit: warning: checkpoint {ckpt.name} is not intact ({why}); trying an older one",
                  file=sys.stderr, flush=True)
        else:
            raise TrainError(f"--resume: no intact checkpoint in {self.out / 'checkpoints'}: " + "; ".join(skipped))
        if int(state["step"]) > self.recipe.train.steps:
            raise TrainError(f"--resume: {ckpt.name} is past train.steps={self.recipe.train.steps}; "
                             "a run can be extended, not shortened")
        self.step = int(state["step"])
        self.task.load_state_dict(state)
        if rng:
            set_rng_state(rng, self.generator)
        self._truncate_metrics(self.step)
        self._print(f"resumed from {ckpt.name}")

    def _truncate_metrics(self, step: int):
        """Keep the complete records up to ``step`` (a cut-off last line is dropped, not an error)."""
        path = self.out / "metrics.jsonl"
        if self.is_main and path.exists():
            keep = [rec for rec in read_metrics(path) if rec["step"] <= step]
            atomic_write_text(path, "".join(json.dumps(rec) + "\n" for rec in keep))

    # ------------------------------------------------------------------- loop
    def _micro_batches(self, stats: dict):
        return self.task.micro_batches(self.context, self.inner, self.step, stats)

    def _adversary_mode(self):
        """Eval mode: the adversary sees the same (dropout-free) model the defender trains. With
        ``model.gradient_checkpointing`` the decoder blocks alone are flagged as training, since HF
        checkpoints a block only when it is: the PGD forwards then keep only block inputs (their
        submodules stay in eval mode, so there is still no dropout)."""
        self.model.eval()
        if self.recipe.model.gradient_checkpointing:
            for layer in self.adapter.layers:
                layer.training = True

    def _before_attack(self, micro) -> None:
        """The task's per-batch quantities without δ (e.g. DPO's reference log-probs), booked as the
        defender's compute."""
        phase, self.meter.phase = self.meter.phase, "defender"
        try:
            self.task.before_attack(self.inner, micro, self.reference, self.accelerator.autocast)
        finally:
            self.meter.phase = phase

    def _objective(self, hb):
        """What the adversary minimises on ``hb``."""
        return self.task.objective(self.recipe.adversary.objective, hb)

    def _attack(self, hb):
        if self.adversary is None or hb is None:
            return None
        return self._objective(hb).perturb(self.adversary, hb, self.generator, self.accelerator.autocast)

    def train_step(self) -> dict:
        with self.meter:
            return self._train_step()

    def _train_step(self) -> dict:
        t0 = time.perf_counter()
        self.meter.reset()
        self.meter.phase = "adversary"
        metrics: dict[str, float] = {}
        self._adversary_mode()
        micro = self._micro_batches(metrics)  # with r2d2, GCG runs here: adversary compute
        with self._frozen_weights_held():
            return self._attack_and_defend(micro, metrics, t0)

    def _set_attention(self, model) -> None:
        """``model.attn_implementation`` (``auto``: eager under bf16 autocast on CPU, else as loaded)."""
        want = self.recipe.model.attn_implementation
        acc = self.accelerator
        if want == "auto":
            want = "eager" if acc.device.type == "cpu" and str(acc.mixed_precision) == "bf16" else None
        base = ModelAdapter.from_model(model).base
        if want and getattr(base.config, "_attn_implementation", None) != want:
            base.set_attn_implementation(want)
            log.info("attention: %s", want)

    def _frozen_weights_held(self):
        """Under mixed precision, the frozen weights held cast for the attack and the defender's steps
        (:func:`latkit.models.precision.frozen_weights_held`: cast once per outer step instead of at
        every forward; the same numbers)."""
        acc = self.accelerator
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(acc.mixed_precision))
        if dtype is None:
            return nullcontext()
        return frozen_weights_held(self.model, dtype, acc.device.type)

    def _attack_and_defend(self, micro, metrics: dict, t0: float) -> dict:
        r, acc = self.recipe, self.accelerator
        sums: dict[str, float] = {}
        self._before_attack(micro)
        perts = [self._attack(hb) for hb, _ in micro]
        t1 = time.perf_counter()
        adv_cost = self.meter.take("adversary")
        self.meter.phase = "defender"
        self.model.train()
        n_acc = len(micro)
        for it in range(r.train.defender_steps):
            for i, ((hb, bb), pert) in enumerate(zip(micro, perts)):
                sync = i == n_acc - 1
                ctx = gradient_sync(acc, self.model, sync)  # FSDP2 too: one reduce-scatter per step
                with ctx, acc.autocast():
                    under = Under(self.adversary, pert, adapter=self.adapter,  # δ for the defender's forwards
                                  share=r.adversary.share_prompt)
                    task_loss, parts, logits, rows = self.task.losses(
                        self.model, self.inner, self.adapter, hb, bb, under, self.reference)
                    loss = task_loss / n_acc
                acc.backward(loss)
                if it == 0:
                    for k, v in parts.items():
                        sums[f"loss/{k}"] = sums.get(f"loss/{k}", 0.0) + float(v) / n_acc
                    sums["loss/total"] = sums.get("loss/total", 0.0) + float(loss.detach())
                    if pert is not None and r.adversary.objective.optimised:
                        after = self._adv_loss_after(hb, pert, logits, rows)
                        sums["adv/loss_after"] = sums.get("adv/loss_after", 0.0) + after / n_acc
            if r.train.max_grad_norm:
                gn = acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                         r.train.max_grad_norm)
                metrics["grad_norm"] = float(gn)
                if not math.isfinite(metrics["grad_norm"]):  # the same on every rank (after all-reduce)
                    raise NonFiniteError(f"step {self.step + 1}: the gradient norm is {metrics['grad_norm']} "
                                         f"(loss {sums.get('loss/total')}); stopping before the update. "
                                         "Lower train.lr / adversary.epsilon or check the data")
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        self._check_finite(sums.get("loss/total", 0.0))
        def_cost = self.meter.take("defender")
        self.task.end_step()
        metrics.update(sums)
        for pert in perts:
            if pert is None:
                continue
            for k, v in pert.stats.items():
                metrics[f"adv/{k}"] = metrics.get(f"adv/{k}", 0.0) + v / n_acc
        tokens = sum(sum(int(b["attention_mask"].sum()) for b in (hb, bb) if b is not None) for hb, bb in micro)
        metrics.update({"lr": self.scheduler.get_last_lr()[0], "time/adversary_s": t1 - t0,
                        "time/defender_s": t2 - t1, "tokens": tokens,
                        "cost/adversary_fb": adv_cost["fb_equivalents"],
                        "cost/defender_fb": def_cost["fb_equivalents"],
                        "cost/adversary_token_passes": adv_cost["forward_token_passes"],
                        "cost/defender_token_passes": def_cost["forward_token_passes"]})
        return metrics

    def _check_finite(self, loss: float) -> None:
        """Stop the moment the loss (any rank) or a trainable weight is NaN / inf: nothing after it is saved."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        weights_ok = torch.stack([torch.isfinite(p.detach()).all() for p in params]).all() if params else None
        flag = torch.tensor([float(not math.isfinite(loss)),
                             float(weights_ok is not None and not bool(weights_ok))], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag[0] > 0:
            raise NonFiniteError(f"step {self.step + 1}: the loss is not finite ({loss}); stopping, nothing of "
                                 "this step is saved. Lower train.lr / adversary.epsilon or check the data")
        if flag[1] > 0:
            raise NonFiniteError(f"step {self.step + 1}: a trainable weight turned NaN/inf; stopping, nothing of "
                                 "this step is saved. Lower train.lr or set train.max_grad_norm")

    def _adv_loss_after(self, hb, pert, logits, rows) -> float:
        """The adversary's loss at its final δ, read from the defender's first forward when it covered
        the whole batch (same weights, same δ), else from one extra no-grad forward."""
        objective = self._objective(hb)
        n = hb["input_ids"].shape[0]
        if logits is not None and rows is not None and rows.start == 0 and rows.stop == n:
            from latkit.objectives.forward import completion_offset

            off = completion_offset(hb)
            return float(objective(logits, hb, off)[0])
        with torch.no_grad(), self.adversary.apply(pert), self.accelerator.autocast():
            from latkit.objectives.forward import forward_logits

            lg, off = forward_logits(self.inner, hb)
            return float(objective(lg, hb, off)[0])

    def train(self) -> Path:
        """Run to ``train.steps`` (from the last checkpoint when resuming); return the model dir."""
        if not hasattr(self, "accelerator"):
            existed = self.out.exists()
            had = {p.name for p in self.out.iterdir()} if self.out.is_dir() else set()
            self.setup()
        else:
            existed, had = True, {"recipe.yaml", "data", "metrics.jsonl"}
        try:
            return self._train()
        except BaseException:
            # a fresh run that fails before its first step (a batch that cannot be collated, …) leaves nothing
            if not self.resume and self.step == 0:
                self._cleanup_failed_setup(existed, had)
            raise

    def _train(self) -> Path:
        r, acc = self.recipe, self.accelerator
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=r.train.steps, initial=self.step, desc=r.name, dynamic_ncols=True)
        metrics_file = (self.out / "metrics.jsonl").open("a") if self.is_main else None
        if metrics_file is not None and metrics_file.tell() == 0:  # header row: what produced this run
            metrics_file.write(json.dumps({"step": 0, "provenance": self.provenance()}) + "\n")
        try:
            while self.step < r.train.steps:
                m = self.train_step()
                self.step += 1
                m = {"step": self.step, **m}
                if self.is_main:
                    if self.step % r.train.log_every == 0 or self.step == r.train.steps:
                        metrics_file.write(json.dumps(m) + "\n")
                        metrics_file.flush()
                    if r.train.trackers:
                        acc.log(m, step=self.step)
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{m['loss/total']:.3f}"}
                    if "adv/loss_before" in m:
                        post["adv"] = f"{m['adv/loss_before']:.2f}→{m.get('adv/loss_after', float('nan')):.2f}"
                    norms = [v for k, v in m.items() if k.endswith("/norm_mean")]
                    if norms:
                        post["|δ|"] = f"{max(norms):.2f}"
                    bar.set_postfix(post)
                if r.train.checkpoint_every and (self.step % r.train.checkpoint_every == 0
                                                 or self.step == r.train.steps):
                    self._save()  # the last step too: a finished run can be extended (--resume, more steps)
                for callback in self.callbacks:
                    callback(self)
        finally:
            if metrics_file is not None:
                metrics_file.close()
            if bar is not None:
                bar.close()
        return self.save_final()

    def _gathered_state_dict(self) -> dict | None:
        """Under FSDP, the full tensors ``save_pretrained`` writes (every rank must call this); else None."""
        if not self._sharded:
            return None
        sharded = self.accelerator.unwrap_model(self.model)
        names = set(trainable_parameters(sharded)) if hasattr(sharded, "peft_config") else None
        return {k: full(v) for k, v in sharded.state_dict().items() if names is None or k in names}

    def save_final(self) -> Path:
        acc = self.accelerator
        acc.wait_for_everyone()
        target = self.out / "model"
        state_dict = self._gathered_state_dict()
        if acc.is_main_process:
            import shutil
            import tempfile

            tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=self.out))
            model = acc.unwrap_model(self.model)
            self._write_model(model, tmp, kind="adapter" if hasattr(model, "peft_config") else "full",
                              state_dict=state_dict)
            _durable(tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
            fsync_dir(self.out)
            if self.recipe.output.merge and hasattr(model, "merge_and_unload"):
                merged = self.out / "model-merged"
                import copy

                from latkit.models.saving import atomic_save, model_card

                m2 = copy.deepcopy(model).merge_and_unload()
                atomic_save(m2, self._tokenizer, merged, card=model_card(
                    self.recipe.model_dump(mode="json"), base=self.base_ref, kind="merged",
                    provenance=self.provenance()))
        if self.recipe.train.trackers:
            acc.end_training()
        acc.wait_for_everyone()
        return target


def _durable(directory: Path) -> None:
    """fsync every file of a freshly written directory and give it readable permissions (mkdtemp: 0700)."""
    for p in directory.rglob("*"):
        if p.is_file():
            fsync_file(p)
    fsync_dir(directory)
    make_readable(directory)


def train(recipe: Recipe, output_dir, *, resume: bool = False, **kw) -> Path:
    """Convenience: ``Trainer(recipe, output_dir, resume=resume).train()``."""
    return Trainer(recipe, output_dir, resume=resume, **kw).train()
