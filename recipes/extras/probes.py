"""Locality probes: how far each position of a backbone looks, at init, after SPT's pretraining and
after fine-tuning (issue: "Why SPT helps"; the 2026 follow-up to Amos et al. argues SPT's gain comes
from attention learning proximity-biased patterns that label supervision alone does not find).

Two probes on a fixed, seeded subset of validation documents (the same for every run of a task with
the same `probes.seed`), real positions only:

- attention (backbones whose attention modules offer the hook `keep_weights` / `weights`, e.g.
  archs/transformer.py's Attention): per layer and head, over all real query positions i,
  the mean of sum_j a_ij |i - j| (attention distance), of -sum_j a_ij log a_ij (entropy, nats), and
  of the mass with |i - j| <= window (local share). Padded keys get no attention (the backbone masks
  them); padded queries are not counted.
- influence (every backbone, plugins included; autograd only): x = the backbone's input (the task
  encoder's output), h = its output. For `positions` sampled real positions t of each document,
  J(t, s) = ||dh_t / dx_s||_F for every real s; the profile at offset k = t - s is the mean of
  J(t, t - k) over the sampled t for which t - k is real (k > 0: t depends on an earlier input).
  Summaries: mean distance sum_k |k| p(k) / sum_k p(k), the same without k = 0 (`_offdiag`: the
  residual stream puts an identity at k = 0 in every residual backbone), and the half-mass distance
  (smallest d with sum_{|k|<=d} p(k) >= half the total).
  ||J||_F^2 is the sum over output directions u of ||u^T J||^2: with `directions: null` the D unit
  vectors (exact, one backward pass per direction); with an integer R, R seeded Gaussian vectors
  scaled by 1/sqrt(R) (an unbiased estimate of ||J||_F^2, R backward passes: for wide models).

Probes run in eval mode (no dropout) inside torch.random.fork_rng, so they never change what a run
computes; results go to result.json["probes"] and, for SPT, the init and pretrained probes are cached
next to the pretrained body (a reused pretraining reuses its probes).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from recipes.engine import checkpoint, distributed
from tasks.base import seeded_subset

DEFAULTS = {"enabled": True, "n_examples": 32, "positions": 4, "directions": 8, "window": 8, "seed": 0}
CHUNK = 8  # documents per backward pass of the influence probe (times `positions` copies)


def settings(cfg: DictConfig) -> dict | None:
    """The probe settings of a run (None when probes.enabled=false), checked before the run started
    (recipes/config_schema.py)."""
    s = {**DEFAULTS, **OmegaConf.to_container(cfg.get("probes") or OmegaConf.create({}), resolve=True)}
    if not s.pop("enabled"):
        return None
    return {**s, "split": "val"}


def documents(val, n: int, seed: int):
    """The probed documents: a seeded subset of the validation split's documents (each document of a
    two-document task on its own), as the TokenSplit of those documents sorted by length."""
    docs = val.documents()
    index = np.sort(seeded_subset(len(docs), n, seed))
    return docs.subset(index[np.argsort(docs.lengths()[index], kind="stable")])


def attention_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules offering the attention hook, in forward order (one per layer)."""
    return [m for m in backbone.modules() if hasattr(m, "keep_weights") and hasattr(m, "weights")]


def attention_stats(weights: Tensor, length: int, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """weights (H, L, L) of one document's real positions -> per-head sums over its queries of
    distance, entropy and local share, each (H,). A head at a time in float64: at 16K positions one
    (L, L) is 2 GB."""
    pos = torch.arange(length, device=weights.device, dtype=torch.float64)
    dist = (pos[:, None] - pos[None, :]).abs()  # (L, L)
    out = []
    for w in weights:
        w = w.double()
        out.append(torch.stack([(w * dist).sum(), -(w * w.clamp_min(1e-30).log()).sum(), (w * (dist <= window)).sum()]))
    distance, entropy, local = torch.stack(out).T
    return distance, entropy, local


@torch.no_grad()
def attention_probe(body: nn.Module, docs, pad_id: int, window: int, device) -> dict | None:
    """Per layer and head: mean attention distance, entropy and local share over real queries."""
    layers = attention_modules(body.backbone)
    if not layers:
        return None
    sums: list[Tensor | None] = [None] * len(layers)  # per layer: (3, H) sums over queries
    current = {"length": 0}
    n_queries = 0

    def summarise(i: int):
        # Right after each layer's forward, so that one (H, L, L) is held at a time, not one per layer.
        def hook(module, args, output):
            n = current["length"]
            found = torch.stack(attention_stats(module.weights[0, :, :n, :n], n, window)).cpu()
            sums[i] = found if sums[i] is None else sums[i] + found
            module.weights = None
        return hook

    handles = [m.register_forward_hook(summarise(i)) for i, m in enumerate(layers)]
    try:
        for m in layers:
            m.keep_weights = True
        for i in range(len(docs)):  # one document at a time: (H, L, L) stays small
            ids, mask, _ = docs.batch([i], pad_id)
            current["length"] = int(mask.sum())
            body.backbone(body.encoder(ids.to(device)), mask.to(device))
            n_queries += current["length"]
    finally:
        for h in handles:
            h.remove()
        for m in layers:
            m.keep_weights, m.weights = False, None
    mean = [(layer / n_queries).tolist() for layer in sums]
    return {"distance": [layer[0] for layer in mean], "entropy": [layer[1] for layer in mean],
            "local_share": [layer[2] for layer in mean], "window": window, "n_queries": n_queries}


def sample_positions(lengths: np.ndarray, positions: int, generator: np.random.Generator) -> list[np.ndarray]:
    """`positions` distinct real positions per document (all of them when it is shorter), sorted."""
    return [np.sort(generator.choice(n, size=min(positions, n), replace=False)) for n in lengths]


def directions_for(d_model: int, count: int | None, seed: int) -> Tensor:
    """(R, D) output directions u with sum_u ||u^T J||^2 = ||J||_F^2: exactly (the unit vectors) or in
    expectation (R Gaussian vectors / sqrt(R))."""
    if count is None:
        return torch.eye(d_model)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, d_model, generator=g) / math.sqrt(count)


def influence_probe(body: nn.Module, docs, pad_id: int, positions: int, directions: int | None, seed: int,
                    device, chunk: int = CHUNK) -> dict:
    """The influence profile over offsets k = t - s and its summaries (module docstring)."""
    lengths = docs.lengths()
    where = sample_positions(lengths, positions, np.random.default_rng(seed))
    top = int(lengths.max()) - 1
    total = torch.zeros(2 * top + 1, dtype=torch.float64)  # index k + top
    count = torch.zeros(2 * top + 1, dtype=torch.float64)
    n_positions = 0
    for start in range(0, len(docs), chunk):
        rows = list(range(start, min(start + chunk, len(docs))))
        ids, mask, _ = docs.batch(rows, pad_id)
        # One copy of the document per sampled position, so that one backward pass gives each
        # position's gradient on its own copy.
        copy_of = [r for r in rows for _ in where[r]]
        t = torch.tensor(np.concatenate([where[r] for r in rows]), dtype=torch.long)
        pick = torch.tensor([rows.index(r) for r in copy_of])
        ids, mask = ids[pick].to(device), mask[pick].to(device)
        with torch.no_grad():
            x0 = body.encoder(ids)
        x = x0.detach().requires_grad_(True)
        h = body.backbone(x, mask)  # (N, L, D)
        h_t = h[torch.arange(len(t)), t.to(device)]  # (N, D)
        sq = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64, device=device)  # ||J(t, s)||_F^2, (N, L)
        dirs = directions_for(h.shape[-1], directions, seed).to(device, h.dtype)
        for j, u in enumerate(dirs):
            (g,) = torch.autograd.grad((h_t @ u).sum(), x, retain_graph=j < len(dirs) - 1)
            sq += g.double().pow(2).sum(-1)
        norm = sq.sqrt().cpu()
        real = mask.cpu()
        offsets = t[:, None] - torch.arange(x.shape[1])[None, :] + top  # (N, L): index of k = t - s
        total.index_add_(0, offsets[real], norm[real])
        count.index_add_(0, offsets[real], torch.ones_like(norm[real]))
        n_positions += len(t)
    profile = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    return {"offsets": list(range(-top, top + 1)), "profile": profile.tolist(), **summaries(profile, top),
            "n_positions": n_positions}


def summaries(profile: Tensor, top: int) -> dict:
    """Mean distance, mean distance without k = 0, half-mass distance of a profile over k = -top..top."""
    k = torch.arange(-top, top + 1, dtype=torch.float64).abs()
    mass = profile.double()
    off = mass * (k > 0)
    by_distance = torch.zeros(top + 1, dtype=torch.float64).index_add_(0, k.long(), mass)  # mass at |k| = d
    half = int(torch.searchsorted(by_distance.cumsum(0), 0.5 * mass.sum()).clamp_max(top)) if mass.sum() > 0 else 0
    return {"mean_distance": float((k * mass).sum() / mass.sum()) if mass.sum() > 0 else 0.0,
            "mean_distance_offdiag": float((k * off).sum() / off.sum()) if off.sum() > 0 else 0.0,
            "half_mass_distance": half}


def measure(body: nn.Module, val, spec, s: dict | None, device) -> dict | None:
    """Both probes of `body` on the run's probe documents (None when probes are off). Leaves the body
    in the mode it found, and every random number generator as it was."""
    if s is None:
        return None
    docs = documents(val, s["n_examples"], s["seed"])
    training = body.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        body.to(device).eval()
        try:
            out = {"influence": influence_probe(body, docs, spec.pad_id, s["positions"], s["directions"], s["seed"],
                                                device)}
            attention = attention_probe(body, docs, spec.pad_id, s["window"], device)
        finally:
            body.train(training)
            body.zero_grad(set_to_none=True)
    if attention is not None:
        out["attention"] = attention
    return out


class Recorder:
    """Collects one run's probes, stage by stage, with their settings and cost."""

    def __init__(self, ctx):
        self.s = settings(ctx.cfg)
        self.ctx, self.stages, self.seconds = ctx, {}, 0.0

    def take(self, stage: str, body: nn.Module) -> None:
        if self.s is None:
            return
        started = time.perf_counter()
        self.stages[stage] = measure(body, self.ctx.splits["val"], self.ctx.task.spec, self.s, self.ctx.device)
        self.seconds += time.perf_counter() - started

    def cached(self, path: Path) -> bool:
        """Reuse the stages stored at `path` (an SPT pretraining's init and pretrained probes) when
        they were taken with these settings."""
        stored = checkpoint.read_intact(path) if self.s is not None else None
        if stored and stored.get("settings") == self.s:
            self.stages.update(stored["stages"])
            return True
        return False

    def store(self, path: Path, stages: tuple[str, ...]) -> None:
        if self.s is not None and distributed.is_main():
            checkpoint.write_json(path, {"settings": self.s, "stages": {k: self.stages[k] for k in stages}})

    def part(self) -> dict:
        """What the probes add to a result (recipes/schema.py combine): `probes`, and their seconds in
        `wall_time_s` with the other timings. Nothing when probes are off."""
        if self.s is None:
            return {}
        return {"probes": {"settings": self.s, "stages": self.stages},
                "wall_time_s": {"probes": round(self.seconds, 3)}}


def load_body(body: nn.Module, path: Path, identity: dict) -> None:
    """The body's weights from a stage's best.pt (a classifier's or a token predictor's `body.*`)."""
    weights = checkpoint.load(path, identity)["model"]
    checkpoint.load_weights(body, {k[len("body."):]: v for k, v in weights.items() if k.startswith("body.")}, path)


def backfill(cfg: DictConfig, task, splits: dict, run_dir: Path, result: dict, identity: dict, device) -> dict:
    """The probes of a complete run, from its checkpoints: the init body rebuilt from its seed as the
    recipe built it (torch.manual_seed, then build_body), the pretrained body from the cached
    pretraining's best.pt, the fine-tuned one from the run's own. The same numbers as probing during
    the run (tests/test_probes.py checks it). -> the result with them."""
    from types import SimpleNamespace

    from recipes.model import build_body

    rec = Recorder(SimpleNamespace(cfg=cfg, splits=splits, task=task, device=device))
    pre = result.get("pretrain")
    with torch.random.fork_rng():
        torch.manual_seed(int(pre["seed"]) if pre else int(cfg.seed))
        body = build_body(cfg, task)
    if pre:
        folder = Path(cfg.cache_dir) / "pretrain" / pre["key"]
        if not rec.cached(folder / "probes.json"):
            rec.take("init", body)
            load_body(body, folder / "best.pt", {"pretrain": pre["key"]})
            rec.take("pretrained", body)
            rec.store(folder / "probes.json", ("init", "pretrained"))
    elif result.get("init_from"):  # fine-tuned from a shared body (recipes/extras/export.py): that body
        from recipes.extras import export

        export.load_body(body, cfg.finetune.init_from, identity["config"]["finetune"]["init_from"], task.spec)
        rec.take("pretrained", body)
    else:
        rec.take("init", body)
    load_body(body, run_dir / "checkpoints" / "best.pt", identity)
    rec.take("finetuned", body)
    # These probes replace any the result held (taken with other settings), in a file of any schema version.
    part = rec.part()
    return {**result, "probes": {**part["probes"], "added_from_checkpoints": True},
            "wall_time_s": {**(result.get("wall_time_s") or {}), **part["wall_time_s"]}}
