"""Runs that say what they are: one header line per run, one line per stage, and no bars with
progress=false (the data preparation's included)."""

from __future__ import annotations

import logging

import pytest

from recipes import experiment
from tests.conftest import make_cfg

SHORT = ["task.n_train=64", "task.n_val=32", "task.n_test=32", "task.max_length=24", "arch.d_model=16",
         "arch.n_layers=1", "pretrain.max_steps=3", "finetune.max_steps=2", "pretrain.eval_every=3",
         "finetune.eval_every=2", "pretrain.batch_size=16", "finetune.lr=0.002"]


@pytest.mark.slow
def test_the_log_names_the_run_its_size_implementation_and_stages(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    overrides = ["arch=mamba", "recipe=spt", "seed=3", "progress=false", *SHORT]
    result = experiment.run(make_cfg(overrides, tmp_path), tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records]
    (header,) = [line for line in lines if line.startswith("run: ")]
    params = result["params"]
    encoder = params["total"] - params["backbone"] - (16 * 10 + 10)  # the rest of the classifier: its 10-class head
    assert header == (f"run: task listops | arch mamba | recipe spt | seed 3 | params {params['backbone']:,} backbone "
                      f"+ {encoder:,} encoder | device cpu | precision fp32 | impl {result['impl']} | "
                      f"folder {tmp_path / 'run'}")
    assert "stage pretrain: 3 steps (max_steps), batch size 16, lr 0.001, warmup 3, validation every 3 steps" in lines
    assert "stage finetune: 2 steps (max_steps), batch size 32, lr 0.002, warmup 2, validation every 2 steps" in lines
    assert capsys.readouterr().err == ""  # progress=false: no bar, not even the data generator's


def test_progress_true_shows_the_bars_on_a_terminal_and_never_in_a_file(tmp_path, capsys, monkeypatch):
    """The other half of the check above: the bars exist, so their absence means something; and output
    redirected to a file gets none (their carriage returns would glue them to the log lines)."""
    import sys

    overrides = ["arch=cnn", "recipe=supervised", "progress=true", *SHORT]
    experiment.run(make_cfg(overrides, tmp_path), tmp_path / "file")  # pytest's capture is no terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    experiment.run(make_cfg(overrides, tmp_path), tmp_path / "terminal")
    err = capsys.readouterr().err
    assert "finetune" in err and "%|" in err
