"""Models, batches, the two step implementations (latkit and reference), and the probes that time them."""
from __future__ import annotations

import math
import os
import resource
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from latkit.adversary import AdversaryConfig, LatentAdversary, perturb, project
from latkit.adversary.latent import Under
from latkit.models.adapter import ModelAdapter
from latkit.models.precision import frozen_weights_held
from latkit.objectives import TargetedObjective, DefenderLosses, benign_losses, harmful_losses
from latkit.objectives.losses import cross_entropy, unlikelihood

# Shapes of real models (random weights: throughput does not depend on weight values).
SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                      tie_word_embeddings=False),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                      tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=384, max_position_embeddings=512, tie_word_embeddings=False),
}

# The reference's Llama-3 jailbreak recipe perturbs the embedding and the outputs of layers 8, 16, 24, 30 of 32.
REFERENCE_LAYERS_OF_32 = (8, 16, 24, 30)


def site_preset(name: str, num_layers: int) -> list[str]:
    """``jailbreak`` = embed + the reference's 4 layers scaled to the model's depth; ``mid`` = layer 8 of 30 scaled;
    otherwise a comma-separated list of sites. On shallow models scaled layers that coincide are kept once."""
    if name == "jailbreak":
        layers = [f"layer.{min(round(i * num_layers / 32), num_layers - 1)}" for i in REFERENCE_LAYERS_OF_32]
        return ["embed"] + list(dict.fromkeys(layers))
    if name == "mid":
        return [f"layer.{round(8 * num_layers / 30)}"]
    return [s.strip() for s in name.split(",") if s.strip()]


# ----------------------------------------------------------------------------------------------- models
def build_model(model: str | None, shape: str | None, device: str, weights_dtype: torch.dtype, attn: str = "sdpa"):
    """``model``: ``smollm2-135m`` (real weights via latkit's loader) or ``tiny:<family>``;
    ``shape``: a key of :data:`SHAPES` (Llama architecture, random weights, built on ``device``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if model:
        if model.startswith("tiny:"):
            from latkit.testing import tiny_model

            m, _ = tiny_model(model.split(":", 1)[1], num_layers=4, dtype=weights_dtype)
        else:
            from latkit.models.loading import load_model_and_tokenizer

            m, _ = load_model_and_tokenizer(model, dtype=weights_dtype)
        m.set_attn_implementation(attn)
        return m.to(device)
    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape {shape!r}; known: {', '.join(SHAPES)}")
    cfg = LlamaConfig(**SHAPES[shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=weights_dtype)
    return m.eval()


def add_lora(model, r: int):
    from latkit.models.lora import LoraSettings, apply_lora

    if r <= 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    return apply_lora(model, LoraSettings(r=r, alpha=2 * r, dropout=0.0, target_modules="all-linear"))


# ---------------------------------------------------------------------------------------------- batches
def _rows_batch(lengths, groups, vocab, gen):
    """A collator-format batch (right padding): ``lengths[b] = (prompt_len, [completion_len per group])``."""
    k, B = len(groups), len(lengths)
    T = max(p + max(cs) for p, cs in lengths)
    shape = (k * B, T)
    ids = torch.zeros(shape, dtype=torch.long)
    att = torch.zeros(shape, dtype=torch.long)
    pm = torch.zeros(shape, dtype=torch.bool)
    cm = torch.zeros(shape, dtype=torch.bool)
    for b, (p, cs) in enumerate(lengths):
        prompt = torch.randint(4, vocab, (p,), generator=gen)
        for g, c in enumerate(cs):
            r = g * B + b
            ids[r, :p] = prompt
            ids[r, p:p + c] = torch.randint(4, vocab, (c,), generator=gen)
            att[r, :p + c] = 1
            pm[r, :p] = True
            cm[r, p:p + c] = True
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": att, "position_ids": pos, "prompt_mask": pm,
            "completion_mask": cm, "n_groups": k, "groups": tuple(groups)}


def make_batches(vocab: int, batch_size: int, prompt_len: int, completion_len: int, jitter: int, seed: int = 0):
    """Harmful triples (groups harmful, refusal) and benign pairs with lengths in ``[len - jitter, len]``."""
    gen = torch.Generator().manual_seed(seed)

    def n(x):
        return max(1, x - int(torch.randint(0, jitter + 1, (1,), generator=gen))) if jitter else x

    harmful = _rows_batch([(n(prompt_len), [n(completion_len), n(completion_len)]) for _ in range(batch_size)],
                          ("harmful", "refusal"), vocab, gen)
    benign = _rows_batch([(n(prompt_len), [n(completion_len)]) for _ in range(batch_size)], ("response",), vocab, gen)
    return harmful, benign


def to_device(batch, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Spec:
    """One configuration: ``reference`` or ``latkit``, plus switches (``+``-joined in the CLI)."""

    mode: str = "latkit"
    prefix: bool = False  # prefix cache (latkit only)
    share: bool = False  # shared-prompt packing of the PGD and defender forwards (latkit only)
    sign: bool = False  # sign-PGD (no optimiser state) instead of Adam
    bf16: bool = False  # bf16 autocast, fp32 δ
    auto: bool = False  # the precision latkit's ``auto`` picks on this device (latkit.models.precision)
    attn: str = "sdpa"  # sdpa | eager
    ckpt: bool = False  # gradient checkpointing (adversary and defender)
    compile: bool = False  # torch.compile of the decoder blocks' forward
    merge: bool = False  # adversary.merge_lora: true (merged LoRA in the attack whatever the precision)
    nomerge: bool = False  # adversary.merge_lora: false (default ``auto`` merges under autocast only)
    nohold: bool = False  # under bf16: frozen weights re-cast at every defender forward (the trainer holds them
    #                       cast for the whole outer step, latkit.models.precision.frozen_weights_held)

    @classmethod
    def parse(cls, text: str) -> "Spec":
        parts = [p.strip() for p in text.split("+") if p.strip()]
        if not parts or parts[0] not in ("reference", "latkit"):
            raise SystemExit(f"bad config {text!r}: start with 'reference' or 'latkit', then +prefix, +share, "
                             "+sign, +bf16, +auto, +eager, +ckpt, +compile, +merge, +nomerge, +nohold")
        kw = {"mode": parts[0]}
        for p in parts[1:]:
            if p in ("prefix", "share", "sign", "bf16", "auto", "ckpt", "compile", "merge", "nomerge", "nohold"):
                kw[p] = True
            elif p in ("eager", "sdpa"):
                kw["attn"] = p
            else:
                raise SystemExit(f"unknown switch {p!r} in {text!r}")
        if (kw.get("prefix") or kw.get("share")) and kw["mode"] == "reference":
            raise SystemExit("+prefix and +share are latkit switches; the reference mode reruns the whole model "
                             "from the input, one forward per completion group")
        return cls(**kw)

    def uses_bf16(self, device: str) -> bool:
        """bf16 autocast for this spec on ``device`` (``+auto``: what :func:`choose_precision` picks there)."""
        if self.bf16:
            return True
        if self.auto:
            from latkit.models.precision import choose_precision

            return choose_precision(device).mixed_precision == "bf16"
        return False

    @property
    def name(self) -> str:
        out = [self.mode] + [k for k in ("prefix", "share", "sign", "bf16", "auto", "ckpt", "compile", "merge",
                                          "nomerge", "nohold") if getattr(self, k)]
        if self.attn != "sdpa":
            out.append(self.attn)
        return "+".join(out)


@dataclass
class Workload:
    """Everything shared by the configurations of one run: the (LoRA) model, batches, settings."""

    model: torch.nn.Module  # PeftModel (or the model itself under full fine-tuning)
    adapter: ModelAdapter
    harmful: dict
    benign: dict
    adversary: AdversaryConfig
    objective: TargetedObjective
    defender: DefenderLosses
    defender_steps: int = 1
    lr: float = 2e-5
    max_grad_norm: float = 1.0
    device: str = "cpu"
    optimizers: dict = field(default_factory=dict)
    compiled: bool = False
    _eager_forwards: list = field(default_factory=list)

    def optimizer(self, name: str):
        if name not in self.optimizers:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizers[name] = torch.optim.AdamW(params, lr=self.lr)
        return self.optimizers[name]

    def tokens(self) -> int:
        return int(self.harmful["attention_mask"].sum()) + int(self.benign["attention_mask"].sum())

    # switches that act on the model: set before each step, so configurations can alternate
    def configure(self, spec: Spec):
        base = self.adapter.base
        if base.config._attn_implementation != spec.attn:
            base.set_attn_implementation(spec.attn)
        on = any(getattr(m, "gradient_checkpointing", False) for m in self.adapter.layers)
        if spec.ckpt and not on:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif not spec.ckpt and on:
            base.gradient_checkpointing_disable()
        self._set_compiled(spec.compile)

    def _set_compiled(self, on: bool):
        """Regional compilation: each decoder block's ``forward`` through ``torch.compile`` (hooks stay eager)."""
        if on == self.compiled:
            return
        if on:
            self._eager_forwards = []
            for layer in self.adapter.layers:
                self._eager_forwards.append(layer.__dict__.get("forward"))
                layer.forward = torch.compile(layer.forward, dynamic=False)
        else:
            for layer, old in zip(self.adapter.layers, self._eager_forwards):
                if old is None:
                    del layer.forward
                else:
                    layer.forward = old
        self.compiled = on


def autocast(spec: Spec, device: str):
    if not spec.uses_bf16(device):
        return nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------- probes
def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmHWM`` peak, ``VmRSS`` current) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> int | None:
    return _proc_status_bytes("VmHWM")


def _trim_heap():
    """Give freed heap pages back to the OS (glibc keeps them resident otherwise, hiding each phase's peak)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _current_rss() -> int | None:
    return _proc_status_bytes("VmRSS")


def _reset_rss_peak() -> bool:
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class Probe:
    """Times phases (with device sync) and reads peak memory per phase; optionally counts FLOPs."""

    def __init__(self, device: str, flop_counter=None):
        self.device = device
        self.flops = flop_counter
        self.out: dict = {}
        self._t = None

    def begin(self, phase: str):
        _sync(self.device)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_rss_peak()
            self.out[f"{phase}_rss_start_bytes"] = _current_rss()
        self._f0 = self.flops.get_total_flops() if self.flops is not None else 0
        self._t = time.perf_counter()

    def end(self, phase: str):
        _sync(self.device)
        self.out[f"{phase}_s"] = time.perf_counter() - self._t
        if self.device.startswith("cuda"):
            self.out[f"{phase}_peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
        else:
            rss = _rss_bytes()
            self.out[f"{phase}_peak_mem_bytes"] = rss if rss is not None else \
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if self.flops is not None:
            self.out[f"{phase}_flops"] = self.flops.get_total_flops() - self._f0


def flop_counter():
    """``FlopCounterMode`` that also counts CPU SDPA (not in torch's registry)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten

    def _attn(q, k, v):  # shapes (b, h, s, d); key/value heads may be fewer (GQA): work is per query head
        b, h, sq, d = q
        return 2 * b * h * sq * k[-2] * d + 2 * b * h * sq * k[-2] * v[-1]

    def fwd(query, key, value, *args, out_shape=None, **kw):
        return _attn(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kw):
        return 2 * _attn(query, key, value)

    # every fused SDPA kernel: torch's own formulas (2.11) assert equal query and key/value head counts,
    # which fails on a GQA model whose kernel takes the fewer key/value heads (seen on an H200, tiny shape)
    custom = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
        if hasattr(aten, name) and hasattr(aten, name + "_backward"):
            custom[getattr(aten, name)] = fwd
            custom[getattr(aten, name + "_backward")] = bwd
    return FlopCounterMode(display=False, custom_mapping=custom)


# -------------------------------------------------------------------------------------------- the steps
def latkit_step(w: Workload, spec: Spec, probe: Probe, generator=None):
    """One outer step as :meth:`latkit.train.Trainer.train_step` runs it (attack, then the defender's updates)."""
    model = w.model
    cfg = w.adversary.model_copy(update={"prefix_cache": spec.prefix, "share_prompt": spec.share,
                                          "merge_lora": True if spec.merge else (False if spec.nomerge else "auto"),
                                          **({"optimizer": "sign"} if spec.sign else {})})
    adversary = LatentAdversary(model, cfg, w.adapter)
    opt = w.optimizer(spec.name)
    probe.begin("adversary")
    held = nullcontext()
    if spec.uses_bf16(w.device) and not spec.nohold:  # as the trainer: frozen weights cast once per outer step
        held = frozen_weights_held(model, torch.bfloat16, w.device)
    with held:
        # the trainer attacks in eval mode; HF checkpoints blocks only in training mode, so +ckpt attacks in train
        # mode (no dropout in these models / LoRA dropout 0: same function)
        model.train() if spec.ckpt else model.eval()
        with autocast(spec, w.device):
            pert = adversary.attack(w.harmful, w.objective, generator)
        probe.end("adversary")
        probe.begin("defender")
        model.train()
        for _ in range(w.defender_steps):
            with autocast(spec, w.device):
                # as the trainer: the defender's harmful rows share the prompt under +share (latkit.adversary.Under)
                h_loss, _, _, _ = harmful_losses(model, w.harmful, w.defender, Under(adversary, pert))
                b_loss, _ = benign_losses(model, w.benign, w.defender)
                loss = h_loss + b_loss
            loss.backward()
            if w.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], w.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
    probe.end("defender")
    return pert


def _group(batch: dict, name: str):
    """Rows of one completion group, trimmed to the group's own longest row (the reference pads each key
    separately)."""
    B = batch["input_ids"].shape[0] // batch["n_groups"]
    g = batch["groups"].index(name)
    rows = slice(g * B, (g + 1) * B)
    L = int(batch["attention_mask"][rows].sum(1).max())
    return {k: batch[k][rows, :L] for k in ("input_ids", "attention_mask", "prompt_mask", "completion_mask")}


def _full_logits_loss(model, g, kind):
    """The reference's loss: full logits (every position), then CE / log(1-p) on the completion tokens."""
    logits = model(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits
    fn = cross_entropy if kind == "ce" else unlikelihood
    return fn(logits, g["input_ids"], g["completion_mask"], 0)


@contextmanager
def _frozen(model):
    """The reference toggles ``requires_grad`` off on every parameter while the adversary trains."""
    state = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in state:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in state:
            p.requires_grad_(r)


def reference_attack(w: Workload, spec: Spec):
    """The reference implementation's PGD (Sheshadri et al. 2024, ``projected_gradient_descent``): Adam on δ (sign
    steps with ``+sign``), the whole model rerun from the input at every step, the toward and away losses as separate
    forwards and backwards, parameters' ``requires_grad`` off, NaN gradients zeroed, then projection."""
    cfg, obj, hb, a = w.adversary, w.objective, w.harmful, w.adapter
    harm, ref = _group(hb, obj.harmful_group), _group(hb, obj.refusal_group)
    B, T = harm["input_ids"].shape[0], hb["input_ids"].shape[1]
    ex = (hb["prompt_mask"] & hb["attention_mask"].bool()).view(hb["n_groups"], B, T).any(0)
    deltas = {s: torch.zeros(B, T, a.hidden_size, device=hb["input_ids"].device, requires_grad=True)
              for s in cfg.sites}
    use_adam = not spec.sign and cfg.optimizer == "adam"
    opt = torch.optim.Adam(list(deltas.values()), lr=cfg.step_size) if use_adam else None
    losses = []
    with _frozen(w.model):
        for _ in range(cfg.steps):
            for d in deltas.values():
                d.grad = None
            total = 0.0
            for g, kind, coef in ((harm, "ce", obj.toward), (ref, "ul", obj.away)):
                if not coef:
                    continue
                L = g["input_ids"].shape[1]
                with autocast(spec, w.device), perturb(a, {s: d[:, :L] for s, d in deltas.items()},
                                                       g["prompt_mask"] & g["attention_mask"].bool()):
                    loss = coef * _full_logits_loss(w.model, g, kind)
                loss.backward()
                total += float(loss.detach())
            losses.append(total)
            with torch.no_grad():
                for d in deltas.values():
                    if d.grad is None:
                        continue
                    d.grad = torch.nan_to_num(d.grad, nan=0.0)
                    if not use_adam:
                        d.sub_(cfg.step_size * d.grad.sign())
                if opt is not None:
                    opt.step()
                for s, d in deltas.items():
                    d.copy_(project(d, ex, cfg.constraint, cfg.eps_for(s)))
    return {s: d.detach() for s, d in deltas.items()}, ex, losses


def reference_step(w: Workload, spec: Spec, probe: Probe, generator=None):
    """One outer step of the reference algorithm: its PGD, then ``defender_steps`` updates each running toward
    (refusal | δ), away (harmful | δ) and SFT (benign) as separate full-logit forwards, one backward."""
    model, obj, coefs, a = w.model, w.objective, w.defender, w.adapter
    opt = w.optimizer(spec.name)
    probe.begin("adversary")
    model.train() if spec.ckpt else model.eval()
    deltas, ex, losses = reference_attack(w, spec)
    probe.end("adversary")
    probe.begin("defender")
    model.train()
    harm, ref = _group(w.harmful, obj.harmful_group), _group(w.harmful, obj.refusal_group)
    benign = _group(w.benign, w.benign["groups"][0])
    for _ in range(w.defender_steps):
        with autocast(spec, w.device):
            loss = 0.0
            for g, kind, coef in ((ref, "ce", coefs.toward), (harm, "ul", coefs.away)):
                if not coef:
                    continue
                L = g["input_ids"].shape[1]
                with perturb(a, {s: d[:, :L] for s, d in deltas.items()},
                             g["prompt_mask"] & g["attention_mask"].bool()):
                    loss = loss + coef * _full_logits_loss(model, g, kind)
            if coefs.sft:
                loss = loss + coefs.sft * _full_logits_loss(model, benign, "ce")
        loss.backward()
        if w.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], w.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    probe.end("defender")
    return deltas, losses


def run_step(w: Workload, spec: Spec, probe: Probe):
    w.configure(spec)
    fn = reference_step if spec.mode == "reference" else latkit_step
    fn(w, spec, probe)
    return probe.out


# ------------------------------------------------------------------------------------------- hardware peak
def matmul_peak_flops(device: str, dtype: torch.dtype, n: int | None = None, reps: int = 5) -> float:
    """Best-of-``reps`` FLOP/s of an ``n × n`` dense matmul on ``device`` (the MFU denominator)."""
    n = n or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n ** 3 / best


def unit_forward_flops(w: Workload) -> int:
    """FLOPs of one plain forward of the harmful batch (all rows, all positions, full logits): the unit of the
    forward-equivalents reported."""
    hb = w.harmful
    fc = flop_counter()
    with torch.no_grad(), fc:
        w.model(input_ids=hb["input_ids"], attention_mask=hb["attention_mask"], position_ids=hb["position_ids"])
    return fc.get_total_flops()


def environment(device: str) -> dict:
    import platform

    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "device": device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    from latkit.models.precision import choose_precision

    import accelerate
    import peft

    env.update(accelerate=accelerate.__version__, peft=peft.__version__)
    env["auto_precision"] = choose_precision(device).describe()  # CPU model, capability, bf16 flags, the choice
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    else:
        try:
            env["load_avg_1m"] = os.getloadavg()[0]
        except OSError:
            pass
    return env


__all__ = ["SHAPES", "Spec", "Workload", "Probe", "build_model", "add_lora", "make_batches", "to_device",
           "latkit_step", "reference_step", "reference_attack", "run_step", "matmul_peak_flops",
           "unit_forward_flops", "flop_counter", "site_preset", "environment"]
