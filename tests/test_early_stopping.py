"""Early stopping: a stage stops after exactly `patience` validations without a better score, records
where and why, resumes to the same stop, and supervised_matched's budget under it."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from recipes import experiment
from recipes.engine.loop import stopping
from recipes.errors import ConfigError
from tests.conftest import TINY_PRETRAIN, make_cfg, tiny

# lr 1e-12: the weights do not move, so validation never improves on the first validation; the stage
# must stop at eval_every * (1 + patience), whatever the data.
FROZEN = ["finetune.lr=1e-12", "finetune.warmup_steps=0", "finetune.max_steps=60", "finetune.eval_every=3",
          "finetune.patience=4"]


@pytest.mark.slow  # ~3 s alone on one core: it generates its ListOps
def test_stops_after_exactly_patience_flat_validations(tmp_path):
    result = experiment.run(make_cfg(tiny("supervised", *FROZEN), tmp_path), tmp_path / "run")
    stop = result["stopping"]["finetune"]
    assert stop["best_step"] == 3 and stop["steps"] == 3 * (1 + 4) == result["steps"]["finetune"]
    assert stop["reason"] == "patience" and stop["converged"] and stop["cap"] == 60
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6, 9, 12, 15]


@pytest.mark.slow
def test_a_stage_killed_after_its_patience_ran_out_resumes_to_the_same_stop(tmp_path):
    args = tiny("supervised", *FROZEN)
    first = experiment.run(make_cfg(args, tmp_path), tmp_path / "run")
    # Killed between the last validation's checkpoint and the stage's done.json: only last.pt and the log remain.
    (tmp_path / "run" / "result.json").unlink()
    (tmp_path / "run" / "checkpoints" / "done.json").unlink()
    again = experiment.run(make_cfg(args, tmp_path), tmp_path / "run")
    assert again["stopping"] == first["stopping"] and again["metrics"] == first["metrics"]


@pytest.mark.slow
def test_resume_mid_stage_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    import recipes.stages
    from tests.test_recipes import Interrupt

    args = tiny("supervised", "finetune.max_steps=80", "finetune.eval_every=4", "finetune.patience=2",
                "finetune.ckpt_every=2")
    reference = experiment.run(make_cfg(args, tmp_path / "ref"), tmp_path / "ref" / "run")
    assert reference["stopping"]["finetune"]["reason"] == "patience"  # the test needs a stage that stops early
    stop = reference["stopping"]["finetune"]["steps"]
    monkeypatch.setattr(recipes.stages, "classify_loss", Interrupt(recipes.stages.classify_loss, stop - 3))
    with pytest.raises(KeyboardInterrupt):
        experiment.run(make_cfg(args, tmp_path / "int"), tmp_path / "int" / "run")
    monkeypatch.undo()
    resumed = experiment.run(make_cfg(args, tmp_path / "int"), tmp_path / "int" / "run")
    assert resumed["stopping"] == reference["stopping"] and resumed["metrics"] == reference["metrics"]


def test_stopping_record_closed_form():
    hp = OmegaConf.create({"patience": 3})
    rows = [{"step": s} for s in (10, 20, 30, 40, 50)]
    # Best at 20, three flat validations after it, stopped before the cap of 100.
    assert stopping(hp, rows, 20, 50, 100, 10, 25) == {
        "cap": 100, "steps": 50, "best_step": 20, "reason": "patience", "patience": 3, "eval_every": 10,
        "steps_per_epoch": 25, "epochs": 2.0, "converged": True}
    # At the cap with the best two validations ago (< patience): still improving, not converged.
    capped = stopping(hp, rows, 30, 50, 50, 10, 25)
    assert capped["reason"] == "cap" and not capped["converged"]
    # Without patience: converged unless the last validation was the best.
    assert not stopping(OmegaConf.create({"patience": None}), rows, 50, 50, 50, 10, 25)["converged"]
    assert stopping(OmegaConf.create({"patience": None}), rows, 40, 50, 50, 10, 25)["converged"]


def test_patience_is_checked_and_left_out_of_old_hashes(tmp_path):
    with pytest.raises(ConfigError, match=r"finetune.patience=0 must be a positive integer or null"):
        experiment.run(make_cfg(tiny("supervised", "finetune.patience=0"), tmp_path), tmp_path / "run")
    plain = experiment.resolve(make_cfg(tiny("spt"), tmp_path))
    hashed = experiment.hashed_config(plain, ("pretrain", "finetune"))
    assert "patience" not in hashed["finetune"] and "patience" not in hashed["pretrain"]
    plain["finetune"]["patience"] = 5
    assert experiment.hashed_config(plain, ("finetune",))["finetune"]["patience"] == 5


@pytest.mark.slow
def test_matched_control_gets_spt_pretraining_steps_before_patience_may_stop_it(tmp_path):
    # Frozen pretraining with patience 4, validated every 4 steps: it stops at step 4 * (1 + 4) = 20.
    pre = ["pretrain.lr=1e-12", "pretrain.warmup_steps=0", "pretrain.max_steps=60", "pretrain.eval_every=4",
           "pretrain.patience=4", "pretrain.mask_ratio=0.15"]
    # The matched control first: it finds no cached pretraining, so it runs it (and spt reuses it).
    matched_cfg = make_cfg(tiny("supervised_matched", *TINY_PRETRAIN, *FROZEN, *pre), tmp_path)
    matched = experiment.run(matched_cfg, tmp_path / "m")
    spt = experiment.run(make_cfg(tiny("spt", *FROZEN, *pre), tmp_path), tmp_path / "spt")
    assert spt["pretrain"]["reused"]
    assert spt["stopping"]["pretrain"]["steps"] == 20 == spt["steps"]["pretrain"]
    assert matched["matched"] == {"pretrain": 20, "finetune": 60, "total": 80}
    stop = matched["stopping"]["finetune"]
    # Frozen weights: alone, patience would stop it at step 15 (as supervised); matched, it may not stop
    # before step 20, so it stops at the first validation from there on: step 21.
    assert stop["cap"] == 80 and stop["steps"] == 21 and stop["reason"] == "patience"
    assert spt["stopping"]["finetune"]["steps"] == 15


def test_min_steps_keeps_patience_from_ending_a_stage_early(tmp_path):
    # Frozen weights: patience 4 alone stops at step 15 (validations every 3); min_steps=20 moves the stop to
    # the first validation from step 20 on, where patience has long run out: step 21.
    result = experiment.run(make_cfg(tiny("supervised", *FROZEN, "finetune.min_steps=20"), tmp_path), tmp_path / "r")
    assert result["stopping"]["finetune"]["steps"] == 21 and result["stopping"]["finetune"]["reason"] == "patience"
    with pytest.raises(ConfigError, match=r"finetune.min_steps=-1 must be a positive integer or null"):
        experiment.run(make_cfg(tiny("supervised", "finetune.min_steps=-1"), tmp_path), tmp_path / "bad")
