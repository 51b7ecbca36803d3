"""R2D2-style adversarial training: GCG test cases in the training loop (Mazeika et al. 2024).

HarmBench's R2D2 keeps a pool of test cases (a behaviour plus a GCG suffix).
Every outer step it updates the suffixes of a few test cases with a few GCG steps
against the *current* model, then trains the model to refuse on exactly those
suffixed prompts (toward the refusal, away from the harmful target) alongside a
benign SFT loss; every ``reset_every`` steps the pool is redrawn with fresh
suffixes so the model cannot overfit to one set of strings.

HarmBench's published settings (Zephyr-7B, 2×A100 × ~16 h) are roughly
``gcg_steps=5, search_width=512, topk=256, cases_per_step=8, reset_every=50`` with
a 20-token ``"! ! …"`` suffix; the defaults here are CPU-sized. In latkit the
suffixed prompts simply replace the harmful micro-batch: the defender's losses are
the same ``toward``/``away``/``sft`` as RT's, so R2D2 and RT differ only in the
data the defender sees.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import BaseModel, ConfigDict, Field

from latkit.attacks.base import Behaviour
from latkit.attacks.gcg import GCG, GCGConfig
from latkit.data.schemas import HarmfulTriple
from latkit.data.sampler import IndexStream


class R2D2Settings(BaseModel):
    """The GCG-in-the-loop baseline (``r2d2:`` in a recipe; ``null`` = off)."""

    model_config = ConfigDict(extra="forbid")

    pool_size: int = Field(16, ge=1, description="test cases in the pool (behaviour + suffix)")
    cases_per_step: int = Field(4, ge=1, description="test cases updated by GCG and trained on per micro-batch")
    gcg_steps: int = Field(1, ge=1, description="GCG steps per test-case update (HarmBench: 5)")
    search_width: int = Field(64, ge=1, description="GCG candidates per step (HarmBench: 512)")
    topk: int = Field(64, ge=1, description="GCG top-k tokens per position (HarmBench: 256)")
    suffix_length: int = Field(20, ge=1)
    suffix_init: str = Field("!", min_length=1, description="token repeated suffix_length times at (re)init")
    separator: str = " "
    eval_batch_size: int = Field(64, ge=1, description="GCG candidates per forward")
    reset_every: int = Field(50, ge=0, description="redraw the pool every this many outer steps (0: never)")


class GCGPool:
    """The pool of R2D2 test cases of one process.

    Entries index the harmful triples; each holds its current suffix text (GCG
    keeps only candidates that re-tokenize to themselves, so text round-trips).
    The pool is redrawn from ``seed``, the number of resets and the process rank,
    and its whole state is a small dict, so resuming is exact.
    """

    def __init__(self, harmful: list[HarmfulTriple], settings: R2D2Settings, *, seed: int = 0,
                 rank: int = 0, world: int = 1, system: str | None = None):
        if not harmful:
            raise ValueError("R2D2 needs harmful examples")
        self.harmful, self.s, self.seed, self.rank, self.world = harmful, settings, seed, rank, world
        self.system = system
        self.resets = 0
        self._last_reset = -1  # the step of the last redraw (so one step never redraws twice)
        self.entries: list[dict] = []
        self._gcg = GCG(GCGConfig(n_steps=settings.gcg_steps, search_width=settings.search_width,
                                  topk=settings.topk, separator=settings.separator,
                                  eval_batch_size=settings.eval_batch_size, early_stop=False,
                                  system=system, seed=seed))
        self._draw()

    @property
    def initial_suffix(self) -> str:
        return " ".join([self.s.suffix_init] * self.s.suffix_length)

    def _draw(self) -> None:
        g = torch.Generator().manual_seed(self.seed * 1_000_033 + self.resets * 7_919 + self.rank)
        n = min(self.s.pool_size, len(self.harmful))
        idx = torch.randperm(len(self.harmful), generator=g)[:n].tolist()
        self.entries = [{"index": i, "suffix": self.initial_suffix, "loss": None, "updates": 0} for i in idx]
        self._stream = IndexStream(len(self.entries), self.s.cases_per_step, self.seed + self.resets)

    def maybe_reset(self, step: int) -> bool:
        """Redraw the pool when ``step`` (outer steps done) is a positive multiple of ``reset_every``."""
        if self.s.reset_every and step > 0 and step % self.s.reset_every == 0 and self._last_reset != step:
            self.resets += 1
            self._draw()
            self._last_reset = step
            return True
        return False

    def update(self, model, tokenizer) -> tuple[list[HarmfulTriple], dict[str, float]]:
        """Run GCG on the next ``cases_per_step`` test cases against ``model`` (in eval mode, weights
        frozen by the caller) and return them as suffixed harmful triples, plus GCG statistics."""
        picked = [self.entries[i] for i in self._stream.next()]
        before, after = [], []
        for j, e in enumerate(picked):
            t = self.harmful[e["index"]]
            self._gcg.config.suffix_init = e["suffix"]
            self._gcg.config.seed = self.seed * 31 + self._stream.consumed * 1_009 + j
            res = self._gcg.optimize(model, tokenizer, [Behaviour(prompt=t.prompt, completion=t.harmful)])
            e["suffix"], e["loss"], e["updates"] = res["suffix"], res["best_loss"], e["updates"] + 1
            before.append(res["initial_loss"])
            after.append(res["best_loss"])
        cases = [replace(self.harmful[e["index"]], prompt=self.harmful[e["index"]].prompt + self.s.separator
                         + e["suffix"]) for e in picked]
        stats = {"r2d2/gcg_loss_before": sum(before) / len(before), "r2d2/gcg_loss_after": sum(after) / len(after)}
        return cases, stats

    def state_dict(self) -> dict:
        return {"resets": self.resets, "last_reset": self._last_reset, "entries": [dict(e) for e in self.entries],
                "stream": self._stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.resets = int(state["resets"])
        self._last_reset = int(state["last_reset"])
        self._draw()
        self.entries = [dict(e) for e in state["entries"]]
        self._stream.load_state_dict(state["stream"])
