"""End-to-end recipes in-process: learning, the pretraining cache, resume, failures, refusals."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import recipes.stages
from recipes import experiment
from recipes.errors import CheckpointError, ConfigError, TrainingDiverged
from tests.conftest import make_cfg, nan_loss, tiny

QUICK = ["finetune.max_steps=6", "finetune.eval_every=3"]
QUICK_SPT = [*QUICK, "pretrain.max_steps=6", "pretrain.eval_every=3"]


def majority_rate(cfg, tmp_path) -> float:
    labels = experiment.build_task(cfg.task).splits(tmp_path / "_cache")["test"].labels
    return np.bincount(labels).max() / len(labels)


def rows(path):
    """metrics.jsonl without wall-clock fields, which legitimately differ between runs."""
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_spt_end_to_end_learns(tmp_path):
    cfg = make_cfg(tiny("spt"), tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    m = result["metrics"]
    assert result["status"] == "ok"
    assert m["pretrain_last_train_loss"] < 0.9 * m["pretrain_first_train_loss"]  # pretraining learns
    assert m["test_acc"] > majority_rate(cfg, tmp_path) + 0.05  # fine-tuning beats the majority class
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk.pop("sha256") and on_disk == json.loads(json.dumps(result))
    for key in ("task", "arch", "recipe", "seed", "params", "steps", "wall_time_s", "device", "config_hash",
                "group_hash", "code_version", "impl", "pretrain"):
        assert key in on_disk, key
    assert on_disk["steps"]["pretrain"] > 0 and on_disk["steps"]["finetune"] > 0
    stages = {r["stage"] for r in rows(tmp_path / "run" / "metrics.jsonl")}
    assert stages == {"pretrain", "finetune"}


@pytest.mark.slow
def test_causal_spt_uses_next_token_prediction_and_learns(tmp_path):
    cfg = make_cfg(tiny("spt", "arch.causal=true"), tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    m = result["metrics"]
    assert result["pretrain"]["objective"] == "ntp"
    assert m["pretrain_last_train_loss"] < 0.9 * m["pretrain_first_train_loss"]
    assert m["test_acc"] > majority_rate(cfg, tmp_path) + 0.05


@pytest.mark.slow
def test_supervised_learns(tmp_path):
    cfg = make_cfg(tiny("supervised"), tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    assert result["metrics"]["test_acc"] > majority_rate(cfg, tmp_path) + 0.05
    assert "pretrain" not in result["steps"]


@pytest.mark.slow
def test_pretraining_is_cached_by_what_it_depends_on(tmp_path, caplog):
    first = experiment.run(make_cfg(tiny("spt", *QUICK_SPT), tmp_path), tmp_path / "a")
    with caplog.at_level(logging.INFO):
        second = experiment.run(make_cfg(tiny("spt", *QUICK_SPT, "finetune.lr=0.01"), tmp_path), tmp_path / "b")
    assert not first["pretrain"]["reused"] and second["pretrain"]["reused"]
    assert second["pretrain"]["key"] == first["pretrain"]["key"]
    assert "reusing cached checkpoint" in caplog.text
    third = experiment.run(make_cfg(tiny("spt", *QUICK_SPT, "pretrain.lr=0.01"), tmp_path), tmp_path / "c")
    fourth = experiment.run(make_cfg(tiny("spt", *QUICK_SPT, "seed=1"), tmp_path), tmp_path / "d")
    fifth = experiment.run(make_cfg(tiny("spt", *QUICK_SPT, "task.data_seed=1"), tmp_path), tmp_path / "e")
    keys = [r["pretrain"]["key"] for r in (first, third, fourth, fifth)]
    assert len(set(keys)) == 4  # pretraining settings, seed and data each change the key
    assert first["config_hash"] != second["config_hash"] and first["group_hash"] == fourth["group_hash"]
    # The documented way to share one pretraining across fine-tuning seeds...
    shared = experiment.run(make_cfg(tiny("spt", *QUICK_SPT, "seed=1", "pretrain.seed=0"), tmp_path), tmp_path / "f")
    assert shared["pretrain"]["key"] == first["pretrain"]["key"] and shared["pretrain"]["reused"]
    # ...is a different design from per-seed pretraining, so reports never pool the two.
    assert shared["group_hash"] != fourth["group_hash"]
    # Checkpoint cadence cannot change the weights, so it does not change the key.
    cadence = experiment.run(make_cfg(tiny("spt", *QUICK_SPT, "pretrain.ckpt_every=2"), tmp_path), tmp_path / "g")
    assert cadence["pretrain"]["key"] == first["pretrain"]["key"]


class Interrupt:
    """Wraps a loss function; raises KeyboardInterrupt (a Ctrl-C) on its n-th call."""

    def __init__(self, fn, n):
        self.fn, self.n, self.calls = fn, n, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


# Fine-tuning resumes with length-bucketed batches: their order must come back the same mid-epoch.
@pytest.mark.slow
@pytest.mark.parametrize("stage,bucket", [("pretrain", 0), ("finetune", 3)])
def test_resume_after_interruption_is_bitwise_identical(tmp_path, monkeypatch, caplog, stage, bucket):
    extra = ["pretrain.ckpt_every=4", "finetune.ckpt_every=4", "pretrain.epochs=2",
             "finetune.epochs=2", f"finetune.bucket_pool={bucket}"]
    reference = experiment.run(make_cfg(tiny("spt", *extra), tmp_path / "ref"), tmp_path / "ref" / "run")

    out = tmp_path / "int"
    module, name = (recipes.stages, "token_loss") if stage == "pretrain" else (recipes.stages, "classify_loss")
    monkeypatch.setattr(module, name, Interrupt(getattr(module, name), 30))
    with pytest.raises(KeyboardInterrupt):
        experiment.run(make_cfg(tiny("spt", *extra), out), out / "run")
    assert not (out / "run" / "result.json").exists()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        resumed = experiment.run(make_cfg(tiny("spt", *extra), out), out / "run")
    assert f"{stage}: resuming from" in caplog.text
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["pretrain"] == {**reference["pretrain"], "dir": resumed["pretrain"]["dir"]}  # reused=False too
    assert rows(out / "run" / "metrics.jsonl") == rows(tmp_path / "ref" / "run" / "metrics.jsonl")
    best = torch.load(out / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    ref_best = torch.load(tmp_path / "ref" / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], ref_best[k]) for k in ref_best)


def test_non_finite_loss_is_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes.stages, "classify_loss", nan_loss(3))
    with pytest.raises(TrainingDiverged):
        experiment.run(make_cfg(tiny("supervised"), tmp_path), tmp_path / "run")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and "non-finite loss" in result["reason"] and "step 2" in result["reason"]
    assert "metrics" not in result


@pytest.mark.slow
def test_complete_run_is_not_redone_and_other_configs_are_refused(tmp_path):
    args = tiny("supervised", *QUICK)
    first = experiment.run(make_cfg(args, tmp_path), tmp_path / "run")
    stamp = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    assert experiment.run(make_cfg(args, tmp_path), tmp_path / "run") == json.loads(json.dumps(first))
    with pytest.raises(ConfigError, match=r"another configuration \(arch.d_model: 32 -> 16"):
        experiment.run(make_cfg([*args, "arch.d_model=16"], tmp_path), tmp_path / "run")
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp  # the good result is untouched


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_refused(tmp_path, monkeypatch):
    args = tiny("supervised", "finetune.ckpt_every=2")
    monkeypatch.setattr(recipes.stages, "classify_loss", Interrupt(recipes.stages.classify_loss, 6))
    with pytest.raises(KeyboardInterrupt):
        experiment.run(make_cfg(args, tmp_path), tmp_path / "run")
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"different configuration \(.*n_layers: 1 -> 2"):
        experiment.run(make_cfg([*args, "arch.n_layers=2"], tmp_path), tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()


def test_checkpoints_refuse_arbitrary_pickles(tmp_path):
    import pickle

    from recipes.engine import checkpoint

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "last.pt"
    path.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "x": Boom()}, protocol=2))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        checkpoint.load(path, identity={})
    path.write_bytes(b"\x80\x02truncated")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        checkpoint.load(path, identity={})
