"""Training methods as objects: Plain, AT (input-space PGD), LAT (latent PGD at a module path), RLP.

Each method turns a batch into the defender's loss (and metrics). AT and LAT run the project's adversary
(:func:`latkit.adversary.modules.pgd_whole`, the shared constraints and :func:`latkit.adversary.hooks.perturb`
on :class:`~latkit.adversary.modules.ModuleSites`) to *maximise* the task loss (untargeted LAT, Casper et al.
2025): the adversary minimises −CE. Where δ goes is the modality's business: its input (AT) or the output of
the module ``site`` (LAT/RLP). The attack runs in the model's training mode with batch-norm statistics
frozen, so it attacks the function the defender is trained on without moving the running statistics.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from latkit.adversary.constraints import random_in_ball
from latkit.adversary.hooks import perturb
from latkit.adversary.modules import ModuleSites, pgd_whole
from latkit.models.hooks import record


@contextmanager
def frozen_norm_stats(model: nn.Module):
    """Batch norm uses batch statistics as in training but leaves its running statistics (and counter) as they were."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _ce(modality, model, inputs, labels):
    return F.cross_entropy(modality.forward(model, inputs).float(), labels)


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(1)


def input_pgd(modality, model, inputs, labels, *, norm: str, epsilon: float, steps: int,
              step_size: float | None = None) -> torch.Tensor:
    """The input-space δ (pixels, or embeddings) within the ``norm`` ball of radius ``epsilon`` that maximises
    the task loss: AT's adversary, and the evaluation's seen attack."""
    step = step_size or 2.5 * epsilon / steps
    delta0 = modality.input_delta(model, inputs)

    def neg_ce(d):
        with modality.perturb_input(model, d["input"]):
            return -_ce(modality, model, inputs, labels)

    with frozen_norm_stats(model):
        return pgd_whole({"input": delta0}, neg_ce, kind=norm, eps=epsilon, step_size=step, steps=steps)["input"]


def delta_metrics(where: str, delta: torch.Tensor, norm: str, eps: float) -> dict:
    """``adv/<where>/norm_mean``, ``norm_max`` and ``active_frac`` (share of examples on the ball's surface)."""
    size = _size(delta, norm)
    return {f"adv/{where}/norm_mean": float(size.mean()), f"adv/{where}/norm_max": float(size.max()),
            f"adv/{where}/active_frac": float((size >= eps * (1 - 1e-3)).float().mean())}


class Method(ABC):
    """One training method: ``loss(modality, model, inputs, labels, generator) -> (loss, metrics)``."""

    name = "method"

    def __init__(self, cfg):
        self.cfg = cfg

    @abstractmethod
    def loss(self, modality, model: nn.Module, inputs, labels: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The defender's loss on one batch (with a graph to the model's weights) and metrics (floats)."""

    def _mix(self, modality, model, inputs, labels, perturbed_loss, metrics):
        w = self.cfg.clean_weight
        metrics["loss/perturbed"] = float(perturbed_loss.detach())
        if w > 0:
            clean = _ce(modality, model, inputs, labels)
            metrics["loss/clean"] = float(clean.detach())
            metrics["cost/defender_fb"] += labels.shape[0]
            return w * clean + (1 - w) * perturbed_loss
        return perturbed_loss


class Plain(Method):
    name = "plain"

    def loss(self, modality, model, inputs, labels, generator):
        loss = _ce(modality, model, inputs, labels)
        return loss, {"loss/clean": float(loss.detach()), "cost/defender_fb": labels.shape[0]}


class AT(Method):
    """Input-space PGD within an L2 / L∞ ball (pixels for images, embeddings for text)."""

    name = "at"

    def attack(self, modality, model, inputs, labels):
        c = self.cfg
        return input_pgd(modality, model, inputs, labels, norm=c.norm, epsilon=c.epsilon, steps=c.steps,
                         step_size=c.step_size)

    def loss(self, modality, model, inputs, labels, generator):
        t0 = time.perf_counter()
        delta = self.attack(modality, model, inputs, labels)
        metrics = {"time/adversary_s": time.perf_counter() - t0, "cost/adversary_fb": self.cfg.steps * labels.shape[0],
                   "cost/defender_fb": labels.shape[0], **delta_metrics("input", delta, self.cfg.norm, self.cfg.epsilon)}
        t1 = time.perf_counter()
        with modality.perturb_input(model, delta):
            adv = _ce(modality, model, inputs, labels)
        loss = self._mix(modality, model, inputs, labels, adv, metrics)
        metrics["adv/loss_after"] = metrics["loss/perturbed"]
        metrics["time/defender_s"] = time.perf_counter() - t1
        return loss, metrics


class _LatentMethod(Method):
    def site(self, modality, model) -> str:
        return self.cfg.site or modality.default_latent_site(model)

    def clean_activation(self, modality, model, inputs, site) -> torch.Tensor:
        store: dict = {}
        sites = ModuleSites(model)
        with torch.no_grad(), frozen_norm_stats(model), record(sites, [site], store):
            modality.forward(model, inputs)
        return store[site].float()

    def defend(self, modality, model, inputs, labels, sites, deltas, metrics) -> torch.Tensor:
        """The defender's loss under ``deltas`` at ``sites`` (mixed with the clean loss), timed into ``metrics``."""
        t1 = time.perf_counter()
        with perturb(sites, deltas, None):
            adv = _ce(modality, model, inputs, labels)
        loss = self._mix(modality, model, inputs, labels, adv, metrics)
        metrics["time/defender_s"] = time.perf_counter() - t1
        return loss

    def prepare(self, modality, model, inputs):
        """The site, its :class:`ModuleSites`, the clean activation there and the radius ε for this batch."""
        site = self.site(modality, model)
        h = self.clean_activation(modality, model, inputs, site)
        return site, ModuleSites(model), h, self.radius(h)

    def radius(self, h: torch.Tensor) -> float:
        if not self.cfg.relative:
            return self.cfg.epsilon
        return self.cfg.epsilon * float(_size(h, self.cfg.norm).mean())


class LAT(_LatentMethod):
    """Latent PGD on δ shaped like the output of module ``site`` (the paper's untargeted LAT)."""

    name = "lat"

    def loss(self, modality, model, inputs, labels, generator):
        t0 = time.perf_counter()
        site, sites, h, eps = self.prepare(modality, model, inputs)
        step = self.cfg.step_size * (eps / self.cfg.epsilon) if self.cfg.step_size else 2.5 * eps / self.cfg.steps

        def neg_ce(d):
            with perturb(sites, d, None):
                return -_ce(modality, model, inputs, labels)

        with frozen_norm_stats(model):
            delta = pgd_whole({site: torch.zeros_like(h)}, neg_ce, kind=self.cfg.norm, eps=eps, step_size=step,
                              steps=self.cfg.steps)
        n = labels.shape[0]
        metrics = {"time/adversary_s": time.perf_counter() - t0, "cost/adversary_fb": (self.cfg.steps + 0.5) * n,
                   "cost/defender_fb": n, **delta_metrics(site, delta[site], self.cfg.norm, eps), "adv/epsilon": eps}
        loss = self.defend(modality, model, inputs, labels, sites, delta, metrics)
        metrics["adv/loss_after"] = metrics["loss/perturbed"]
        return loss, metrics


class RLP(_LatentMethod):
    """δ of norm ε in a uniformly random direction (L2) or a random corner (L∞) at module ``site``."""

    name = "rlp"

    def loss(self, modality, model, inputs, labels, generator):
        t0 = time.perf_counter()
        site, sites, h, eps = self.prepare(modality, model, inputs)
        kind = "l2_sequence" if self.cfg.norm == "l2" else "linf"
        flat = (h.shape[0], 1, h[0].numel())
        ones = torch.ones(h.shape[0], 1, dtype=torch.bool)
        delta = random_in_ball(flat, ones, kind, eps, generator=generator, on_sphere=True).view_as(h).to(h.device)
        n = labels.shape[0]
        metrics = {"time/adversary_s": time.perf_counter() - t0, "cost/adversary_fb": 0.5 * n, "cost/defender_fb": n,
                   **delta_metrics(site, delta, self.cfg.norm, eps), "adv/epsilon": eps}
        return self.defend(modality, model, inputs, labels, sites, {site: delta}, metrics), metrics


METHODS: dict[str, type[Method]] = {"plain": Plain, "at": AT, "lat": LAT, "rlp": RLP}


def build_method(cfg) -> Method:
    """The method object of a recipe's ``method:`` section."""
    return METHODS[cfg.kind](cfg)
