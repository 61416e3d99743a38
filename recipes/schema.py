"""The types every layer shares: the run context a recipe gets, and `result.json`, what a run leaves.

A leaf: it imports nothing from this package and no torch (pyproject.toml's import contracts), so that
recipes, the orchestrator and reports/ all use it, and reports stay a function of result files alone.

result.json is written in one way, `combine` of the pieces each part of a run contributes (the
orchestrator's `head`, a stage's `stage_part`, the probes', a recipe's own), and read in one way,
`read_result`, which also reads files written before a field existed (schema 0: no "schema" field).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing torch or omegaconf here would load them for reports
    import torch
    from omegaconf import DictConfig

# 1: the first results written through this module (earlier files read as 0; their fields are the same,
# some are missing). Bump it when a field changes meaning, and teach `read_result` the older one.
VERSION = 1
# The training stages a result reports on, in the order reports list them.
STAGES = ("finetune", "pretrain")


def digest(obj) -> str:
    """16 hex digits of the sha256 of `obj` as sorted JSON: config and group hashes, cache keys. Values
    JSON cannot hold are written as str()."""
    return checksum(obj, default=str)[:16]


def checksum(obj, default=None) -> str:
    """The full sha256 of `obj`'s canonical JSON text: the "sha256" field of every JSON file
    recipes/engine/checkpoint.py writes, result.json included, which `read_result` checks."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode()).hexdigest()


@dataclass
class Context:
    """What a recipe's run(ctx) gets from the orchestrator (recipes/experiment.py)."""

    cfg: DictConfig
    task: Any  # tasks.base.Task
    splits: dict
    run_dir: Path
    cache_dir: Path
    device: torch.device
    seed: int
    identity: dict  # stored in every checkpoint of this run; a mismatch refuses to resume
    progress: bool
    compute: Any  # recipes.engine.compute.Compute: precision, compile, micro-batches, loading
    full_train: object = None  # the whole train split when task.train_fraction < 1 (splits["train"] is the subset)
    # Logs the run's header line once a recipe has built its body (announce(body)); the orchestrator sets it.
    announce: Callable[[Any], None] = lambda body: None


@dataclass(frozen=True)
class Result:
    """result.json, field by field: what `combine` accepts and `read_result` returns. Sections (dicts)
    read as {} when absent or not a dict; other fields as None when absent."""

    schema: int = 0  # VERSION when written; 0: written before this module
    # What ran: identity and hashes (recipes/experiment.py `head`).
    task: str | None = None
    arch: str | None = None
    recipe: str | None = None
    seed: int | None = None
    config_hash: str | None = None  # the resolved config that defines the run, seed included
    group_hash: str | None = None  # the same without the seeds: the runs pooled as one cell
    status: str | None = None  # "ok" | "failed"
    reason: str | None = None  # why a run failed; None when ok
    device: str | None = None
    hardware: dict | None = None  # device, name, world_size, precision (None before it was recorded)
    code_version: str | None = None
    versions: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    created: str | None = None
    # What it measured (recipes/stages.py finetune, recipes/spt.py): val/test acc and loss, best_step,
    # and for SPT pretrain_val_loss, pretrain_val_acc, pretrain_{first,last}_train_loss, pretrain_best_step.
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # total, backbone
    impl: str | None = None
    # Per stage (STAGES), from `stage_part`: optimizer steps taken, where and why it stopped
    # (recipes/engine/loop.py `stopping`), batches skipped by on_nan=skip_batch, and seconds.
    steps: dict = field(default_factory=dict)
    stopping: dict = field(default_factory=dict)
    skipped_steps: dict = field(default_factory=dict)
    # Seconds: per stage, "probes", "overhead" (all else, over all attempts) and "total", their sum.
    # Files written before "overhead" existed held only this process's time in "total" (see compute_s).
    wall_time_s: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)  # SPT: its cache key, folder, reused, objective, seed, ...
    init_from: dict | None = None  # fine-tuned from a shared body: its weights' sha256 and pretraining key
    matched: dict | None = None  # supervised_matched: the spt steps it matches
    probes: dict | None = None  # locality probes: settings, stages (recipes/extras/probes.py)
    baselines: dict = field(default_factory=dict)  # majority, order-free and unigram floors (recipes/extras)
    diverged: dict | None = None  # a failed run's stage, step and what was non-finite

    def stopped(self, stage: str) -> dict:
        """The `stopping` record of one stage ({} when it did not run or predates the field)."""
        found = self.stopping.get(stage)
        return found if isinstance(found, dict) else {}

    @property
    def compute_s(self) -> float | None:
        """Seconds spent on this result: `total` (stages over all attempts, a reused pretraining at what it
        cost when it ran, probes, overhead). Files written before `overhead` existed held this process's
        time in `total`: their stages' seconds instead."""
        wall = self.wall_time_s
        if "overhead" in wall:
            return wall.get("total")
        stages = [v for k, v in wall.items() if k not in ("total", "probes") and isinstance(v, (int, float))]
        return sum(stages) or None

    @property
    def hardware_label(self) -> str | None:
        """'cuda NVIDIA H100 80GB HBM3 x4 bf16' (files before `hardware` was recorded: the device type)."""
        hw = self.hardware
        if not isinstance(hw, dict):
            return self.device
        return f"{hw.get('device')} {hw.get('name')} x{hw.get('world_size')} {hw.get('precision')}"


FIELDS = tuple(f.name for f in fields(Result))
SECTIONS = tuple(f.name for f in fields(Result) if f.default_factory is dict)


class Damaged(ValueError):
    """A result file that is not a JSON object or does not match its checksum: never counted."""


def read_result(source: str | Path | dict) -> Result:
    """A result.json (a path, or the object already parsed) as a Result. OSError when unreadable, a
    ValueError (Damaged when it parses) when torn, edited or not an object. Fields this code does not know (from a
    newer version) are ignored; fields an older file lacks read as absent."""
    if isinstance(source, dict):
        obj = dict(source)
    else:
        obj = json.loads(Path(source).read_text())  # a ValueError when torn: not JSON
    if not isinstance(obj, dict):
        raise Damaged(f"expected a JSON object, found {type(obj).__name__}")
    stored = obj.pop("sha256", None)  # absent in files written before checksums
    if stored is not None and stored != checksum(obj):
        raise Damaged("does not match its checksum (damaged or edited); rerun the same command to recompute it")
    known = {k: v for k, v in obj.items() if k in FIELDS}
    for name in SECTIONS:
        if not isinstance(known.get(name), dict):
            known.pop(name, None)
    if not isinstance(known.get("schema"), int):
        known["schema"] = 0
    return Result(**known)


def stage_part(name: str, summary: dict) -> dict:
    """The per-stage sections of one training stage, from fit's summary (recipes/engine/loop.py)."""
    return {"steps": {name: summary["steps"]},  # taken: the cap, or fewer when patience stopped the stage
            "stopping": {name: summary.get("stopping")},  # None: cached before stages recorded it
            "skipped_steps": {name: summary["skipped_steps"]},
            "wall_time_s": {name: summary["wall_time_s"]}}


def combine(*parts: dict) -> dict:
    """One result from the pieces of a run: sections (dicts) merged key by key, other fields set once.
    A field this schema does not define, or one set twice, is a bug, and raises."""
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if key not in FIELDS:
                raise KeyError(f"result.json has no field {key!r} (recipes/schema.py Result)")
            if key in SECTIONS and isinstance(value, dict):
                clash = set(out.get(key) or {}) & set(value)
                if clash:
                    raise KeyError(f"result.json {key}.{sorted(clash)[0]} given twice")
                out[key] = {**(out.get(key) or {}), **value}
            elif key in out:
                raise KeyError(f"result.json {key} given twice")
            else:
                out[key] = value
    return out
