"""Every experiment preset composes and runs a couple of steps at its real model size and lengths."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes import config_schema, experiment
from tests.conftest import make_cfg
from tests.fixtures import lra

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "conf" / "experiment").glob("*.yaml"))
# Only the amount of work shrinks: few examples, one step per stage. Model, lengths and optimiser
# settings stay as the preset has them.
SHRINK = ["task.n_train=4", "task.n_val=2", "task.n_test=2", "progress=false",
          "pretrain.max_steps=1", "pretrain.batch_size=2", "pretrain.eval_batch_size=2",
          "finetune.max_steps=1", "finetune.batch_size=2", "finetune.eval_batch_size=2",
          "probes.n_examples=1", "probes.positions=1", "probes.directions=1"]
# File-based tasks read tiny fixtures in their official format; the rest generate their data.
DATA = {
    "lra_text": lambda tmp: lra.write_imdb(tmp, n_per_class=2),
    "lra_retrieval": lambda tmp: lra.write_aan(tmp, n=4),
    "lra_image": lambda tmp: lra.write_cifar(tmp, n_per_batch=2)[0],
}
# Paper-scale presets run the paper's model, not the mini one (the LRA Image model of Amos et al.
# is small); other presets (e.g. mini grids) only have to run.
MIN_PARAMS = {"lra_image": 100_000, "lra_retrieval": 500_000, "lra_pathfinder": 300_000}
# Full attention over Path-X's 16,384 pixels needs a large GPU: there, the test composes the
# preset and builds its task and model without running a step.
HEAVY = {"lra_pathx"}
# Measured at 3-25 s each (paper-scale models, long sequences): the slow tier (tests/conftest.py).
SLOW = {"lra_listops", "lra_text", "lra_image", "lra_pathfinder"}


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p
                                    for p in PRESETS if p not in HEAVY])
def test_preset_runs_a_step(tmp_path, preset):
    data = [f"task.data_dir={DATA[preset](tmp_path)}"] if preset in DATA else []
    cfg = make_cfg([f"experiment={preset}", "recipe=spt", *SHRINK, *data], tmp_path)
    result = experiment.run(cfg, tmp_path / "run")
    assert result["status"] == "ok"
    assert result["steps"] == {"pretrain": 1, "finetune": 1}
    if preset.startswith("lra_"):  # paper scale: the preset's model, not the mini one
        assert result["params"]["total"] > MIN_PARAMS.get(preset, 1_000_000)


@pytest.mark.parametrize("preset", sorted(HEAVY))
def test_heavy_preset_composes_and_builds(tmp_path, preset):
    from recipes.model import build_body

    cfg = make_cfg([f"experiment={preset}", "recipe=spt"], tmp_path)
    config_schema.check(cfg, ("pretrain", "finetune"))
    task = experiment.build_task(cfg.task)
    assert task.spec.max_len == 16384 and task.spec.kind == "pixels"
    body = build_body(cfg, task)
    assert sum(p.numel() for p in body.parameters()) > 300_000
