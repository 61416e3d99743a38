"""Shared helpers: tiny configurations that train in seconds, in-process and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent

# A ListOps small enough to learn in seconds on 2 cores, and a 1-layer Transformer.
TINY = [
    "task.n_train=600", "task.n_val=200", "task.n_test=200", "task.min_length=4", "task.max_length=24",
    "arch.d_model=32", "arch.n_layers=1", "arch.n_heads=2",
    "finetune.epochs=8", "finetune.batch_size=32", "finetune.lr=0.003",
    "finetune.warmup_steps=10", "progress=false",
]
TINY_PRETRAIN = ["pretrain.epochs=6", "pretrain.lr=0.003", "pretrain.warmup_steps=10",
                 "pretrain.mask_ratio=0.15"]


def tiny(recipe: str = "spt", *extra: str) -> list[str]:
    return [f"recipe={recipe}", *TINY, *(TINY_PRETRAIN if recipe == "spt" else []), *extra]


def make_cfg(overrides: list[str], tmp_path: Path):
    """Compose conf/ as run.py would, with out_root under tmp_path."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"out_root={tmp_path}", *overrides])


def cli(args: list[str], cwd: Path, timeout: int = 300, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """python run.py ARGS, run from `cwd` (so relative outputs land there), with the folders `path`
    (e.g. a plugin's package) on PYTHONPATH after the repo."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (ROOT, *path))), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tmp_run(tmp_path):
    return tmp_path / "run"


def nan_loss(at_call: int):
    """recipes.stages.classify_loss, except that its loss is NaN at call `at_call` (1-based)."""
    import recipes.stages

    real, calls = recipes.stages.classify_loss, []

    def loss_fn(model, ids, mask, labels):
        loss, c, n = real(model, ids, mask, labels)
        calls.append(1)
        return (loss * float("nan") if len(calls) == at_call else loss), c, n
    return loss_fn
