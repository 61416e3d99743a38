"""Digits: sklearn's 8x8 digits as 64-pixel sequences in raster order; a seeded stratified disjoint
split; a data key that follows the split; tiny supervised and SPT runs that learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from recipes import experiment
from tasks.digits import Digits
from tests.conftest import make_cfg

TINY = ["task=digits", "arch.d_model=32", "arch.n_layers=1", "arch.n_heads=2", "progress=false",
        "probes.enabled=false"]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return Digits().splits(tmp_path_factory.mktemp("cache"))


def test_spec_is_a_64_pixel_10_class_task_with_17_levels():
    spec = Digits().spec
    assert (spec.kind, spec.max_len, spec.n_classes, spec.pixel_levels) == ("pixels", 64, 10, 17)
    assert (spec.pad_id, spec.mask_id, spec.vocab_size) == (17, 18, 19)
    assert (spec.spt_mask_ratio, spec.spt_pixel_loss) == (0.5, "ce")


def test_splits_are_sklearns_images_in_raster_order(splits):
    raw = load_digits()
    rows = {}
    for image, label in zip(raw.images, raw.target):  # (8, 8) images: raster order = row by row
        rows.setdefault(image.reshape(-1).astype(np.uint8).tobytes(), set()).add(int(label))
    seen = []
    for name, split in splits.items():
        pixels = split.tokens.reshape(-1, 64)
        assert split.tokens.dtype == np.uint8 and pixels.max() == 16 and (split.lengths() == 64).all()
        assert set(np.unique(split.labels)) == set(range(10)), name  # stratified: every class in every split
        for row, label in zip(pixels, split.labels):
            assert label in rows[row.tobytes()]
        seen.extend(pixels.tolist())
    assert sorted(seen) == sorted(raw.data.astype(int).tolist())  # disjoint, and together all 1,797 images


def test_split_sizes_are_stratified_disjoint_and_cover_the_images():
    labels = load_digits().target
    index = Digits().split_index()
    assert {k: len(v) for k, v in index.items()} == {"train": 1297, "val": 250, "test": 250}
    assert np.array_equal(np.sort(np.concatenate(list(index.values()))), np.arange(1797))
    share = np.bincount(labels) / len(labels)
    for keep in index.values():
        assert np.abs(np.bincount(labels[keep], minlength=10) - share * len(keep)).max() < 1  # largest remainder
    small = Digits(n_train=300, n_val=100, n_test=50).split_index()
    assert {k: len(v) for k, v in small.items()} == {"train": 300, "val": 100, "test": 50}
    assert len(np.unique(np.concatenate(list(small.values())))) == 450
    with pytest.raises(ValueError, match="exceeds the 1797 digits images"):
        Digits(n_val=1000, n_test=1000)


def test_split_and_data_key_are_pure_functions_of_seed_and_sizes():
    a, b, other = Digits().split_index(), Digits().split_index(), Digits(data_seed=1).split_index()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], other["test"])
    assert Digits().data_key() == Digits().data_key()
    keys = {Digits(**kw).data_digest() for kw in ({}, {"data_seed": 1}, {"n_val": 200}, {"n_test": 200},
                                                   {"n_train": 1000})}
    assert len(keys) == 5
    assert len(Digits().data_key()["sha256"]) == 64  # the images and labels themselves


@pytest.mark.slow
def test_supervised_transformer_learns_well_above_chance(tmp_path):
    cfg = make_cfg([*TINY, "recipe=supervised", "finetune.epochs=10", "finetune.lr=0.01",
                    "finetune.warmup_steps=10"], tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    assert result["status"] == "ok"
    assert result["metrics"]["test_acc"] > 0.5  # chance 0.1 (measured 0.76)


@pytest.mark.slow
def test_spt_masked_pixel_pretraining_beats_the_unigram_floor(tmp_path):
    cfg = make_cfg([*TINY, "recipe=spt", "pretrain.epochs=15", "pretrain.lr=0.003", "pretrain.warmup_steps=10",
                    "finetune.epochs=1"], tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    assert result["status"] == "ok"
    assert result["pretrain"]["pixel_loss"] == "ce" and result["pretrain"]["mask_ratio"] == 0.5
    floor = result["baselines"]["unigram"]["val_acc"]  # always "level 0": about 0.49 of the pixels
    assert result["metrics"]["pretrain_val_acc"] > floor + 0.01  # measured 0.524 against 0.491
