"""LRA Image: the CIFAR-10 python batches and the hub layout give the same grey sequences; errors
name the file; a tiny SPT run with the L1 pixel objective."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from recipes import experiment
from tasks.base import DataError
from tasks.image import Image, grayscale
from tests.conftest import make_cfg
from tests.fixtures.lra import write_cifar

TINY = ["arch.d_model=16", "arch.n_layers=1", "arch.n_heads=2", "progress=false", "finetune.batch_size=8",
        "pretrain.batch_size=8", "finetune.max_steps=2", "pretrain.max_steps=2", "task.n_val=4", "task.n_test=4",
        "finetune.eval_batch_size=4", "pretrain.eval_batch_size=4"]


def rgb_of(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_grayscale_is_the_luma_of_each_pixel_row_by_row():
    from PIL import Image as PILImage

    rgb = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    grey = grayscale(rgb)
    assert grey.shape == (4, 1024) and grey.dtype == np.uint8
    exact = (rgb @ np.array([0.299, 0.587, 0.114])).reshape(4, -1)
    assert np.abs(grey - exact).max() <= 0.5 + 1e-9  # the nearest grey level
    pil = np.stack([np.asarray(PILImage.fromarray(im).convert("L")) for im in rgb]).reshape(4, -1)
    assert np.abs(grey.astype(int) - pil.astype(int)).max() <= 1  # PIL's fixed-point luma agrees


def test_official_batches_split_into_train_val_test(tmp_path):
    root, raw = write_cifar(tmp_path, n_per_batch=10)
    splits = Image(data_dir=str(root)).splits(tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 45, "val": 5, "test": 10}  # 10% of train held out
    test = splits["test"]
    data, labels = raw["test_batch"]
    np.testing.assert_array_equal(test.tokens.reshape(10, 1024), grayscale(rgb_of(data)))
    np.testing.assert_array_equal(test.labels, labels)
    # train + val are exactly the 50 training images, each once, with its own label
    train_rgb = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([raw[f"data_batch_{i}"][1] for i in range(1, 6)])
    rows = {g.tobytes(): lab for g, lab in zip(grayscale(rgb_of(train_rgb)), train_labels)}
    seen = []
    for split in (splits["train"], splits["val"]):
        for row, lab in zip(split.tokens.reshape(-1, 1024), split.labels):
            assert rows[row.tobytes()] == lab
            seen.append(row.tobytes())
    assert len(set(seen)) == 50


def test_hub_layout_converts_to_the_same_sequences(tmp_path, monkeypatch):
    import datasets
    from PIL import Image as PILImage

    root, raw = write_cifar(tmp_path, n_per_batch=4)
    train = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([raw[f"data_batch_{i}"][1] for i in range(1, 6)])

    def as_hub(data, labels):  # uoft-cs/cifar10: columns img (PIL image), label
        feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
        return datasets.Dataset.from_dict({"img": [PILImage.fromarray(im) for im in rgb_of(data)],
                                           "label": labels.tolist()}, features=feats)

    hub = datasets.DatasetDict({"train": as_hub(train, train_labels), "test": as_hub(*raw["test_batch"])})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: asked.append(name) or hub)
    from_hub = Image(source="hub").splits(tmp_path / "cache")
    from_files = Image(data_dir=str(root)).splits(tmp_path / "cache")
    assert asked == ["uoft-cs/cifar10"]
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(from_hub[split].tokens, from_files[split].tokens)
        np.testing.assert_array_equal(from_hub[split].labels, from_files[split].labels)


def test_missing_and_malformed_data_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="set task.data_dir=/path/to/cifar-10-batches-py .*or task.source=hub"):
        Image().splits(tmp_path / "cache")
    root, _ = write_cifar(tmp_path, n_per_batch=2)
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 not found: expected data_batch_1"):
        Image(data_dir=str(root)).splits(tmp_path / "cache")
    (root / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        Image(data_dir=str(root)).splits(tmp_path / "cache")
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"data_batch_3: expected b'data' of shape \(N, 3072\)"):
        Image(data_dir=str(root)).splits(tmp_path / "cache")


@pytest.mark.slow
def test_spt_end_to_end_with_l1_pixel_objective(tmp_path):
    root, _ = write_cifar(tmp_path, n_per_batch=4)
    cfg = make_cfg(["task=image", "recipe=spt", f"task.data_dir={root}", *TINY], tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    assert result["status"] == "ok"
    assert result["pretrain"]["pixel_loss"] == "l1" and result["pretrain"]["mask_ratio"] == 0.5
    assert 0 < result["metrics"]["pretrain_val_loss"] < 1  # a mean absolute error on [0, 1] values
