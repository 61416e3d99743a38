"""Pathfinder / Path-X: the generator's labels and shortcut guards, the official-tree reader, and
a tiny end-to-end SPT run on generated data."""

from __future__ import annotations

import numpy as np
import pytest

from recipes import experiment
from tasks.base import DataError
from tasks.pathfinder import SEP, Pathfinder, generate
from tasks.pathfinder_shortcut import dot_centres, features, logistic_accuracy
from tests.conftest import make_cfg
from tests.fixtures.lra import write_pathfinder

TINY = ["arch.d_model=16", "arch.n_layers=1", "arch.n_heads=2", "progress=false", "finetune.batch_size=8",
        "pretrain.batch_size=8", "finetune.max_steps=4", "finetune.eval_every=2", "pretrain.max_steps=4",
        "pretrain.eval_every=2"]


@pytest.fixture(scope="module")
def sample():
    return generate(120, 16, seed=3, progress=False)


def connected_dots(img: np.ndarray) -> bool:
    """Independent label: link lit pixels less than SEP apart (dashes of one curve are 2 apart,
    other curves at least SEP) and ask whether both dots fall in one component."""
    dots = dot_centres(img)
    assert len(dots) == 2, f"expected exactly two dots, found {len(dots)}"
    lit = {tuple(p) for p in np.argwhere(img > 0)}
    seen, todo = {tuple(dots[0])}, [tuple(dots[0])]
    while todo:
        r, c = todo.pop()
        for dr in range(1 - SEP, SEP):
            for dc in range(1 - SEP, SEP):
                q = (r + dr, c + dc)
                if q in lit and q not in seen:
                    seen.add(q)
                    todo.append(q)
    return tuple(dots[1]) in seen


def test_generated_labels_match_connectivity_of_the_dots(sample):
    images, labels, _ = sample
    found = np.array([connected_dots(img) for img in images])
    np.testing.assert_array_equal(found.astype(int), labels)
    assert 0.4 < labels.mean() < 0.6


def test_classes_share_ink_and_dot_distance_distribution(sample):
    images, labels, dists = sample
    ink = (images > 0).sum((1, 2))
    assert len(set(ink.tolist())) == 1  # same curves, same dash pattern: the same ink in every image
    assert labels.sum() * 2 == len(labels)
    pos = np.sort(np.round(dists[labels == 1] ** 2))
    neg = np.sort(np.round(dists[labels == 0] ** 2))
    np.testing.assert_array_equal(pos, neg)  # paired by exact squared distance
    # the statistics the shortcut script uses recover the true dot distance
    np.testing.assert_allclose(features(images)[:, 1], dists)


def test_generator_is_deterministic_and_seeded():
    a, la, _ = generate(12, 16, seed=1, progress=False)
    b, lb, _ = generate(12, 16, seed=1, progress=False)
    c, _, _ = generate(12, 16, seed=2, progress=False)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_logistic_regression_on_image_statistics_is_near_chance():
    """The generator's shortcut guard, small: fit on 200 images, test on 200 others."""
    tr_x, tr_y, _ = generate(200, 16, seed=10, progress=False)
    te_x, te_y, _ = generate(200, 16, seed=11, progress=False)
    acc = logistic_accuracy(features(tr_x), tr_y, features(te_x), te_y)
    assert acc < 0.63, acc  # chance 0.5, 95% band +- 0.07; a real shortcut scores far higher
    # ...while the same regression does find a cue that is really there (the check has power)
    cue = features(tr_x)
    cue[:, 0] += 5 * tr_y
    cue_te = features(te_x)
    cue_te[:, 0] += 5 * te_y
    assert logistic_accuracy(cue, tr_y, cue_te, te_y) > 0.95


def test_official_tree_is_read_split_and_cached(tmp_path):
    root, written = write_pathfinder(tmp_path, resolution=32, n=30)
    task = Pathfinder(data_dir=str(root), resolution=32, n_train=None, n_val=None, n_test=None)
    splits = task.splits(tmp_path / "cache")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [24, 3, 3]  # seeded 80/10/10
    by_pixels = {img.tobytes(): label for img, label in written.values()}
    for split in splits.values():
        for i in range(len(split)):
            pixels = split.tokens[split.offsets[i] : split.offsets[i + 1]]
            assert by_pixels[pixels.astype(np.uint8).tobytes()] == split.labels[i]
    other = Pathfinder(data_dir=str(root), resolution=32, n_train=None, n_val=None, n_test=None, data_seed=1)
    assert not np.array_equal(other.splits(tmp_path / "cache")["train"].labels[:24], splits["train"].labels) or \
        not np.array_equal(other.splits(tmp_path / "cache")["train"].tokens, splits["train"].tokens)


def test_pathx_resolution_128_reads_16384_pixels(tmp_path):
    root, _ = write_pathfinder(tmp_path, resolution=128, n=10)
    task = Pathfinder(name="pathx", data_dir=str(root), resolution=128, n_train=None, n_val=None, n_test=None)
    assert task.spec.max_len == 16384
    split = task.splits(tmp_path / "cache")["train"]
    assert split.lengths().tolist() == [16384] * 8 and split.tokens.dtype == np.uint8


def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog):
    root, written = write_pathfinder(tmp_path, resolution=32, n=20)
    broken = sorted(written)[:2]
    broken[0].write_bytes(b"not a png")
    broken[1].unlink()
    task = Pathfinder(data_dir=str(root), resolution=32, n_train=None, n_val=None, n_test=None)
    with caplog.at_level("WARNING"):
        splits = task.splits(tmp_path / "cache")
    assert sum(len(s) for s in splits.values()) == 18
    assert "skipped 2 of 20 unreadable images" in caplog.text and "sample_" in caplog.text


@pytest.mark.parametrize("damage, expected", [
    ("no_tree", "metadata not found: expected pathfinder32/"),
    ("bad_line", r"metadata/0.npy:2: expected 'imgs/<k> sample_<n>.png"),
    ("no_meta", "no \\*.npy metadata files"),
])
def test_malformed_release_is_a_clear_error(tmp_path, damage, expected):
    root, _ = write_pathfinder(tmp_path, resolution=32, n=6)
    meta = root / "pathfinder32" / "curv_contour_length_14" / "metadata"
    task_dir = root
    if damage == "no_tree":
        task_dir = tmp_path / "elsewhere"
        task_dir.mkdir()
    elif damage == "bad_line":
        lines = (meta / "0.npy").read_text().splitlines()
        (meta / "0.npy").write_text(lines[0] + "\nimgs/0 sample_2.png 2\n")
    else:
        for f in meta.glob("*.npy"):
            f.unlink()
    with pytest.raises(DataError, match=expected):
        Pathfinder(data_dir=str(task_dir), resolution=32, n_train=None, n_val=None, n_test=None).splits(tmp_path / "c")


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="generator draws"):
        Pathfinder(resolution=48)
    with pytest.raises(ValueError, match="difficulty"):
        Pathfinder(difficulty="hard")
    with pytest.raises(ValueError, match="pixel_loss"):
        Pathfinder(pixel_loss="mse")


@pytest.mark.slow
def test_spt_end_to_end_on_generated_pathfinder(tmp_path):
    cfg = make_cfg(["task=pathfinder", "recipe=spt", "task.n_train=16", "task.n_val=8", "task.n_test=8", *TINY],
                   tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    assert result["status"] == "ok"
    assert result["pretrain"]["pixel_loss"] == "ce" and result["pretrain"]["mask_ratio"] == 0.5
    assert result["steps"] == {"pretrain": 4, "finetune": 4}


def test_shortcut_script_reports_both_feature_sets(capsys):
    from tasks.pathfinder_shortcut import main

    acc = main(["--resolution", "16", "--n", "40"])
    out = capsys.readouterr().out
    assert set(acc) == {"controlled", "extended"} and acc["controlled"] == 0.5  # paired by distance: exactly 0.5
    assert "controlled statistics" in out and "extended" in out
    assert features(generate(4, 16, 0, progress=False)[0], extended=True).shape == (4, 8)
