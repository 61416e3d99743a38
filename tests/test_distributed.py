"""torchrun with 2 CPU processes (Gloo) against one process with the same global batch: the same
training, a resume from a checkpoint, and SPT's pretraining cache shared without a deadlock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recipes import experiment
from recipes.engine import loop as train
from recipes.engine.loop import lr_factor
from tests.conftest import ROOT, make_cfg, tiny
from tests.test_recipes import rows

pytestmark = pytest.mark.slow  # every test starts torchrun and its two ranks

# 590 = 19 * 31 + 1: a global batch of 31 splits 16 / 15 between 2 ranks, and each epoch ends with a
# batch of one example, which leaves rank 1 an empty share. Micro-batches of 8 accumulate gradients.
DATA = ["task.n_train=590", "finetune.batch_size=31"]
TOLERANCE = 1e-5  # on losses; dropout is 0, so only the order of float additions differs


def torchrun(args: list[str], cwd, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "run.py"), *args], cwd=cwd, env=env, text=True, **popen)


def kill_all(pid: int) -> None:
    """SIGKILL a process and its descendants (torchrun starts each rank in a session of its own)."""
    tasks = Path(f"/proc/{pid}/task")
    children = [int(c) for t in tasks.glob("*") for c in (t / "children").read_text().split()] if tasks.exists() else []
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass
    for child in children:
        kill_all(child)


def finish(proc: subprocess.Popen, timeout: int = 240) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a deadlock between ranks would hang here
        kill_all(proc.pid)
        raise
    assert proc.returncode == 0, err[-3000:]
    return err


def test_two_processes_train_like_one_and_resume(tmp_path, monkeypatch):
    args = [*tiny("supervised"), *DATA, "finetune.max_steps=20", "finetune.eval_every=10", "finetune.ckpt_every=2"]
    one = experiment.run(make_cfg(args, tmp_path), tmp_path / "one")

    # One process stops after its checkpoint at step 2; two processes resume it and train the other
    # 18 steps (a run may move to another number of processes: the configuration is the same).
    def stop_at_3(step, *rest):
        if step == 3:
            raise KeyboardInterrupt
        return lr_factor(step, *rest)

    monkeypatch.setattr(train, "lr_factor", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(make_cfg(args, tmp_path), tmp_path / "ddp")
    monkeypatch.undo()
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").exists()
    ddp = [*args, "compute.micro_batch_size=8", f"out_root={tmp_path}", "hydra.run.dir=ddp"]
    finish(torchrun(ddp, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    log = (tmp_path / "ddp" / "run.log").read_text()
    assert "finetune: resuming from" in log and "at step 2 of 20" in log
    assert "rank 0 of 2" in log and "rank 1 of 2" not in log  # rank 0 alone writes the run folder
    two = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert two["hardware"]["world_size"] == 2 and one["hardware"]["world_size"] == 1
    assert two["config_hash"] == one["config_hash"]  # the same configuration, computed another way
    # Evaluation covers each example exactly once, so accuracies are equal, not merely close.
    for key in ("val_acc", "test_acc", "best_step"):
        assert two["metrics"][key] == one["metrics"][key], key
    for key in ("val_loss", "test_loss"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=TOLERANCE), key
    ref, got = rows(tmp_path / "one" / "metrics.jsonl"), rows(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [10, 20]  # step 20: the batch of one
    for a, b in zip(ref, got):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=TOLERANCE)
        assert b["train_acc"] == a["train_acc"] and b["val_acc"] == a["val_acc"]


def test_two_processes_share_one_pretraining(tmp_path):
    """A sweep under torchrun: the first job pretrains (rank 0 holds the cache lock while both ranks
    train), the second finds it done. Every rank taking the lock would deadlock here."""
    args = [*tiny("spt"), "finetune.max_steps=4", "finetune.eval_every=2", "pretrain.max_steps=4",
            "pretrain.eval_every=2", f"out_root={tmp_path / 'runs'}"]
    finish(torchrun(["-m", *args, "finetune.lr=0.003,0.01", "hydra.callbacks.report.enabled=false"], tmp_path,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").rglob("result.json"))]
    assert len(results) == 2 and all(r["status"] == "ok" and r["hardware"]["world_size"] == 2 for r in results)
    assert sorted(r["pretrain"]["reused"] for r in results) == [False, True]
    assert len({r["pretrain"]["key"] for r in results}) == 1
