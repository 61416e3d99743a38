"""LRA Text: IMDB sentiment (Maas et al. 2011) at byte level (Tay et al. 2020).

An example is a movie review as UTF-8 bytes, the first `max_len` (LRA: 4096), label 1 positive,
0 negative. Ids are the byte values 0-255; 256 pads, 257 masks (SPT).
IMDB has no validation split: `val_from: test` follows LRA (the test set doubles as validation,
so val and test accuracy are the same number); `val_from: train` holds out a seeded
`val_fraction` of the training reviews instead, leaving test untouched until the end.

Sources (`task.source`):
- `files` (default): the `aclImdb/` tree of the original release, `task.data_dir=.../aclImdb`
  with `train/pos/*.txt`, `train/neg/*.txt`, `test/pos/*.txt`, `test/neg/*.txt`;
- `hub`: `datasets.load_dataset(task.hub_name)` (default "imdb": splits train/test, columns
  `text`, `label` 0 neg / 1 pos), when this machine is online.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from tasks.base import (
    BYTE_MASK,
    BYTE_PAD,
    DataError,
    Task,
    TaskSpec,
    byte_ids,
    check_mask_ratio,
    check_sizes,
    ids_dataset,
    seeded_subset,
)

log = logging.getLogger(__name__)

HINT = "the IMDB release (https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, unpacked to aclImdb/)"
CLASSES = {"neg": 0, "pos": 1}


class Text(Task):
    """Binary sentiment classification of byte-level IMDB reviews."""

    def __init__(
        self,
        *,
        name: str = "text",
        source: str = "files",
        data_dir: str | None = None,
        hub_name: str = "imdb",
        max_len: int = 4096,
        val_from: str = "test",
        val_fraction: float = 0.1,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        data_seed: int = 0,
        mask_ratio: float = 0.15,
    ):
        check_sizes(max_len=max_len, n_train=n_train, n_val=n_val, n_test=n_test)
        if source not in ("files", "hub"):
            raise ValueError(f"task.source={source!r} is not one of files, hub")
        if val_from not in ("test", "train"):
            raise ValueError(f"task.val_from={val_from!r} is not one of test (as LRA), train (a held-out slice)")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"task.val_fraction={val_fraction} must be in (0, 1)")
        check_mask_ratio(mask_ratio)
        self.source, self.hub_name = source, hub_name
        self.data_dir = None if data_dir in (None, "") else Path(data_dir).expanduser()
        self.val_from, self.val_fraction, self.data_seed = val_from, val_fraction, data_seed
        self.limits = {"train": n_train, "val": n_val, "test": n_test}
        self.spec = TaskSpec(name=name, kind="tokens", vocab_size=258, max_len=max_len, n_classes=2,
                             pad_id=BYTE_PAD, mask_id=BYTE_MASK, spt_mask_ratio=mask_ratio)

    def folders(self) -> dict[tuple[str, str], Path]:
        if self.data_dir is None:
            raise DataError(f"task={self.spec.name} needs IMDB: set task.data_dir=/path/to/aclImdb ({HINT}), "
                            f"or task.source=hub to load '{self.hub_name}' from the Hugging Face hub")
        if not self.data_dir.is_dir():
            raise DataError(f"task.data_dir={self.data_dir} is not a directory: point it at {HINT}")
        out = {}
        for split in ("train", "test"):
            for cls in CLASSES:
                folder = self.data_dir / split / cls
                if not folder.is_dir():
                    raise DataError(f"{folder} not found: expected aclImdb/{{train,test}}/{{pos,neg}}/*.txt from "
                                    f"{HINT}")
                out[(split, cls)] = folder
        return out

    def cache_key(self) -> dict:
        if self.source == "hub":
            where = {"hub": self.hub_name}
        else:  # names and sizes of every review file: cheap to list, changes when the tree does
            digest = hashlib.sha256()
            for (split, cls), folder in sorted(self.folders().items()):
                for f in sorted(folder.glob("*.txt")):
                    digest.update(f"{split}/{cls}/{f.name}:{f.stat().st_size}\n".encode())
            where = {"dir": str(self.data_dir.resolve()), "files": digest.hexdigest()}
        return {"source": self.source, **where, "max_len": self.spec.max_len, "val_from": self.val_from,
                "val_fraction": self.val_fraction, **self.limits, "data_seed": self.data_seed}

    def load(self) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
        """-> {"train" | "test": (byte ids per review, labels)}; truncation counted in the log."""
        out = {}
        if self.source == "hub":
            import datasets

            hub = datasets.load_dataset(self.hub_name)
            for split in ("train", "test"):
                ds = hub[split]
                if not {"text", "label"} <= set(ds.column_names):
                    raise DataError(f"hub dataset {self.hub_name!r}/{split}: expected columns text, label; "
                                    f"found {ds.column_names}")
                out[split] = ([byte_ids(t, self.spec.max_len) for t in ds["text"]],
                              np.asarray(ds["label"], dtype=np.int64))
                lengths = [len(t.encode("utf-8")) for t in ds["text"]]
                self._log_cut(split, lengths)
            return out
        folders = self.folders()
        for split in ("train", "test"):
            ids, labels, lengths = [], [], []
            for cls, label in CLASSES.items():
                files = sorted(folders[(split, cls)].glob("*.txt"))
                if not files:
                    raise DataError(f"{folders[(split, cls)]}: no *.txt reviews; expected those of {HINT}")
                for f in files:
                    data = f.read_bytes()
                    lengths.append(len(data))
                    ids.append(byte_ids(data, self.spec.max_len))
                    labels.append(label)
            self._log_cut(split, lengths)
            out[split] = (ids, np.asarray(labels, dtype=np.int64))
        return out

    def _log_cut(self, split: str, lengths: list[int]) -> None:
        cut = sum(n > self.spec.max_len for n in lengths)
        if cut:
            log.info("text %s: %d of %d reviews truncated to max_len=%d bytes", split, cut, len(lengths),
                     self.spec.max_len)

    def build(self) -> dict:
        loaded = self.load()
        labels = loaded["train"][1]
        if np.isin(labels, (0, 1), invert=True).any() or np.isin(loaded["test"][1], (0, 1), invert=True).any():
            raise DataError(f"{self.source} IMDB: labels must be 0 (neg) or 1 (pos)")
        train_index = np.arange(len(labels))
        if self.val_from == "train":
            perm = np.random.default_rng(self.data_seed).permutation(len(labels))
            n_val = max(1, int(round(self.val_fraction * len(labels))))
            index = {"train": np.sort(perm[n_val:]), "val": np.sort(perm[:n_val])}
            sources = {"train": "train", "val": "train", "test": "test"}
        else:
            index = {"train": train_index, "val": np.arange(len(loaded["test"][1]))}
            sources = {"train": "train", "val": "test", "test": "test"}
        index["test"] = np.arange(len(loaded["test"][1]))
        out = {}
        for i, split in enumerate(("train", "val", "test")):
            ids, labels = loaded[sources[split]]
            # val_from=test: val and test are the same subset, as in LRA.
            seed = self.data_seed + 1 + (2 if sources[split] == "test" else i)
            limit = self.limits["test"] if (self.val_from == "test" and split == "val") else self.limits[split]
            keep = index[split][seeded_subset(len(index[split]), limit, seed)]
            out[split] = ids_dataset([ids[k] for k in keep], labels[keep])
        return out
