"""Offline image data: the generated shapes (deterministic by seed) and ImageFolder directories read with PIL."""
import numpy as np
import pytest
import torch

from latkit.classifiers.image_data import image_folder, synthetic_shapes
from latkit.classifiers.modality import ClassifierError


def test_synthetic_deterministic_balanced_in_range():
    a, b, c = synthetic_shapes(60, 6, seed=1), synthetic_shapes(60, 6, seed=1), synthetic_shapes(60, 6, seed=2)
    assert a.raw.shape == (60, 3, 32, 32) and a.raw.dtype == torch.float32
    assert torch.equal(a.raw, b.raw) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.raw, c.raw)
    assert a.labels.bincount().tolist() == [10] * 6
    assert float(a.raw.min()) >= 0 and float(a.raw.max()) <= 1
    # classes differ in content: the per-class mean images are not all the same
    means = torch.stack([a.raw[a.labels == k].mean(0) for k in range(6)])
    assert (means[0] - means[1:]).abs().amax() > 0.05
    with pytest.raises(ClassifierError, match="2..8"):
        synthetic_shapes(10, 9, seed=0)


def _write(root, counts, size=10):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size + 2, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder_split_by_fraction(tmp_path):
    _write(tmp_path, {"cat": 5, "dog": 5})
    (tmp_path / "notes.txt").write_text("ignored")
    train, test, names = image_folder(tmp_path, 16, seed=0, test_fraction=0.2)
    assert names == ["cat", "dog"]
    assert train.raw.shape == (8, 3, 16, 16) and len(test) == 2 and sorted(test.labels.tolist()) == [0, 1]
    again = image_folder(tmp_path, 16, seed=0, test_fraction=0.2)
    assert torch.equal(again[1].raw, test.raw)


def test_image_folder_train_test_dirs(tmp_path):
    _write(tmp_path / "train", {"a": 3, "b": 2, "c": 2})
    _write(tmp_path / "val", {"a": 1, "b": 1, "c": 1})
    train, test, names = image_folder(tmp_path, 8, seed=0, test_fraction=0.5)
    assert names == ["a", "b", "c"] and len(train) == 7 and test.labels.tolist() == [0, 1, 2]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ClassifierError, match="not a directory"):
        image_folder(tmp_path / "nope", 8, 0, 0.2)
    _write(tmp_path, {"only": 2})
    with pytest.raises(ClassifierError, match="two class"):
        image_folder(tmp_path, 8, 0, 0.2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ClassifierError, match="cannot read"):
        image_folder(tmp_path, 8, 0, 0.2)
