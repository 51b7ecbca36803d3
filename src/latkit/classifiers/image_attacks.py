"""Novel (unforeseen) image attacks, written for the project in torch, and backdoor triggers.

The families of Kaufmann et al.'s unforeseen-adversaries benchmark and ImageNet-C — JPEG, Gaussian blur,
Gaussian noise, fog, snow, elastic warping, Gabor noise, pixelation, hue and brightness shifts — as
*non-adaptive* corruptions at severity levels 1–4 (the table of each attack's parameter per level is
``LEVELS``). Each takes a batch ``(B, C, H, W)`` in [0, 1] and returns one of the same shape, dtype and
range; randomness comes only from the ``generator`` passed in (same generator state → same output), and the
random field is drawn the same way at every level, so a higher level is a stronger version of the same
corruption.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from latkit.classifiers.modality import NovelAttack, Trigger

#: each attack's parameter at severity levels 1, 2, 3, 4
LEVELS: dict[str, tuple[float, ...]] = {
    "jpeg": (40, 20, 10, 5),              # JPEG quality (lower = stronger)
    "blur": (0.6, 1.0, 1.5, 2.2),         # Gaussian σ in pixels
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18),  # noise σ
    "fog": (0.25, 0.4, 0.55, 0.7),        # blend weight of a fractal fog layer
    "snow": (0.04, 0.08, 0.14, 0.22),     # fraction of pixels seeding a flake
    "elastic": (0.75, 1.5, 2.25, 3.0),    # peak displacement in pixels
    "gabor": (0.08, 0.16, 0.24, 0.32),    # amplitude of additive Gabor noise
    "pixelate": (0.5, 0.375, 0.25, 0.1875),  # resolution kept (lower = stronger)
    "hue": (20, 45, 90, 150),             # hue rotation in degrees
    "brightness": (0.1, 0.2, 0.3, 0.45),  # added brightness
}
SEVERITIES = (1, 2, 3, 4)


def _param(name: str, severity) -> float:
    s = int(severity)
    if s not in SEVERITIES:
        raise ValueError(f"{name}: severity must be one of {SEVERITIES}, got {severity}")
    return LEVELS[name][s - 1]


def _gauss_kernel(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders."""
    k = _gauss_kernel(sigma, x.device)
    r = k.numel() // 2
    C = x.shape[1]
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = k[k.numel() // 2 - r: k.numel() // 2 + r + 1]
    k = k / k.sum()
    y = F.pad(x, (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


def _smooth_noise(shape, generator, device, octaves=(2, 4, 8)) -> torch.Tensor:
    """Fractal noise in [0, 1] of ``shape = (B, 1, H, W)``: upsampled random grids, coarse ones weighted most."""
    B, _, H, W = shape
    out = torch.zeros(shape, device=device)
    total = 0.0
    for i, o in enumerate(octaves):
        g = torch.rand(B, 1, o, o, generator=generator).to(device)
        w = 0.5 ** i
        out += w * F.interpolate(g, size=(H, W), mode="bicubic", align_corners=False)
        total += w
    out = out / total
    lo = out.flatten(1).amin(1).view(B, 1, 1, 1)
    hi = out.flatten(1).amax(1).view(B, 1, 1, 1)
    return (out - lo) / (hi - lo + 1e-8)


# ----------------------------------------------------------------------------- the attacks
def jpeg(x, severity, generator=None, context=None):
    """A JPEG round-trip through PIL at the level's quality."""
    from PIL import Image

    q = int(_param("jpeg", severity))
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        img = Image.fromarray(a if a.shape[-1] == 3 else a[..., 0])
        img.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        b = np.asarray(Image.open(buf).convert("RGB" if a.shape[-1] == 3 else "L"), dtype=np.float32) / 255.0
        out.append(b if b.ndim == 3 else b[..., None])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype)


def blur(x, severity, generator=None, context=None):
    return gaussian_blur(x, _param("blur", severity)).clamp(0, 1).to(x.dtype)


def gaussian_noise(x, severity, generator, context=None):
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return (x + _param("gaussian_noise", severity) * noise).clamp(0, 1).to(x.dtype)


def fog(x, severity, generator, context=None):
    """Blend towards a bright fractal fog layer (ImageNet-C's fog, drawn with smooth noise)."""
    a = _param("fog", severity)
    B, _, H, W = x.shape
    layer = 0.5 + 0.5 * _smooth_noise((B, 1, H, W), generator, x.device)
    return (x * (1 - a) + a * layer).clamp(0, 1).to(x.dtype)


def snow(x, severity, generator, context=None):
    """Bright flakes, smeared along a falling direction, screen-blended over a slightly whitened image."""
    frac = _param("snow", severity)
    B, _, H, W = x.shape
    u = torch.rand(B, 1, H, W, generator=generator).to(x.device)
    flakes = (u < frac).float()
    L = 5
    kernel = torch.zeros(1, 1, L, L, device=x.device)
    for i in range(L):
        kernel[0, 0, i, i] = 1.0 / L ** 0.5
    streaks = F.conv2d(flakes, kernel, padding=L // 2).clamp(0, 1)
    whitened = x * (1 - frac) + frac * 0.9
    return (1 - (1 - whitened) * (1 - streaks)).clamp(0, 1).to(x.dtype)


def elastic(x, severity, generator, context=None):
    """Warp by a smooth random displacement field whose peak is the level's number of pixels."""
    amp = _param("elastic", severity)
    B, _, H, W = x.shape
    field = torch.rand(B, 2, 4, 4, generator=generator).to(x.device) * 2 - 1
    field = F.interpolate(field, size=(H, W), mode="bicubic", align_corners=False)
    field = field / (field.flatten(1).abs().amax(1).view(B, 1, 1, 1) + 1e-8)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H, device=x.device), torch.linspace(-1, 1, W, device=x.device),
                            indexing="ij")
    grid = torch.stack((xs, ys), -1).unsqueeze(0).repeat(B, 1, 1, 1)
    scale = torch.tensor([2.0 * amp / (W - 1), 2.0 * amp / (H - 1)], device=x.device)
    grid = grid + field.permute(0, 2, 3, 1) * scale
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=True).clamp(0, 1).to(x.dtype)


def gabor_pattern(shape, generator, device, kernels: int = 40, size: int = 11) -> torch.Tensor:
    """Sparse-convolution Gabor noise in [−1, 1], ``shape = (B, 1, H, W)``: random impulses convolved with
    Gabor kernels of one random orientation and frequency per image."""
    B, _, H, W = shape
    theta = torch.rand(B, generator=generator) * math.pi
    freq = 0.15 + 0.2 * torch.rand(B, generator=generator)
    t = torch.arange(size, dtype=torch.float32) - size // 2
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    rot = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    env = torch.exp(-(xx ** 2 + yy ** 2)[None] / (2 * (size / 4) ** 2))
    k = (env * torch.cos(2 * math.pi * freq[:, None, None] * rot)).unsqueeze(1)  # (B, 1, s, s)
    impulses = torch.zeros(B, 1, H, W)
    pos = torch.randint(0, H * W, (B, kernels), generator=generator)
    sign = torch.randint(0, 2, (B, kernels), generator=generator).float() * 2 - 1
    impulses.view(B, -1).scatter_add_(1, pos, sign)
    pat = F.conv2d(impulses.view(1, B, H, W), k, padding=size // 2, groups=B).view(B, 1, H, W)
    pat = pat / (pat.flatten(1).abs().amax(1).view(B, 1, 1, 1) + 1e-8)
    return pat.to(device)


def gabor(x, severity, generator, context=None):
    pat = gabor_pattern((x.shape[0], 1, *x.shape[2:]), generator, x.device)
    return (x + _param("gabor", severity) * pat).clamp(0, 1).to(x.dtype)


def pixelate(x, severity, generator=None, context=None):
    H, W = x.shape[-2:]
    keep = _param("pixelate", severity)
    small = F.interpolate(x.float(), size=(max(1, round(H * keep)), max(1, round(W * keep))), mode="area")
    return F.interpolate(small, size=(H, W), mode="nearest").clamp(0, 1).to(x.dtype)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue(x, severity, generator=None, context=None):
    """Rotate the chroma plane of YIQ by the level's angle (luma kept)."""
    if x.shape[1] != 3:
        return x
    a = math.radians(_param("hue", severity))
    rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    m = torch.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ
    y = torch.einsum("ij,bjhw->bihw", m.to(x.device), x.float())
    return y.clamp(0, 1).to(x.dtype)


def brightness(x, severity, generator=None, context=None):
    return (x + _param("brightness", severity)).clamp(0, 1).to(x.dtype)


_FNS = {"jpeg": jpeg, "blur": blur, "gaussian_noise": gaussian_noise, "fog": fog, "snow": snow, "elastic": elastic,
        "gabor": gabor, "pixelate": pixelate, "hue": hue, "brightness": brightness}


def image_attacks() -> dict[str, NovelAttack]:
    return {name: NovelAttack(name, fn, SEVERITIES, description=f"levels {LEVELS[name]}") for name, fn in _FNS.items()}


# ----------------------------------------------------------------------------- backdoor triggers
def _patch_pattern(size: int, channels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(channels, size, size, generator=g) > 0.5).float()


def patch_trigger(x, params, generator=None):
    """A fixed black-and-white ``size``×``size`` patch (random pattern from ``pattern_seed``) at a corner."""
    size, where = int(params["size"]), params["position"]
    B, C, H, W = x.shape
    if not 1 <= size <= min(H, W):
        raise ValueError(f"backdoor.params.size must be in 1..{min(H, W)}, got {size}")
    pat = _patch_pattern(size, C, int(params["pattern_seed"])).to(x.device, x.dtype)
    r0 = 0 if where in ("tl", "tr") else H - size
    c0 = 0 if where in ("tl", "bl") else W - size
    y = x.clone()
    y[:, :, r0:r0 + size, c0:c0 + size] = pat
    return y


def blend_trigger(x, params, generator=None):
    """A "style" trigger: blend every image with one fixed random texture (weight ``alpha``)."""
    B, C, H, W = x.shape
    g = torch.Generator().manual_seed(int(params["pattern_seed"]))
    tex = torch.rand(1, C, H, W, generator=g).to(x.device, x.dtype)
    a = float(params["alpha"])
    return (x * (1 - a) + a * tex).clamp(0, 1)


def image_triggers() -> dict[str, Trigger]:
    return {"patch": Trigger("patch", patch_trigger, {"size": 4, "position": "br", "pattern_seed": 1234}),
            "blend": Trigger("blend", blend_trigger, {"alpha": 0.15, "pattern_seed": 1234})}
