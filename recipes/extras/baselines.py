"""Reference floors computed from a run's data alone, recorded in result.json under `baselines`.

A sequence model has shown that it uses order only when it beats a classifier that cannot see it:
- `majority`: always the most frequent class of the (label-fraction) train split;
- `order_free`: multinomial logistic regression on token counts — one feature per vocabulary id
  (grey level for pixel tasks), both documents' counts side by side for two-document tasks —
  standardized on train, fit on train for each L2 strength of a small grid, the strength chosen
  on val, scored on test. Everything a bag of tokens can tell is below this line;
- `unigram`: the floor of SPT's masked-token accuracy: always predict the train inputs' most
  frequent token; its accuracy is that token's share of the real tokens of the val inputs (masks
  are drawn uniformly over real positions, so this is the expected accuracy of that guess).

Cached under `<cache_dir>/baselines/<digest>.json`, keyed by the data's key, the label fraction and
its seed: every run on the same data reuses one fit (seconds even at LRA scale).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recipes.engine import checkpoint
from recipes.schema import digest
from tasks.base import DualSplit, TokenSplit

log = logging.getLogger(__name__)
VERSION = 1  # bump when a baseline's definition changes, so cached ones are recomputed
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # penalty on the mean loss: lam * ||W||^2 / 2
MODEL = "multinomial logistic regression on token counts (L2 chosen on val)"


def counts(split: TokenSplit | DualSplit, width: int) -> np.ndarray:
    """-> (N, width) float32 token counts per example; (N, 2 * width) for two-document splits."""
    if isinstance(split, DualSplit):
        both = counts(split.docs, width)
        return np.concatenate([both[: len(split)], both[len(split):]], axis=1)
    rows = np.repeat(np.arange(len(split), dtype=np.int64), split.lengths())
    flat = np.bincount(rows * width + split.tokens.astype(np.int64), minlength=len(split) * width)
    return flat.reshape(len(split), width).astype(np.float32)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int = 200) -> torch.Tensor:
    """Full-batch L-BFGS on mean cross-entropy + l2 * ||W||^2 / 2 (bias unpenalized). x (N, F)
    standardized, y (N,). -> weights (F + 1, C), the last row the bias. Convex: any solver that
    converges reaches the same optimum, which the tests check against scikit-learn's."""
    xt = torch.from_numpy(np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)).double()
    yt = torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(xt.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w, yt) + 0.5 * l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def accuracy(w: torch.Tensor, x: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    xt = torch.from_numpy(np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)).double()
    return float(((xt @ w).argmax(1).numpy() == y).mean())


def order_free(splits: dict, width: int, n_classes: int) -> dict:
    feats = {name: counts(splits[name], width) for name in ("train", "val", "test")}
    mean, std = feats["train"].mean(0), feats["train"].std(0)
    std[std == 0] = 1.0  # a token absent from train carries no information; leave its column at 0
    feats = {k: (v - mean) / std for k, v in feats.items()}
    labels = {k: splits[k].labels for k in feats}
    best = None
    for l2 in L2_GRID:
        w = fit_logistic(feats["train"], labels["train"], n_classes, l2)
        val = accuracy(w, feats["val"], labels["val"])
        if best is None or val > best[1]:  # a tie keeps the weaker penalty, the first tried
            best = (l2, val, w)
    l2, val, w = best
    return {"model": MODEL, "l2": l2, "train_acc": accuracy(w, feats["train"], labels["train"]), "val_acc": val,
            "test_acc": accuracy(w, feats["test"], labels["test"])}


def compute(splits: dict, spec) -> dict:
    """The floors of one run's data: splits as the recipes see them (train after the label fraction)."""
    width = spec.pixel_levels if spec.kind == "pixels" else spec.vocab_size
    train_labels = splits["train"].labels
    top = int(np.bincount(train_labels, minlength=spec.n_classes).argmax())
    docs = splits["train"].documents()
    token = int(np.bincount(docs.tokens.astype(np.int64), minlength=width).argmax())
    val_tokens = splits["val"].documents().tokens
    return {
        "n": {k: len(splits[k]) for k in ("train", "val", "test")},
        "majority": {"class": top, "val_acc": float((splits["val"].labels == top).mean()),
                     "test_acc": float((splits["test"].labels == top).mean())},
        "order_free": order_free(splits, width, spec.n_classes),
        "unigram": {"token": token, "val_acc": float((val_tokens == token).mean()) if len(val_tokens) else None},
    }


def cached(splits: dict, spec, data_key: dict, cache_dir: Path) -> dict:
    """compute(), read from or written to the cache (atomically) under a digest of what it depends on."""
    depends_on = {"version": VERSION, "data": data_key, "n": {k: len(splits[k]) for k in splits},
                  # the label subset itself, not only its size
                  "train": hashlib.sha256(np.ascontiguousarray(splits["train"].labels).tobytes()
                                          + splits["train"].documents().offsets.tobytes()).hexdigest()[:16]}
    key = digest(depends_on)
    path = Path(cache_dir) / "baselines" / f"{key}.json"
    found = checkpoint.read_intact(path)
    if found is not None and found.get("depends_on") == json.loads(json.dumps(depends_on, default=str)):
        return found["baselines"]
    result = compute(splits, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(path, {"depends_on": depends_on, "baselines": result})
    of = result["order_free"]
    unigram = result["unigram"]["val_acc"]
    log.info("baselines: majority %.4f, order-free (token counts) %.4f test, unigram masked-token floor %s",
             result["majority"]["test_acc"], of["test_acc"], "n/a" if unigram is None else f"{unigram:.4f}")
    return result
