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
