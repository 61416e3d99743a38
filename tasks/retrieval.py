"""LRA Retrieval: do two ACL Anthology papers cite each other? (AAN; Radev et al. 2013, Tay et al. 2020)

An example is a pair of documents at byte level, each cut to `max_len` bytes (LRA: 4000), label 1
when they are linked by a citation. The model must compress each document on its own: the
two-tower head (recipes/model.py DualClassifier) runs the same backbone on both and classifies
from [u, v, u*v, u-v]. SPT pretrains on every document on its own.

Source: the official LRA release files, `task.data_dir=.../lra_release/tsv_data` holding
`new_aan_pairs.train.tsv`, `new_aan_pairs.eval.tsv` (our val) and `new_aan_pairs.test.tsv`: no
header, one pair per line, five tab-separated fields: label (0/1, possibly written 0.0/1.0), id1,
id2, text1, text2. There is no generator and no hub copy.
"""

from __future__ import annotations

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
    file_identity,
    ids_dataset,
    seeded_subset,
)

log = logging.getLogger(__name__)

OFFICIAL_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
                  "test": "new_aan_pairs.test.tsv"}
HINT = ("the LRA release (lra_release.gz from https://github.com/google-research/long-range-arena: "
        "lra_release/tsv_data/)")


def read_pairs(path: Path, max_len: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    """One official TSV -> (ids of text1, ids of text2, labels, n documents truncated)."""
    first, second, labels, cut = [], [], [], 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise DataError(f"{path}:{n}: expected 5 tab-separated fields (label, id1, id2, text1, text2), "
                                f"found {len(fields)}")
            try:
                label = float(fields[0])
            except ValueError:
                label = -1.0
            if label not in (0.0, 1.0):
                raise DataError(f"{path}:{n}: label {fields[0][:20]!r} is not 0 or 1")
            for out, text in ((first, fields[3]), (second, fields[4])):
                cut += len(text) > max_len
                out.append(byte_ids(text, max_len))
            labels.append(int(label))
    if not labels:
        raise DataError(f"{path}: no document pairs")
    return first, second, np.asarray(labels, dtype=np.int64), cut


class Retrieval(Task):
    """Binary classification of document pairs (citation link or not), two towers."""

    def __init__(
        self,
        *,
        name: str = "retrieval",
        data_dir: str | None = None,
        max_len: int = 4000,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        data_seed: int = 0,
        mask_ratio: float = 0.15,
    ):
        check_sizes(max_len=max_len, n_train=n_train, n_val=n_val, n_test=n_test)
        check_mask_ratio(mask_ratio)
        self.data_dir = None if data_dir in (None, "") else Path(data_dir).expanduser()
        self.limits = {"train": n_train, "val": n_val, "test": n_test}
        self.data_seed = data_seed
        self.spec = TaskSpec(name=name, kind="tokens", vocab_size=258, max_len=max_len, n_classes=2,
                             pad_id=BYTE_PAD, mask_id=BYTE_MASK, dual=True, spt_mask_ratio=mask_ratio)

    def paths(self) -> dict[str, Path]:
        if self.data_dir is None:
            raise DataError(f"task={self.spec.name} needs the AAN pairs: set task.data_dir=/path/to/tsv_data "
                            f"holding {', '.join(OFFICIAL_FILES.values())} ({HINT})")
        if not self.data_dir.is_dir():
            raise DataError(f"task.data_dir={self.data_dir} is not a directory: point it at {HINT}")
        out = {}
        for split, name in OFFICIAL_FILES.items():
            out[split] = self.data_dir / name
            if not out[split].is_file():
                raise DataError(f"{out[split]} not found: expected {', '.join(OFFICIAL_FILES.values())} from {HINT}")
        return out

    def cache_key(self) -> dict:
        return {"source": "official", "files": file_identity(self.paths().values()), "max_len": self.spec.max_len,
                **self.limits, "data_seed": self.data_seed}

    def build(self) -> dict:
        out = {}
        for i, (split, path) in enumerate(self.paths().items()):
            first, second, labels, cut = read_pairs(path, self.spec.max_len)
            if cut:
                log.info("retrieval %s: %d of %d documents truncated to max_len=%d bytes", split, cut,
                         2 * len(labels), self.spec.max_len)
            keep = seeded_subset(len(labels), self.limits[split], self.data_seed + i)
            out[split] = ids_dataset([first[k] for k in keep], labels[keep], ids2=[second[k] for k in keep])
        return out
