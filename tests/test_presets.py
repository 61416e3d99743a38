"""Every experiment preset composes and runs a couple of steps at its real model size and lengths."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes import experiment
from tests.conftest import make_cfg

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "conf" / "experiment").glob("*.yaml"))
# Only the amount of work shrinks: few examples, one step per stage. Model, lengths and optimiser
# settings stay as the preset has them.
SHRINK = ["task.n_train=4", "task.n_val=2", "task.n_test=2", "progress=false",
          "pretrain.max_steps=1", "pretrain.batch_size=2", "pretrain.eval_batch_size=2",
          "finetune.max_steps=1", "finetune.batch_size=2", "finetune.eval_batch_size=2"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_a_step(tmp_path, preset):
    cfg = make_cfg([f"experiment={preset}", "recipe=spt", *SHRINK], tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    assert result["status"] == "ok"
    assert result["steps"] == {"pretrain": 1, "finetune": 1}
    assert result["params"]["total"] > 1_000_000  # the preset's model, not the mini one
