"""Digits: scikit-learn's bundled 8x8 handwritten digits, read as a sequence of 64 pixels.

A small real pixel task for converged CPU studies (seconds per epoch on one core). The data is
`sklearn.datasets.load_digits()`: 1,797 images (about 180 per class), 10 classes (the digit), each
pixel an integer 0..16 (the count of set pixels in a 4x4 block of the 32x32 bitmap). It is read
from the installed package, never downloaded.

Pixels are read row by row (raster order, sklearn's own `data` layout), L = 64. They keep their 17
grey levels (pixel_levels = 17): everything downstream takes the level count from the spec (the
PixelEncoder scales by levels - 1, SPT's "ce" loss predicts pixel_levels classes, the baselines count
pixel_levels tokens), so nothing asks for 256. Stretching 0..16 onto 0..255 would only add 239
levels that never occur (and CE outputs that never fire); the L1 loss and the linear encoder see the
same values either way.

SPT defaults: mask ratio 0.5 (Amos et al., image tasks); pixel loss "ce" over the 17 levels, as
task=pathfinder (task=image uses "l1", Amos et al.'s CIFAR config; `task.pixel_loss=l1` here too).
With 17 levels a masked pixel is a 17-way choice. Chosen on whether pretraining learns at all
(transformer d64x2, 40 pretraining epochs, one seed): masked-pixel val accuracy 0.58 with ce against
0.51 with l1, where the unigram floor ("always 0") is 0.49; a smaller model with l1 stayed below it.

Splits: a seeded (`data_seed`), stratified, disjoint split of all images into train / val / test
(default 1,297 / 250 / 250; sizes `n_train` (null = the rest), `n_val`, `n_test`). Each class gets
its share of each split by largest remainder, its images in a seeded permutation's order, so the
split is a pure function of (data_seed, sizes) and each split keeps the class proportions.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from tasks.base import DataError, Task, TaskSpec, check_encoder, check_mask_ratio, check_sizes, ids_dataset

log = logging.getLogger(__name__)

LEVELS = 17  # pixel values 0..16
SIDE = 8
N_CLASSES = 10
N_IMAGES = 1797  # checked against the data when it is read


def load() -> tuple[np.ndarray, np.ndarray]:
    """-> (pixels (1797, 64) uint8 in 0..16, raster order; labels (1797,) int64 in 0..9)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    if data.data.shape != (N_IMAGES, SIDE * SIDE):
        raise DataError(f"sklearn.datasets.load_digits() gave {data.data.shape} pixels, expected "
                        f"({N_IMAGES}, {SIDE * SIDE}): reinstall scikit-learn")
    return data.data.astype(np.uint8), data.target.astype(np.int64)


def digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the arrays themselves, not of sklearn's file: a repackaged file with the same
    images keeps the cache, a changed image invalidates it."""
    h = hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def quotas(n: int, counts: np.ndarray) -> np.ndarray:
    """n split over the classes in proportion to `counts` (largest remainder; ties to the lower class)."""
    exact = n * counts / counts.sum()
    take = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - take), kind="stable")[: n - take.sum()]
    take[extra] += 1
    return take


def stratified_split(labels: np.ndarray, sizes: dict[str, int | None], seed: int) -> dict[str, np.ndarray]:
    """-> {split: ascending indices}, disjoint. `sizes` in the order drawn (a None size takes all that is
    left); each split takes per class its `quotas` share of what is left, first in the permutation."""
    order = np.random.default_rng(seed).permutation(len(labels))
    left = [order[labels[order] == c] for c in range(N_CLASSES)]  # each class, in permutation order
    out = {}
    for split, size in sizes.items():
        counts = np.array([len(x) for x in left])
        take = counts if size is None else quotas(size, counts)
        out[split] = np.sort(np.concatenate([x[:k] for x, k in zip(left, take)]))
        left = [x[k:] for x, k in zip(left, take)]
    return out


class Digits(Task):
    """10-way classification of sklearn's 8x8 digits as 64-pixel sequences, 17 grey levels."""

    def __init__(
        self,
        *,
        name: str = "digits",
        n_train: int | None = None,
        n_val: int = 250,
        n_test: int = 250,
        data_seed: int = 0,
        mask_ratio: float = 0.5,
        pixel_loss: str = "ce",
        encoder: str = "linear",
    ):
        check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
        check_mask_ratio(mask_ratio)
        wanted = n_val + n_test + (n_train or 0)
        if wanted > N_IMAGES:  # here, so that a bad size fails before any data is read
            raise ValueError(f"task.n_train + n_val + n_test = {wanted} exceeds the {N_IMAGES} digits images")
        check_encoder(encoder)
        self.sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
        self.data_seed, self.encoder_kind = data_seed, encoder
        self._data = None
        self.spec = TaskSpec(name=name, kind="pixels", vocab_size=LEVELS + 2, max_len=SIDE * SIDE,
                             n_classes=N_CLASSES, pad_id=LEVELS, mask_id=LEVELS + 1, spt_mask_ratio=mask_ratio,
                             pixel_levels=LEVELS, spt_pixel_loss=pixel_loss)

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:  # read once: cache_key needs its digest, build needs the arrays
            self._data = load()
        return self._data

    def cache_key(self) -> dict:
        pixels, labels = self.data()
        return {"source": "sklearn.datasets.load_digits", "sha256": digest(pixels, labels), **self.sizes,
                "data_seed": self.data_seed}

    def split_index(self) -> dict[str, np.ndarray]:
        """-> {"train" | "val" | "test": ascending indices into load()'s arrays}."""
        _, labels = self.data()
        # test and val first, so that their draw does not depend on n_train
        index = stratified_split(labels, {"test": self.sizes["n_test"], "val": self.sizes["n_val"],
                                          "train": self.sizes["n_train"]}, self.data_seed)
        return {split: index[split] for split in ("train", "val", "test")}

    def build(self) -> dict:
        pixels, labels = self.data()
        out = {split: ids_dataset(pixels[keep], labels[keep]) for split, keep in self.split_index().items()}
        log.info("digits: %s", {k: len(v) for k, v in out.items()})
        return out
