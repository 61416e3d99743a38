"""The task contract: a spec, an input encoder, and train/val/test splits.

Glossary: N examples, B batch, L padded length of a batch, D d_model.
A task turns raw inputs into integer token ids; its encoder turns ids into (B, L, D) vectors, so
backbones never see raw inputs. Splits are stored flat (one token array + offsets) because LRA
splits hold ~100M tokens and a Python list per example would cost gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Missing, malformed or inconsistent data. The message names the file and the fix."""


@dataclass(frozen=True)
class TaskSpec:
    """What the model builder and the recipes need to know about a task.

    `kind`: "tokens" (ids in [0, vocab_size)) — pixel tasks come later.
    `dual`: two documents per example (Retrieval).
    `spt_mask_ratio`: the paper's masked-token ratio for this task, the SPT default.
    """

    name: str
    kind: str
    vocab_size: int
    max_len: int
    n_classes: int
    pad_id: int
    mask_id: int
    dual: bool = False
    spt_mask_ratio: float = 0.15


@dataclass
class TokenSplit:
    """N variable-length examples: example i is tokens[offsets[i]:offsets[i+1]], label labels[i]."""

    tokens: np.ndarray  # (sum of lengths,) int
    offsets: np.ndarray  # (N + 1,) int64
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, index: np.ndarray | list[int], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """-> ids (B, L) long right-padded with pad_id, mask (B, L) bool True = real, labels (B,).

        L is the longest example in the batch, not max_len: short batches cost less.
        """
        index = np.asarray(index)
        starts, ends = self.offsets[index], self.offsets[index + 1]
        width = int((ends - starts).max())
        ids = np.full((len(index), width), pad_id, dtype=np.int64)
        for row, (s, e) in enumerate(zip(starts, ends)):
            ids[row, : e - s] = self.tokens[s:e]
        ids_t = torch.from_numpy(ids)
        mask = torch.arange(width)[None, :] < torch.from_numpy(ends - starts)[:, None]
        return ids_t, mask, torch.from_numpy(self.labels[index].astype(np.int64))


class TokenEncoder(nn.Module):
    """ids (B, L) -> (B, L, D). A plain embedding; the pad row is zero and never trained."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embed(ids)


class Task:
    """Base class. Subclasses set `spec` and implement `build()` -> {split: datasets.Dataset with
    columns `input_ids` (list of int) and `label` (int)}, plus `cache_key()` naming everything the
    prepared data depends on."""

    spec: TaskSpec
    version = 1  # bump when preparation changes, so stale caches are rebuilt

    def cache_key(self) -> dict:
        raise NotImplementedError

    def build(self) -> dict:
        raise NotImplementedError

    def data_key(self) -> dict:
        """Everything the prepared splits depend on (parameters, or the source files' identity)."""
        return {"task": type(self).__name__, "version": self.version, **self.cache_key()}

    def data_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.data_key(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def encoder(self, d_model: int) -> nn.Module:
        return TokenEncoder(self.spec.vocab_size, d_model, self.spec.pad_id)

    def splits(self, cache_dir: str | os.PathLike) -> dict[str, TokenSplit]:
        """Prepared splits, from the cache when its key matches, else built and cached atomically."""
        import datasets
        from filelock import FileLock

        datasets.disable_progress_bars()  # our own bars say what is happening; its per-shard ones only add noise

        key = self.data_key()
        root = Path(cache_dir) / "data" / f"{self.spec.name}-{self.data_digest()}"
        root.parent.mkdir(parents=True, exist_ok=True)
        # The lock makes two runs that need the same data build it once.
        with FileLock(str(root) + ".lock"):
            if (root / "key.json").exists():
                log.info("data: cached %s", root)
            else:
                log.info("data: preparing %s", root)
                built = self.build()
                tmp = root.parent / f".tmp-{root.name}-{uuid.uuid4().hex[:8]}"
                datasets.DatasetDict(built).save_to_disk(str(tmp))
                (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
                if root.exists():  # a half-written dir from a crash before key.json: replace it
                    shutil.rmtree(root)
                os.replace(tmp, root)  # atomic: a reader sees all of it or none
            loaded = datasets.load_from_disk(str(root))
        return {name: to_token_split(loaded[name]) for name in SPLITS}


def to_token_split(ds) -> TokenSplit:
    """datasets.Dataset(input_ids: list[int], label: int) -> TokenSplit, without Python lists."""
    col = ds.data.column("input_ids").combine_chunks()
    return TokenSplit(
        tokens=col.values.to_numpy(zero_copy_only=False),
        offsets=col.offsets.to_numpy().astype(np.int64),
        labels=ds.data.column("label").to_numpy().astype(np.int64),
    )
