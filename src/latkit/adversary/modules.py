"""Sites on any ``nn.Module`` named by module path (``layer1``, ``encoder.layer.3``).

:class:`ModuleSites` gives :func:`latkit.adversary.hooks.perturb` / ``record`` the one method they
need (``site_module``), so the same hooks put δ on a CNN block or an encoder layer. With
``mask=None`` the hook adds a δ shaped like the module's whole output (tensor, or the first element
of a tuple / ModelOutput).
"""
from __future__ import annotations

from torch import nn

from latkit.models.adapter import AdapterError


class ModuleSites:
    """Resolve sites of ``model`` by dotted module path (``model.get_submodule``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def site_module(self, site: str) -> nn.Module:
        if not site:
            raise AdapterError("a site is a module path such as 'layer1' or 'encoder.layer.3', not ''")
        try:
            return self.model.get_submodule(site)
        except AttributeError:
            names = [n for n, _ in self.model.named_children()]
            raise AdapterError(f"{type(self.model).__name__} has no module {site!r} "
                               f"(its top-level modules: {', '.join(names[:8])})") from None


def _flat(d):
    return d.reshape(d.shape[0], 1, -1)


def project_whole(delta, kind: str, eps: float):
    """:func:`~latkit.adversary.constraints.project` on a δ of any shape ``(B, ...)``, one ball per example
    (``l2`` → ``l2_sequence`` over the whole flattened δ, or ``linf``)."""
    import torch

    from latkit.adversary.constraints import project

    kind = "l2_sequence" if kind == "l2" else kind
    ones = torch.ones(delta.shape[0], 1, dtype=torch.bool, device=delta.device)
    return project(_flat(delta), ones, kind, eps).view_as(delta)


def pgd_whole(deltas: dict, loss_of, *, kind: str, eps: float, step_size: float, steps: int):
    """Sign/normalised-gradient PGD that *minimises* ``loss_of(deltas)`` over δs of any shape, each
    projected onto its per-example ball with the project's constraints. Returns detached δs."""
    import torch

    from latkit.adversary.constraints import normalize_step

    norm_kind = "l2_sequence" if kind == "l2" else kind
    params = {k: v.detach().clone().float().requires_grad_(True) for k, v in deltas.items()}
    for _ in range(steps):
        grads = torch.autograd.grad(loss_of(params), list(params.values()))
        with torch.no_grad():
            for d, g in zip(params.values(), grads):
                ones = torch.ones(d.shape[0], 1, dtype=torch.bool, device=d.device)
                d.sub_(step_size * normalize_step(_flat(g), ones, norm_kind).view_as(d))
                d.copy_(project_whole(d, kind, eps))
    return {k: v.detach() for k, v in params.items()}
