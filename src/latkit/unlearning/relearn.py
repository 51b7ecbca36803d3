"""Fine-tuning a fresh LoRA on texts: the relearning attack, and implanting knowledge.

:func:`finetune_on_texts` is the one small loop: a fresh LoRA (PEFT, every linear
layer of the decoder by default) trained with language-model cross-entropy on
batches of texts (reshuffled each epoch), AdamW at a constant learning rate,
optionally evaluating the model at chosen step counts. Afterwards the LoRA is
either removed (``merge=False``: the input model is as it was) or merged into the
weights (``merge=True``). Two uses:

- :func:`relearn_attack`: does a little fine-tuning on *some* forget text bring
  *other* forget facts back? Accuracy on held-out questions (facts whose text the
  attack never sees) is measured after each requested number of steps. Knowledge
  that unlearning only *hid* comes back within a few steps; knowledge that was
  removed does not (Deeb & Roger 2024, "Do unlearning methods remove information
  from language model weights?"). The model is left unchanged.
- :func:`implant_texts`: teach a model a corpus (e.g. the fictional facts) and
  keep it: the LoRA is merged (``merge_and_unload``) and the model returned.

Only the new LoRA moves. A plain model is adapted in place; removing the LoRA
(PEFT's ``unload()``) leaves its weights bit-identical, its ``requires_grad``
flags and train/eval mode as they were. A PEFT model is merged into a copy first,
which is then trained, so the caller's adapters are never touched.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from latkit.data.text import TextCollator, load_texts
from latkit.models.lora import LoraSettings, fresh_lora
from latkit.unlearning.evaluate import Scoring, mcq_accuracy


@dataclass
class FinetuneResult:
    """What :func:`finetune_on_texts` did: ``model`` is the model afterwards (the input model, or the
    copy a PEFT input was merged into), ``losses`` the LM loss of each step, ``evals`` the
    ``evaluate`` results (each with its ``step``)."""

    model: Any
    losses: list[float]
    evals: list[dict]
    trainable_parameters: int
    copied_model: bool
    n_texts: int


def finetune_on_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    lora: LoraSettings | None = None,
    seed: int = 0,
    max_length: int = 256,
    max_grad_norm: float | None = None,
    merge: bool = False,
    evaluate: Callable[[Any], dict] | None = None,
    eval_at: Sequence[int] = (),
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Train a fresh LoRA (``lora``, initialised from ``seed``) on ``texts`` for ``steps`` AdamW steps.

    Every token of a text but the first counts in the loss; batches of
    ``batch_size`` texts cut to ``max_length`` tokens are drawn without
    replacement, reshuffled each epoch (from ``seed``). After ``s`` steps for each
    ``s`` in ``eval_at`` the model (with the LoRA, in eval mode) is passed to
    ``evaluate``. ``merge=True`` merges the LoRA into the weights at the end, else
    it is removed. ``log`` gets a line every tenth of the run.
    """
    from latkit.data.sampler import IndexStream
    from latkit.objectives.finetune import finetune_steps

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    texts = load_texts(list(texts))
    eval_at = sorted(set(eval_at))
    if eval_at and (evaluate is None or eval_at[0] < 0 or eval_at[-1] > steps):
        raise ValueError(f"eval_at needs an evaluate function and step counts within 0..{steps}, got {eval_at}")
    collate = TextCollator(tokenizer, max_length=max_length)
    stream = IndexStream(len(texts), batch_size, seed)
    evals = []
    every = max(steps // 10, 1)
    with fresh_lora(model, lora or LoraSettings(), seed, merge=merge) as (peft_model, copied):
        target = peft_model.get_base_model()  # the same object once the LoRA is removed or merged

        def before(step):
            if step in eval_at:
                peft_model.eval()
                evals.append({"step": step, **evaluate(peft_model)})

        losses: list[float] = []

        def after(step, loss):
            losses.append(loss)
            if log is not None and ((step + 1) % every == 0 or step + 1 == steps):
                log(f"step {step + 1}/{steps}: loss {sum(losses[-every:]) / len(losses[-every:]):.4f}")

        _, n_trainable = finetune_steps(
            peft_model, lambda: collate([texts[i] for i in stream.next()]), steps, learning_rate=learning_rate,
            weight_decay=weight_decay, max_grad_norm=max_grad_norm, before_step=before, after_step=after)
    return FinetuneResult(model=target, losses=losses, evals=evals, trainable_parameters=n_trainable,
                          copied_model=copied, n_texts=len(texts))


def implant_texts(model, tokenizer, texts: Sequence[str], steps: int, lr: float, **kwargs):
    """``model`` with ``texts`` learned: a fresh LoRA trained ``steps`` steps at learning rate ``lr``
    (:func:`finetune_on_texts`; ``kwargs`` such as ``batch_size``, ``lora``, ``seed`` go there),
    then merged into the weights. A plain model is changed in place and returned; for a PEFT
    model, a merged copy is returned."""
    return finetune_on_texts(model, tokenizer, texts, steps=steps, learning_rate=lr, merge=True, **kwargs).model


def implant_model_dir(model_name: str, text_files: Sequence, out_dir, *, steps: int, lr: float,
                      device: str = "auto", log: Callable[[str], None] | None = None, **kwargs) -> dict:
    """Load ``model_name``, implant the texts of ``text_files`` (:func:`implant_texts`; ``kwargs`` such as
    ``batch_size``, ``lora``, ``seed``, ``max_length``, ``max_grad_norm`` go there) and save the model
    (safetensors) with its tokenizer into ``out_dir``, which ``latkit train`` recipes load with
    ``model.name: OUT_DIR``. ``out_dir/implant.json`` (written last) records the settings and losses."""
    import json
    import time
    from pathlib import Path

    from latkit.models.loading import load_for_eval
    from latkit.models.store import atomic_save

    files = [str(f) for f in text_files]
    texts = [t for f in files for t in load_texts(f)]  # a bad file fails before the model loads
    model, tok = load_for_eval(model_name, device, merge=True, require_chat_template=False)
    t0 = time.perf_counter()
    res = finetune_on_texts(model, tok, texts, steps=steps, learning_rate=lr, merge=True, log=log, **kwargs)
    wall = time.perf_counter() - t0
    out = Path(out_dir)
    atomic_save(res.model.cpu(), tok, out)
    lora = kwargs.get("lora") or LoraSettings()
    record = {"base_model": model_name, "texts": files, "n_texts": len(texts), "steps": steps, "lr": lr,
              **{k: v for k, v in kwargs.items() if k != "lora"}, "lora": lora.model_dump(mode="json"),
              "trainable_parameters": res.trainable_parameters, "wall_s": wall, "losses": res.losses}
    tmp = out / "implant.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out / "implant.json")
    return record


class RelearnConfig(BaseModel):
    """Budget: LoRA (rank 8, alpha 16, all linear layers) trained with AdamW at ``learning_rate`` on
    batches of ``batch_size`` relearn texts (reshuffled each epoch from ``seed``); accuracy (by
    ``scoring``) after each count in ``steps`` (the largest is the number of optimizer steps).

    ``texts`` says what the attack trains on when it runs on a split directory
    (:func:`latkit.unlearning.datadir.evaluate_data_dir`): ``relearn`` (other facts of the forgotten
    topic, the default), ``retain`` (text unrelated to the forgotten topic, as in Łucki et al. 2024's
    "10 unrelated examples"), ``forget``, or a path to a ``.jsonl`` with a ``text`` column; ``max_texts``
    keeps only the first that many."""

    model_config = ConfigDict(extra="forbid")

    texts: str = Field("relearn", min_length=1)
    max_texts: int | None = Field(None, ge=1)
    steps: tuple[int, ...] = (0, 5, 10, 25, 50)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lora: LoraSettings = LoraSettings()
    seed: int = 0
    max_length: int = Field(256, ge=2)
    eval_batch_size: int = Field(8, ge=1)
    scoring: Scoring = "cloze"
    chat: bool = False

    @field_validator("steps")
    @classmethod
    def _steps(cls, v):
        if not v or any(s < 0 for s in v):
            raise ValueError(f"steps must be a non-empty list of step counts >= 0, got {list(v)!r}")
        return tuple(sorted(set(v)))


@dataclass
class RelearnResult:
    """Accuracy after each step count: ``curve[i]`` = accuracy after ``steps[i]`` optimizer steps."""

    steps: list[int]
    accuracy: list[float]
    chance: float
    n_items: int
    n_texts: int
    train_losses: list[float]
    evals: list[dict] = field(default_factory=list)  # the full accuracy record at each step count
    trainable_parameters: int = 0
    copied_model: bool = False

    @property
    def curve(self) -> dict[int, float]:
        return dict(zip(self.steps, self.accuracy))

    @property
    def recovered(self) -> float:
        """Accuracy gained from step 0 to the last step count."""
        return self.accuracy[-1] - self.accuracy[0]

    def to_dict(self) -> dict:
        return asdict(self)


def relearn_attack(model, tokenizer, texts: Sequence[str], items: Sequence, config: RelearnConfig | None = None,
                   **overrides) -> RelearnResult:
    """Fine-tune a fresh LoRA on ``texts`` and return the accuracy on ``items`` (MCQ items or facts,
    scored by ``config.scoring``) along the way.

    ``config`` (or keyword ``overrides`` of :class:`RelearnConfig`) sets the budget.
    The input model is unchanged afterwards.
    """
    c = config or RelearnConfig()
    if overrides:
        c = RelearnConfig.model_validate({**c.model_dump(), **overrides})
    if not items:
        raise ValueError("the relearning attack needs multiple-choice items to evaluate")

    def evaluate(m):
        return mcq_accuracy(m, tokenizer, items, scoring=c.scoring, batch_size=c.eval_batch_size, chat=c.chat)

    res = finetune_on_texts(model, tokenizer, texts, steps=c.steps[-1], learning_rate=c.learning_rate,
                            batch_size=c.batch_size, weight_decay=c.weight_decay, lora=c.lora, seed=c.seed,
                            max_length=c.max_length, evaluate=evaluate, eval_at=c.steps)
    return RelearnResult(
        steps=list(c.steps), accuracy=[e["accuracy"] for e in res.evals], chance=res.evals[0]["chance"],
        n_items=len(items), n_texts=res.n_texts, train_losses=res.losses, evals=res.evals,
        trainable_parameters=res.trainable_parameters, copied_model=res.copied_model,
    )
