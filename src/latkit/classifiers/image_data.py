"""Offline image data: a generated 32×32 RGB shapes dataset and any ImageFolder-layout directory (read with PIL).

The generated dataset: each class is a shape or texture (disc, square, triangle, cross, ring, stripes,
checker, diamond) drawn with a random colour, position and size over a random background (a colour
gradient plus noise). Everything comes from one ``torch.Generator`` seeded by the caller, so the same seed
gives the same images (generated in memory in well under a second for a few thousand).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latkit.classifiers.modality import ClassifierError, Examples

SHAPES = ("disc", "square", "triangle", "cross", "ring", "stripes", "checker", "diamond")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _shape_masks(kind: str, xx, yy, cx, cy, r, period):
    dx, dy = xx - cx, yy - cy
    if kind == "disc":
        return dx ** 2 + dy ** 2 <= r ** 2
    if kind == "square":
        return (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r)
    if kind == "triangle":
        return (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    if kind == "cross":
        t = r / 3
        return ((dx.abs() <= t) & (dy.abs() <= r)) | ((dy.abs() <= t) & (dx.abs() <= r))
    if kind == "ring":
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    box = (dx.abs() <= r) & (dy.abs() <= r)
    if kind == "stripes":
        return box & (torch.floor((xx - cx) / period) % 2 == 0)
    if kind == "checker":
        return box & ((torch.floor((xx - cx) / period) + torch.floor((yy - cy) / period)) % 2 == 0)
    if kind == "diamond":
        return dx.abs() + dy.abs() <= r
    raise ValueError(kind)


def synthetic_shapes(n: int, num_classes: int, seed: int, size: int = 32) -> Examples:
    """``n`` images ``(n, 3, size, size)`` in [0, 1] with balanced labels, deterministic given ``seed``."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ClassifierError(f"data.classes must be in 2..{len(SHAPES)} for the synthetic shapes, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    s = float(size)
    t = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    xx, yy = xx.expand(n, size, size), yy.expand(n, size, size)
    col = lambda: torch.rand(n, 3, 1, 1, generator=g)  # noqa: E731
    r = (0.15 + 0.17 * torch.rand(n, 1, 1, generator=g)) * s
    cx = r + (s - 1 - 2 * r) * torch.rand(n, 1, 1, generator=g)
    cy = r + (s - 1 - 2 * r) * torch.rand(n, 1, 1, generator=g)
    period = (2 + torch.randint(0, 2, (n, 1, 1), generator=g)).float()
    bg_a, bg_b, fg = col(), col(), col()
    close = (fg - 0.5 * (bg_a + bg_b)).abs().sum(1, keepdim=True) < 0.6  # keep the shape visible
    fg = torch.where(close, 1 - 0.5 * (bg_a + bg_b), fg)
    angle = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
    ramp = ((xx * torch.cos(angle) + yy * torch.sin(angle)) / s + 1) / 2  # a gradient in a random direction
    ramp = ramp.clamp(0, 1).unsqueeze(1)
    bg = bg_a * (1 - ramp) + bg_b * ramp
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for c, kind in enumerate(SHAPES[:num_classes]):
        sel = labels == c
        if sel.any():
            mask[sel] = _shape_masks(kind, xx[sel], yy[sel], cx[sel], cy[sel], r[sel], period[sel])
    m = mask.unsqueeze(1).float()
    img = bg * (1 - m) + fg * m + 0.04 * torch.randn(n, 3, size, size, generator=g)
    return Examples(img.clamp(0, 1), labels)


# ----------------------------------------------------------------------------- ImageFolder
def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_folder(root: Path, class_names: list[str], size: int) -> Examples:
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for c, name in enumerate(class_names):
        d = root / name
        if not d.is_dir():
            raise ClassifierError(f"{root} has no class directory {name!r} (classes from the train split: {class_names})")
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.float32) / 255.0)
            except (UnidentifiedImageError, OSError) as e:
                raise ClassifierError(f"cannot read image {p}: {e}") from None
            labels.append(c)
    if not images:
        raise ClassifierError(f"no images under {root} (ImageFolder layout: ROOT/CLASS/*.png)")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return Examples(x, torch.tensor(labels, dtype=torch.long))


def image_folder(root: str | Path, size: int, seed: int, test_fraction: float) -> tuple[Examples, Examples, list[str]]:
    """``(train, test, class_names)`` from an ImageFolder-layout directory: ``ROOT/train/CLASS/*`` and
    ``ROOT/test/CLASS/*`` (or ``val/``), or ``ROOT/CLASS/*`` split by ``test_fraction`` (stratified by seed)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ClassifierError(f"data.source: {root} is not a directory (give `synthetic` or an ImageFolder directory)")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        names = [p.name for p in _class_dirs(root / "train")]
        if len(names) < 2:
            raise ClassifierError(f"{root / 'train'} needs at least two class directories, found {names}")
        return _read_folder(root / "train", names, size), _read_folder(test_dir, names, size), names
    names = [p.name for p in _class_dirs(root)]
    if len(names) < 2:
        raise ClassifierError(f"{root} needs at least two class directories (ImageFolder layout), found {names}")
    data = _read_folder(root, names, size)
    g = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in range(len(names)):
        idx = torch.nonzero(data.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[: max(1, int(round(test_fraction * len(idx))))])
    test_idx = torch.cat(test_idx).sort().values
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[test_idx] = False
    return data.select(torch.nonzero(keep).flatten()), data.select(test_idx), names
