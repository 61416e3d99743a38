"""The task contract: a spec, an input encoder, and train/val/test splits.

Glossary: N examples, B batch, L padded length of a batch, D d_model.
A task turns raw inputs into integer ids; its encoder turns ids into (B, L, D) vectors, so
backbones never see raw inputs. Splits are stored flat (one token array + offsets) because LRA
splits hold ~100M tokens and a Python list per example would cost gigabytes.

Two input kinds:
- `tokens`: ids in [0, vocab_size), the task's own vocabulary (ListOps symbols, bytes);
- `pixels`: grey levels in [0, pixel_levels) stored as uint8, plus two ids past the levels for
  padding and masking (pad_id = levels, mask_id = levels + 1). The PixelEncoder reads a level as a
  continuous value plus a "masked" channel, so SPT can hide pixels without a fake grey level.
Byte-level text uses the same trick: bytes 0-255 stored as uint8, pad 256, mask 257.
Dual-input tasks (Retrieval) keep both documents of every example in one DualSplit.
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
KINDS = ("tokens", "pixels")
PIXEL_LOSSES = ("ce", "l1")
BYTE_PAD, BYTE_MASK = 256, 257  # ids past the 256 byte values (and past 256 grey levels)


class DataError(ValueError):
    """Missing, malformed or inconsistent data. The message names the file and the fix."""


@dataclass(frozen=True)
class TaskSpec:
    """What the model builder and the recipes need to know about a task.

    `kind`: "tokens" (ids in [0, vocab_size)) or "pixels" (levels in [0, pixel_levels), then pad, mask).
    `dual`: two documents per example (Retrieval); `max_len` is then the length of one document.
    `spt_mask_ratio`: the paper's masked-token ratio for this task, the SPT default.
    `spt_pixel_loss`: pixels only, the SPT default loss: "ce" over the levels or "l1" on values.
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
    pixel_levels: int = 0
    spt_pixel_loss: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "pixels":
            if self.pixel_levels < 2 or (self.pad_id, self.mask_id) != (self.pixel_levels, self.pixel_levels + 1):
                raise ValueError("a pixel task has pixel_levels >= 2, pad_id = levels and mask_id = levels + 1")
            if self.spt_pixel_loss not in PIXEL_LOSSES:
                raise ValueError(f"task.pixel_loss={self.spt_pixel_loss!r} is not one of {', '.join(PIXEL_LOSSES)}")


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

    def documents(self) -> TokenSplit:
        """The inputs SPT pretrains on: here the examples themselves."""
        return self

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

    def subset(self, index: np.ndarray) -> TokenSplit:
        """The examples at `index` (sorted ascending), as a new flat split."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths()[index]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # token t of the new flat array comes from old position t + (old start - new start) of its example
        take = np.arange(offsets[-1], dtype=np.int64) + np.repeat(self.offsets[index] - offsets[:-1], lengths)
        return TokenSplit(tokens=self.tokens[take], offsets=offsets, labels=self.labels[index])


@dataclass
class DualSplit:
    """N examples of two documents each (Retrieval), stored as one TokenSplit of 2N documents:
    document i and N + i are the two sides of example i."""

    docs: TokenSplit
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        n, lengths = len(self), self.docs.lengths()
        return np.maximum(lengths[:n], lengths[n:])

    def documents(self) -> TokenSplit:
        """All 2N documents as separate examples: what SPT pretrains on."""
        return self.docs

    def batch(self, index, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """-> ids (B, 2, L), mask (B, 2, L), labels (B,); L the longest of the 2B documents."""
        index = np.asarray(index)
        ids, mask, _ = self.docs.batch(np.concatenate([index, index + len(self)]), pad_id)
        b = len(index)
        ids, mask = ids.view(2, b, -1).transpose(0, 1), mask.view(2, b, -1).transpose(0, 1)
        return ids.contiguous(), mask.contiguous(), torch.from_numpy(self.labels[index].astype(np.int64))

    def subset(self, index: np.ndarray) -> DualSplit:
        index = np.asarray(index, dtype=np.int64)
        return DualSplit(docs=self.docs.subset(np.concatenate([index, index + len(self)])), labels=self.labels[index])


class TokenEncoder(nn.Module):
    """ids (B, L) -> (B, L, D). A plain embedding; the pad row is zero and never trained."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embed(ids)


class PixelEncoder(nn.Module):
    """ids (B, L) of grey levels (or pad_id = levels, mask_id = levels + 1) -> (B, L, D).

    "linear": each pixel is its value scaled to [0, 1] plus a mask channel (1 where SPT hid the
    pixel, whose value then reads 0), projected by one linear layer — pixels stay ordered values,
    as in the S4 / Amos et al. pipelines. "embed": one learned vector per level, pixel-as-token.
    """

    def __init__(self, levels: int, d_model: int, how: str = "linear"):
        super().__init__()
        check_encoder(how)
        self.levels, self.how = levels, how
        if how == "linear":
            self.proj = nn.Linear(2, d_model)
        else:
            self.embed = nn.Embedding(levels + 2, d_model, padding_idx=levels)

    def forward(self, ids: Tensor) -> Tensor:
        if self.how == "embed":
            return self.embed(ids)
        hidden = ids >= self.levels  # pad or mask: no value to show
        value = ids.clamp(max=self.levels - 1).to(torch.float32) / (self.levels - 1)
        feats = torch.stack([value.masked_fill(hidden, 0.0), (ids == self.levels + 1).to(torch.float32)], dim=-1)
        return self.proj(feats.to(self.proj.weight.dtype))


def byte_ids(text: bytes | str, max_len: int) -> np.ndarray:
    """UTF-8 bytes of `text`, the first max_len, as uint8 ids (byte-level LRA Text/Retrieval)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(data[:max_len], dtype=np.uint8)


def ids_dataset(ids, labels, ids2=None):
    """-> datasets.Dataset(input_ids[, input_ids2], label) in the layout to_token_split reads.

    `ids`: a list of 1-D uint8 arrays, or one (N, L) uint8 array. Built through arrow directly
    (large lists: Path-X splits exceed 2**31 pixels), never through per-token Python ints.
    """
    import datasets
    import pyarrow as pa

    def column(rows) -> pa.Array:
        if isinstance(rows, np.ndarray) and rows.ndim == 2:
            flat, offsets = rows.reshape(-1), np.arange(len(rows) + 1, dtype=np.int64) * rows.shape[1]
        else:
            lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            flat = np.concatenate(list(rows)) if len(rows) else np.zeros(0, np.uint8)
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(flat, dtype=np.uint8)))

    cols = {"input_ids": column(ids)}
    if ids2 is not None:
        cols["input_ids2"] = column(ids2)
    cols["label"] = pa.array(np.asarray(labels, dtype=np.int64))
    return datasets.Dataset(pa.table(cols))


def file_identity(paths) -> list:
    """What a prepared cache of these files depends on: path, size, modification time."""
    return [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]


def seeded_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of size `limit` of range(n), in order; all when limit is None."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def label_fraction(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices (ascending) of the first round(fraction * n) examples (at least 1) of a permutation of
    range(n) seeded by `seed`. The permutation does not depend on the fraction, so subsets are nested:
    the examples of a smaller fraction are among those of every larger one (as in Amos et al.'s
    data-fraction study)."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"task.train_fraction={fraction!r} must be a number in (0, 1]")
    if fraction == 1:
        return np.arange(n)
    keep = max(1, round(fraction * n))
    return np.sort(np.random.default_rng([seed, 0x5EED]).permutation(n)[:keep])


def check_sizes(**sizes) -> None:
    """Each of task.<name> must be a positive integer, or None where None is allowed."""
    for key, value in sizes.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"task.{key}={value!r} must be a positive integer")


PIXEL_ENCODERS = ("linear", "embed")


def check_encoder(how) -> None:
    """task.encoder of a pixel task: which PixelEncoder turns its pixels into vectors."""
    if how not in PIXEL_ENCODERS:
        raise ValueError(f"task.encoder={how!r} is not one of {', '.join(PIXEL_ENCODERS)}")


def check_mask_ratio(value) -> None:
    """task.mask_ratio, the paper's SPT masking rate for the task: a fraction strictly in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"task.mask_ratio={value} must be in (0, 1)")


class Task:
    """Base class. Subclasses set `spec` and implement `build()` -> {split: datasets.Dataset with
    columns `input_ids` (list of int), `label` (int), and for dual-input tasks `input_ids2`}
    (`ids_dataset` builds one), plus `cache_key()` naming everything the prepared data depends on.
    A pixel task may set `encoder_kind` ("linear" | "embed") to choose its PixelEncoder."""

    spec: TaskSpec
    version = 1  # bump when preparation changes, so stale caches are rebuilt
    progress = True  # show bars while preparing data; the suite sets it from the run's `progress`

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
        if self.spec.kind == "pixels":
            return PixelEncoder(self.spec.pixel_levels, d_model, getattr(self, "encoder_kind", "linear"))
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
            for stale in root.parent.glob(f".tmp-{root.name}-*"):  # left by a preparation that was killed
                shutil.rmtree(stale, ignore_errors=True)
            problem = damage(root) if (root / "key.json").exists() else None
            if problem:  # never train on damaged data: keep it aside to inspect, prepare it again
                log.warning("data: %s is damaged (%s); moved aside as %s.corrupt, preparing it again",
                            root, problem, root.name)
                shutil.rmtree(root.with_name(root.name + ".corrupt"), ignore_errors=True)
                os.replace(root, root.with_name(root.name + ".corrupt"))
            if (root / "key.json").exists():
                log.info("data: cached %s", root)
            else:
                log.info("data: preparing %s", root)
                built = self.build()
                tmp = root.parent / f".tmp-{root.name}-{uuid.uuid4().hex[:8]}"
                datasets.DatasetDict(built).save_to_disk(str(tmp))
                sums = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
                (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
                # key.json last: its presence says the folder is complete
                (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
                if root.exists():  # a half-written dir from a crash before key.json: replace it
                    shutil.rmtree(root)
                os.replace(tmp, root)  # atomic: a reader sees all of it or none
            loaded = datasets.load_from_disk(str(root))
        # A two-tower (dual) head on one-document data, or the reverse, would fail deep in a batch.
        found = "input_ids2" in loaded["train"].column_names
        if found != self.spec.dual:
            raise DataError(f"task '{self.spec.name}' declares dual={self.spec.dual} but its data has "
                            f"{'two documents' if found else 'one document'} per example: make "
                            f"{type(self).__name__}.spec.dual match what build() returns")
        return {name: to_token_split(loaded[name]) for name in SPLITS}


CHECKSUMS = "checksums.json"  # sha256 of every file of a prepared cache, checked before each use


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def damage(root: Path) -> str | None:
    """Why a prepared cache folder cannot be trusted (a file missing, changed, truncated), or None.
    Arrow files carry no checksums of their own: a flipped byte would silently change tokens."""
    try:
        sums = json.loads((root / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS} missing or unreadable (prepared by a version without checksums, or damaged)"
    for name, digest in sums.items():
        path = root / name
        if not path.is_file():
            return f"{name} missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its checksum"
    return None


def to_token_split(ds) -> TokenSplit | DualSplit:
    """datasets.Dataset(input_ids: list[int], label: int) -> TokenSplit, without Python lists;
    with a second column input_ids2 -> DualSplit."""
    labels = ds.data.column("label").to_numpy().astype(np.int64)

    def flat(name: str) -> tuple[np.ndarray, np.ndarray]:
        col = ds.data.column(name).combine_chunks()
        offsets = col.offsets.to_numpy().astype(np.int64)
        # A sliced arrow array keeps its parent's buffers: cut the values to this slice.
        return col.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]], offsets - offsets[0]

    tokens, offsets = flat("input_ids")
    if "input_ids2" not in ds.column_names:
        return TokenSplit(tokens=tokens, offsets=offsets, labels=labels)
    tokens2, offsets2 = flat("input_ids2")
    docs = TokenSplit(tokens=np.concatenate([tokens, tokens2]),
                      offsets=np.concatenate([offsets, offsets2[1:] + offsets[-1]]),
                      labels=np.concatenate([labels, labels]))
    return DualSplit(docs=docs, labels=labels)
