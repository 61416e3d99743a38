"""LRA Image: CIFAR-10 in grey levels, read as a sequence of 1024 pixels (Tay et al. 2020).

Each 32x32 colour image becomes one grey level per pixel, row by row: L = round(0.299 R + 0.587 G
+ 0.114 B) (ITU-R 601 luma, the weights of LRA's tf.image.rgb_to_grayscale), 256 levels, 10
classes. Validation is a seeded `val_fraction` of the training images (the S4 / Amos et al.
pipelines hold out 10%); test is the official test set.

Sources (`task.source`):
- `files` (default): the official python batches, `task.data_dir=.../cifar-10-batches-py` holding
  `data_batch_1..5` and `test_batch` (pickled dicts: b"data" (10000, 3072) uint8 in R, G, B planes,
  b"labels" list of ints);
- `hub`: `datasets.load_dataset(task.hub_name)` (default "uoft-cs/cifar10": columns `img` (PIL
  image), `label`), when this machine is online.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

from tasks.base import (
    DataError,
    Task,
    TaskSpec,
    check_encoder,
    check_mask_ratio,
    check_sizes,
    file_identity,
    ids_dataset,
    seeded_subset,
)

log = logging.getLogger(__name__)

LEVELS = 256
SIDE = 32
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
HINT = ("the CIFAR-10 python version (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, "
        "unpacked to cifar-10-batches-py/)")
LUMA = np.array([299, 587, 114], dtype=np.int64)  # per mille, sums to 1000


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 1024) uint8 grey levels, rounded to nearest."""
    return ((rgb.astype(np.int64) @ LUMA + 500) // 1000).astype(np.uint8).reshape(len(rgb), -1)


class BatchUnpickler(pickle.Unpickler):
    """The official batches are pickles, and a plain pickle.load runs whatever a planted file names.
    This one builds only dicts, lists, bytes, numbers and numpy arrays; anything else is refused."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # protocol 2 from Python 3
               *((m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")),
               *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official python batch -> (rgb (N, 32, 32, 3) uint8, labels (N,) int64)."""
    if not path.is_file():
        raise DataError(f"{path} not found: expected {', '.join(TRAIN_FILES)} and {TEST_FILE} from {HINT}")
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels'): "
                        f"{type(exc).__name__}: {exc}; re-download {HINT}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or len(labels) != len(data):
        raise DataError(f"{path}: expected b'data' of shape (N, 3072) and N labels, found {data.shape} "
                        f"and {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0-9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), labels


class Image(Task):
    """10-way classification of grey CIFAR-10 images as 1024-pixel sequences."""

    def __init__(
        self,
        *,
        name: str = "image",
        source: str = "files",
        data_dir: str | None = None,
        hub_name: str = "uoft-cs/cifar10",
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        val_fraction: float = 0.1,
        data_seed: int = 0,
        mask_ratio: float = 0.5,
        pixel_loss: str = "l1",
        encoder: str = "linear",
    ):
        check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
        if source not in ("files", "hub"):
            raise ValueError(f"task.source={source!r} is not one of files, hub")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"task.val_fraction={val_fraction} must be in (0, 1)")
        check_mask_ratio(mask_ratio)
        check_encoder(encoder)
        self.source, self.hub_name = source, hub_name
        self.data_dir = None if data_dir in (None, "") else Path(data_dir).expanduser()
        self.limits = {"train": n_train, "val": n_val, "test": n_test}  # seeded subsets; None = all
        self.val_fraction, self.data_seed = val_fraction, data_seed
        self.encoder_kind = encoder
        self.spec = TaskSpec(name=name, kind="pixels", vocab_size=LEVELS + 2, max_len=SIDE * SIDE, n_classes=10,
                             pad_id=LEVELS, mask_id=LEVELS + 1, spt_mask_ratio=mask_ratio, pixel_levels=LEVELS,
                             spt_pixel_loss=pixel_loss)

    def paths(self) -> list[Path]:
        if self.data_dir is None:
            raise DataError(f"task={self.spec.name} needs CIFAR-10: set task.data_dir=/path/to/cifar-10-batches-py "
                            f"({HINT}), or task.source=hub to load '{self.hub_name}' from the Hugging Face hub")
        if not self.data_dir.is_dir():
            raise DataError(f"task.data_dir={self.data_dir} is not a directory: point it at {HINT}")
        return [self.data_dir / f for f in (*TRAIN_FILES, TEST_FILE)]

    def cache_key(self) -> dict:
        where = ({"hub": self.hub_name} if self.source == "hub" else
                 {"files": file_identity(p for p in self.paths() if p.is_file())})
        return {"source": self.source, **where, **self.limits, "val_fraction": self.val_fraction,
                "data_seed": self.data_seed}

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """-> {"train" | "test": (rgb (N, 32, 32, 3) uint8, labels (N,))} from the chosen source."""
        if self.source == "hub":
            import datasets

            hub = datasets.load_dataset(self.hub_name)
            out = {}
            for split in ("train", "test"):
                ds = hub[split]
                image_col = "img" if "img" in ds.column_names else "image"
                rgb = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in ds[image_col]])
                if rgb.shape[1:] != (SIDE, SIDE, 3):
                    raise DataError(f"hub dataset {self.hub_name!r}: expected 32x32 images, found {rgb.shape[1:3]}")
                out[split] = (rgb, np.asarray(ds["label"], dtype=np.int64))
            return out
        paths = self.paths()
        train = [read_batch(p) for p in paths[:-1]]
        return {"train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
                "test": read_batch(paths[-1])}

    def build(self) -> dict:
        loaded = self.load()
        rgb, labels = loaded["train"]
        perm = np.random.default_rng(self.data_seed).permutation(len(labels))
        n_val = max(1, int(round(self.val_fraction * len(labels))))
        index = {"train": np.sort(perm[n_val:]), "val": np.sort(perm[:n_val])}
        sources = {"train": loaded["train"], "val": loaded["train"], "test": loaded["test"]}
        index["test"] = np.arange(len(loaded["test"][1]))
        out = {}
        for i, split in enumerate(("train", "val", "test")):
            rgb, labels = sources[split]
            keep = index[split][seeded_subset(len(index[split]), self.limits[split], self.data_seed + 1 + i)]
            out[split] = ids_dataset(grayscale(rgb[keep]), labels[keep])
        log.info("image: %s", {k: len(v) for k, v in out.items()})
        return out
