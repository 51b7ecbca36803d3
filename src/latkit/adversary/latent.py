"""The latent adversary: optimise δ at chosen sites to minimise an objective."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from latkit.adversary.config import AdversaryConfig
from latkit.adversary.constraints import active_fraction, normalize_step, project, random_in_ball, token_norms
from latkit.adversary.hooks import perturb
from latkit.adversary.prefix import cached_prefix
from latkit.models.adapter import ModelAdapter
from latkit.models.hooks import record
from latkit.models.lora import merged_lora
from latkit.models.precision import frozen_weights_held, fsdp_managed
from latkit.objectives.forward import forward_logits, forward_logits_packed, pack_shared_prompt


@contextmanager
def frozen_parameters(model):
    """Temporarily set ``requires_grad=False`` on the model's trainable parameters.

    The inner loop differentiates w.r.t. δ only; with trainable (e.g. LoRA) weights
    left on, autograd would also record and keep the activations their gradients
    need, including every block below the first perturbed site.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def autocast_weights(model, device_type: str):
    """Under autocast, the frozen ``nn.Linear`` weights held in the autocast dtype while active
    (:func:`latkit.models.precision.frozen_weights_held`): cast once per attack rather than at every PGD
    forward. A no-op without autocast."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    with frozen_weights_held(model, torch.get_autocast_dtype(device_type), device_type):
        yield


class _autocast_off:
    """Re-entrant context that turns autocast off on ``device_type`` while active, when it is on.

    Autocast is for the forward: around ``torch.autograd.grad`` it would re-dispatch the backward's
    ops through the autocast casts, and δ's update (optimiser, projection) must stay fp32 arithmetic.
    """

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self._stack = []

    def __enter__(self):
        ctx = torch.autocast(self.device_type, enabled=False) if self.enabled else nullcontext()
        self._stack.append(ctx)
        ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._stack.pop().__exit__(*exc)


@dataclass
class Perturbation:
    """A fixed δ per site, ready to be applied with :meth:`LatentAdversary.apply`."""

    deltas: dict[str, torch.Tensor]  # site -> (B, T, H) fp32, detached
    row_mask: torch.Tensor  # (N, T) bool: perturbed positions of each forward row
    clamp: dict | None = None
    stats: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # adversary loss before each step

    def rows(self, rows: slice | None) -> "Perturbation":
        """The same δ for a forward over a row slice of the batch (whole groups only)."""
        if rows is None:
            return self
        return Perturbation(self.deltas, self.row_mask[rows], self.clamp, self.stats, self.losses)


def _row_subset(batch: dict, rows: slice | None) -> dict:
    """``batch`` restricted to the whole completion groups in ``rows`` (a group-major batch)."""
    if rows is None:
        return batch
    N = batch["input_ids"].shape[0]
    k = batch.get("n_groups", 1)
    B = N // k
    if rows.start % B or rows.stop % B:
        raise ValueError(f"rows {rows} do not cover whole completion groups of {B} rows")
    out = {key: (v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == N else v)
           for key, v in batch.items()}
    out["n_groups"] = (rows.stop - rows.start) // B
    if "groups" in batch:
        out["groups"] = tuple(batch["groups"])[rows.start // B: rows.stop // B]
    return out


def shared_layout(adapter: ModelAdapter, batch: dict) -> dict | None:
    """``batch`` in the shared-prompt layout for ``adapter``'s model (its attention kernel, the autocast
    or model dtype for the mask), or ``None`` where it does not apply
    (:func:`~latkit.objectives.forward.pack_shared_prompt`)."""
    impl = getattr(adapter.base.config, "_attn_implementation", None) or "eager"
    dev = batch["input_ids"].device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else adapter.dtype
    return pack_shared_prompt(batch, impl, dtype)


class Under:
    """What the defender's losses receive for one micro-batch: ``under(rows)`` is a context installing δ
    for a forward over those rows (as :meth:`LatentAdversary.apply`; clean when there is no perturbation);
    ``under.forward(model, batch, rows)`` runs that forward itself, sharing each prompt across its
    completions when ``share`` (default: the adversary's ``share_prompt``) and the batch's layout allow —
    under δ through :meth:`LatentAdversary.forward_under`, clean (RT: no adversary) directly."""

    def __init__(self, adversary: "LatentAdversary | None", perturbation: Perturbation | None, *,
                 adapter: ModelAdapter | None = None, share: bool | None = None):
        self.adversary = adversary
        self.perturbation = perturbation
        self.adapter = adapter or (adversary.adapter if adversary is not None else None)
        self.share = (adversary.config.share_prompt if adversary is not None else False) if share is None else share

    def __call__(self, rows: slice | None = None):
        if self.perturbation is None or self.adversary is None:
            return nullcontext()
        return self.adversary.apply(self.perturbation, rows)

    def forward(self, model, batch: dict, rows: slice | None = None):
        if self.perturbation is not None and self.adversary is not None:
            return self.adversary.forward_under(self.perturbation, model, batch, rows)
        packed = None
        if self.share and self.adapter is not None:
            sub = _row_subset(batch, rows)
            packed = shared_layout(self.adapter, sub)
        if packed is None:
            return forward_logits(model, batch, rows)
        return forward_logits_packed(model, sub, packed)


class LatentAdversary:
    """δ added to the residual stream at ``config.sites``, optimised by PGD.

    ``attack(batch, objective)`` runs ``config.steps`` steps, taking gradients
    w.r.t. δ only (``torch.autograd.grad``: parameter ``.grad`` is never touched)
    with all completion groups of the batch in one forward. δ is kept in fp32.
    """

    def __init__(self, model, config: AdversaryConfig, adapter: ModelAdapter | None = None):
        self.model = model
        self.config = config
        self.adapter = adapter or ModelAdapter.from_model(model)
        for s in config.sites:
            self.adapter.site_module(s)  # validates the range

    # -- masks ------------------------------------------------------------------
    def row_mask(self, batch: dict) -> torch.Tensor:
        pos = self.config.positions
        attn = batch["attention_mask"].bool()
        if pos == "prompt":
            m = batch["prompt_mask"]
        elif pos == "completion":
            m = batch["completion_mask"]
        else:
            m = attn
        return m.bool() & attn

    @staticmethod
    def example_mask(row_mask: torch.Tensor, n_groups: int) -> torch.Tensor:
        N, T = row_mask.shape
        return row_mask.view(n_groups, N // n_groups, T).any(0)

    # -- application ------------------------------------------------------------
    @contextmanager
    def apply(self, perturbation: Perturbation, rows: slice | None = None):
        """Install ``perturbation``'s hooks (for rows ``rows`` of the batch it was made for)."""
        p = perturbation.rows(rows)
        with perturb(self.adapter, p.deltas, p.row_mask, p.clamp):
            yield

    def forward_under(self, perturbation: Perturbation | None, model, batch: dict, rows: slice | None = None):
        """``(logits, offset)`` of rows ``rows`` of ``batch`` under ``perturbation`` (clean when ``None``),
        as :func:`~latkit.objectives.forward.forward_logits` returns them. With ``config.share_prompt`` and
        at least two whole completion groups in ``rows``, each example's prompt is run once for all its
        completions (:func:`~latkit.objectives.forward.pack_shared_prompt`; δ lives on the prompt, so it is
        placed on the packed prompt): the same logits, and parameter gradients, for less work."""
        sub = _row_subset(batch, rows)
        packed = self._packed(sub) if perturbation is not None else None
        if packed is None:
            ctx = self.apply(perturbation, rows) if perturbation is not None else nullcontext()
            with ctx:
                return forward_logits(model, batch, rows)
        p = perturbation.rows(rows)
        deltas = {s: self._to_packed(d, packed["input_ids"].shape[1]) for s, d in p.deltas.items()}
        with perturb(self.adapter, deltas, packed["prompt_mask"], p.clamp):
            return forward_logits_packed(model, sub, packed)

    def _clamp_ranges(self, batch):
        store: dict = {}
        with torch.no_grad(), record(self.adapter, self.config.sites, store):
            forward_logits(self.model, batch)
        valid = batch["attention_mask"].bool()
        return {s: (a[valid].float().amin(0), a[valid].float().amax(0)) for s, a in store.items()}

    def _init(self, batch, ex_mask, generator, on_sphere=False, random=False):
        B, T = ex_mask.shape
        H = self.adapter.hidden_size
        dev = batch["input_ids"].device
        deltas = {}
        for s in self.config.sites:
            eps = self.config.eps_for(s)
            if random or self.config.init == "random":
                d = random_in_ball((B, T, H), ex_mask.cpu(), self.config.constraint, eps,
                                   generator=generator, on_sphere=on_sphere).to(dev)
            else:
                d = torch.zeros((B, T, H), device=dev, dtype=torch.float32)
            deltas[s] = d
        return deltas

    def random(self, batch: dict, generator: torch.Generator | None = None) -> Perturbation:
        """RLP: random δ on the constraint's sphere of radius ε (no optimisation)."""
        rm = self.row_mask(batch)
        ex = self.example_mask(rm, batch["n_groups"])
        deltas = self._init(batch, ex, generator, on_sphere=True, random=True)
        p = Perturbation(deltas, rm, self._clamp_ranges(batch) if self.config.clamp_to_clean_range else None)
        p.stats = self._stats(deltas, ex)
        return p

    # -- optimisation -----------------------------------------------------------
    def attack(self, batch: dict, objective, generator: torch.Generator | None = None,
               final_eval: bool = False) -> Perturbation:
        """Optimise δ to minimise ``objective(logits, batch, offset)`` (returns ``(loss, parts)``)."""
        cfg = self.config
        rm = self.row_mask(batch)
        ex = self.example_mask(rm, batch["n_groups"])
        clamp = self._clamp_ranges(batch) if cfg.clamp_to_clean_range else None
        deltas = self._init(batch, ex, generator)
        packed = self._packed(batch)
        if packed is not None:  # δ, masks and forwards in the shared-prompt layout; δ mapped back after
            T = ex.shape[1]
            rm = ex = packed["prompt_mask"]
            deltas = {s: self._to_packed(d, ex.shape[1]) for s, d in deltas.items()}

            def fwd():
                return forward_logits_packed(self.model, batch, packed)
        else:
            def fwd():
                return forward_logits(self.model, batch)
        for d in deltas.values():
            d.requires_grad_(True)
        params = list(deltas.values())
        opt = torch.optim.Adam(params, lr=cfg.step_size) if cfg.optimizer == "adam" else None
        history, first_parts, last_parts = [], {}, {}
        no_autocast = _autocast_off(batch["input_ids"].device.type)
        with frozen_parameters(self.model), self._merged_lora(no_autocast.device_type), \
                autocast_weights(self.model, no_autocast.device_type), self._prefix(batch, fwd):
            for step in range(cfg.steps):
                with perturb(self.adapter, deltas, rm, clamp):
                    logits, off = fwd()
                loss, parts = objective(logits, batch, off)
                with no_autocast:  # the backward's dtypes follow the forward's; the δ update is fp32 math
                    grads = torch.autograd.grad(loss, params)
                history.append(loss.detach())
                if step == 0:
                    first_parts = parts
                last_parts = parts
                with torch.no_grad(), no_autocast:
                    for (site, d), g in zip(deltas.items(), grads):
                        if cfg.optimizer == "sign":
                            d.sub_(cfg.step_size * g.sign())
                        elif cfg.optimizer == "l2":
                            d.sub_(cfg.step_size * normalize_step(g, ex, cfg.constraint))
                        else:
                            d.grad = g
                    if opt is not None:
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    for site, d in deltas.items():
                        d.copy_(project(d, ex, cfg.constraint, cfg.eps_for(site)))
        final = {s: d.detach() for s, d in deltas.items()}
        if packed is not None:
            final = {s: self._to_packed(d, T) for s, d in final.items()}
            rm = self.row_mask(batch)
            ex = self.example_mask(rm, batch["n_groups"])
        p = Perturbation(final, rm, clamp)
        losses = [float(x) for x in torch.stack(history).cpu()] if history else []
        p.losses = losses
        stats = self._stats(final, ex)
        if losses:
            stats["loss_before"] = losses[0]
            stats["loss_last_step"] = losses[-1]
            stats.update({f"{k}_before": float(v) for k, v in first_parts.items()})
            stats.update({f"{k}_last_step": float(v) for k, v in last_parts.items()})
        if final_eval:
            with torch.no_grad(), self._prefix(batch, lambda: forward_logits(self.model, batch)), \
                    perturb(self.adapter, final, rm, clamp):
                logits, off = forward_logits(self.model, batch)
                loss, parts = objective(logits, batch, off)
            stats["loss_after"] = float(loss)
            stats.update({f"{k}_after": float(v) for k, v in parts.items()})
        p.stats = stats
        return p

    def _merged_lora(self, device_type: str):
        """LoRA layers merged for the attack as ``config.merge_lora`` says (in the autocast dtype when on)."""
        setting = self.config.merge_lora
        if setting is False or fsdp_managed(self.model):  # FSDP2 owns the parameter slots (autocast_weights)
            return nullcontext()
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        return merged_lora(self.model, dtype, only_when_casting=setting == "auto")

    def _prefix(self, batch, fwd):
        """Prefix cache for the forward ``fwd`` when ``config.prefix_cache`` is on (else a no-op context)."""
        if not self.config.prefix_cache:
            return nullcontext()
        return cached_prefix(self.adapter, fwd, self.config.sites)

    def _packed(self, batch):
        """The shared-prompt layout of ``batch`` when ``config.share_prompt`` applies, else ``None``."""
        if not self.config.share_prompt or self.config.positions != "prompt":
            return None
        return shared_layout(self.adapter, batch)

    @staticmethod
    def _to_packed(delta, length):
        """δ restricted or zero-padded to ``length`` positions (δ lives on the prompt, at the start of each row)."""
        B, T, H = delta.shape
        out = delta.new_zeros(B, length, H)
        n = min(T, length)
        out[:, :n] = delta[:, :n]
        return out

    def _stats(self, deltas, ex_mask) -> dict[str, float]:
        cfg = self.config
        out = {}
        for s, d in deltas.items():
            n = token_norms(d, ex_mask, cfg.constraint)
            out[f"{s}/norm_mean"] = float(n.mean()) if n.numel() else 0.0
            out[f"{s}/norm_max"] = float(n.max()) if n.numel() else 0.0
            out[f"{s}/active_frac"] = active_fraction(d, ex_mask, cfg.constraint, cfg.eps_for(s))
        return out
