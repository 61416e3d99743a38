"""Diagnostic tasks: small generated problems that isolate one skill, to help explain *why* SPT
helps (or does not) on the LRA. Each is cheap enough for a CPU grid in minutes.

- `Proximity` probes **local** structure: the label depends only on whether two marker tokens
  sit close together, everything else is noise. Masked-token pretraining on such data learns
  little about the label (markers are rare), so a gain from SPT here would come from better
  optimisation of the backbone rather than from task knowledge.
- `LongMatch` probes **long-range** matching: two spans far apart, equal or not. Masked-token
  prediction can learn to copy one span into the other only by attending across the whole
  sequence, so SPT should help backbones that otherwise fail to carry information that far.

Both share the byte-free vocabulary below; sequences have a fixed length (`length`), balanced
labels, and are deterministic in `data_seed`.
"""

from __future__ import annotations

import numpy as np

from tasks.base import Task, TaskSpec, check_mask_ratio, check_sizes, ids_dataset

PAD, MASK, OPEN, CLOSE, MARKER = 0, 1, 2, 3, 4
FIRST_SYMBOL = 5  # noise / span symbols are FIRST_SYMBOL .. FIRST_SYMBOL + n_symbols - 1


class _Generated(Task):
    """Shared options and split logic: each split drawn on its own seed."""

    def __init__(self, *, name: str, length: int, n_symbols: int, n_train: int, n_val: int, n_test: int,
                 data_seed: int, mask_ratio: float):
        check_sizes(length=length, n_symbols=n_symbols, n_train=n_train, n_val=n_val, n_test=n_test)
        check_mask_ratio(mask_ratio)
        if FIRST_SYMBOL + n_symbols > 256:
            raise ValueError(f"task.n_symbols={n_symbols} must be <= {256 - FIRST_SYMBOL}")
        self.length, self.n_symbols, self.data_seed = length, n_symbols, data_seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.spec = TaskSpec(name=name, kind="tokens", vocab_size=FIRST_SYMBOL + n_symbols, max_len=length,
                             n_classes=2, pad_id=PAD, mask_id=MASK, spt_mask_ratio=mask_ratio)

    def params(self) -> dict:
        raise NotImplementedError

    def cache_key(self) -> dict:
        return {"length": self.length, "n_symbols": self.n_symbols, **self.sizes, "data_seed": self.data_seed,
                **self.params()}

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def build(self) -> dict:
        out = {}
        for i, split in enumerate(("train", "val", "test")):
            ids, labels = self.sample(np.random.default_rng([self.data_seed, i]), self.sizes[split])
            out[split] = ids_dataset(ids.astype(np.uint8), labels)
        return out


class Proximity(_Generated):
    """Label 1 when the two MARKER tokens are at most `near` positions apart, else 0.

    Sequence: `length` random noise symbols with exactly two markers. Positive: the gap
    between them is drawn from 1..near; negative: from near+1..far. Counts of every token type
    are identical across classes, so only the local arrangement carries the label.
    """

    def __init__(self, *, name: str = "proximity", length: int = 128, n_symbols: int = 8, near: int = 3,
                 far: int = 12, n_train: int = 2000, n_val: int = 500, n_test: int = 500, data_seed: int = 0,
                 mask_ratio: float = 0.15):
        if not 1 <= near < far < length:
            raise ValueError(f"task.near={near}, task.far={far} must satisfy 1 <= near < far < length={length}")
        super().__init__(name=name, length=length, n_symbols=n_symbols, n_train=n_train, n_val=n_val,
                         n_test=n_test, data_seed=data_seed, mask_ratio=mask_ratio)
        self.near, self.far = near, far

    def params(self) -> dict:
        return {"near": self.near, "far": self.far}

    def sample(self, rng, n):
        ids = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + self.n_symbols, size=(n, self.length))
        labels = rng.permutation(np.arange(n) % 2)
        gaps = np.where(labels == 1, rng.integers(1, self.near + 1, n), rng.integers(self.near + 1, self.far + 1, n))
        starts = rng.integers(0, self.length - gaps)
        rows = np.arange(n)
        ids[rows, starts] = MARKER
        ids[rows, starts + gaps] = MARKER
        return ids, labels


class LongMatch(_Generated):
    """Label 1 when two spans far apart hold the same symbols, else 0.

    Sequence: `[ a1..ak ]` near the start and `[ b1..bk ]` near the end (OPEN/CLOSE delimit the
    spans), noise elsewhere; the spans are at least length/2 apart. Positive: b = a. Negative: b
    is a copy of a with `n_diff` (1..k) positions changed, so no single token and no span
    statistic gives the answer: the model must compare the two spans symbol by symbol.
    """

    def __init__(self, *, name: str = "longmatch", length: int = 128, n_symbols: int = 8, span: int = 4,
                 n_train: int = 2000, n_val: int = 500, n_test: int = 500, data_seed: int = 0,
                 mask_ratio: float = 0.15):
        if not 1 <= span <= (length // 4) - 2:
            raise ValueError(f"task.span={span} must be in 1..length/4-2 = {(length // 4) - 2}")
        super().__init__(name=name, length=length, n_symbols=n_symbols, n_train=n_train, n_val=n_val,
                         n_test=n_test, data_seed=data_seed, mask_ratio=mask_ratio)
        self.span = span

    def params(self) -> dict:
        return {"span": self.span}

    def sample(self, rng, n):
        k, quarter = self.span, self.length // 4
        ids = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + self.n_symbols, size=(n, self.length))
        labels = rng.permutation(np.arange(n) % 2)
        a = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + self.n_symbols, size=(n, k))
        b = a.copy()
        for i in np.flatnonzero(labels == 0):  # change 1..k positions, each to a different symbol
            where = rng.choice(k, size=rng.integers(1, k + 1), replace=False)
            b[i, where] = FIRST_SYMBOL + (b[i, where] - FIRST_SYMBOL + rng.integers(1, self.n_symbols,
                                                                                     len(where))) % self.n_symbols
        first = rng.integers(0, quarter - k - 1, n)                       # span 1 in the first quarter
        second = rng.integers(3 * quarter, self.length - k - 1, n)        # span 2 in the last quarter
        for i in range(n):
            for start, span in ((first[i], a[i]), (second[i], b[i])):
                ids[i, start] = OPEN
                ids[i, start + 1 : start + 1 + k] = span
                ids[i, start + 1 + k] = CLOSE
        return ids, labels
