"""Sweeps through Hydra's submitit launcher: jobs in processes of their own (submitit_local runs what
a SLURM cluster would, on this machine), one pretraining shared by concurrent jobs, failed jobs
reported by the submitting process, and the example SLURM launcher config."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, cli, tiny
from tests.test_cli import QUICK


@pytest.mark.slow
def test_submitit_local_sweep_shares_one_pretraining_and_reports_failed_jobs(tmp_path):
    # Both good jobs need the same pretraining (pretrain.seed pinned) and start at the same time.
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            "+hydra.callbacks.report.bootstrap=200", "seed=0,1,-1", *tiny("spt")[1:], *QUICK, "pretrain.seed=0"]
    proc = cli(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # The failing job ran in another process: the submitting one still lists it and exits 1.
    assert "1 job(s) of the sweep did not succeed" in proc.stderr
    assert "seed=-1 must be a non-negative integer" in proc.stderr
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").rglob("result.json"))]
    assert [r["seed"] for r in results] == [0, 1] and all(r["status"] == "ok" for r in results)
    assert sorted(r["pretrain"]["reused"] for r in results) == [False, True]  # computed once, then waited for
    assert len({r["pretrain"]["key"] for r in results}) == 1
    assert (tmp_path / "runs" / "report" / "report.md").exists()  # built by the submitting process
    assert not (tmp_path / ".sptbench_failed").exists()


def test_example_slurm_launcher_composes():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1


def test_cluster_launcher_without_its_plugin_is_one_line(monkeypatch):
    import importlib.util

    from run import check_launcher

    assert check_launcher(["-m", "hydra/launcher=slurm", "seed=0,1"]) is None  # installed here (dev extra)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert check_launcher(["-m", "hydra/launcher=slurm"]) == (
        'hydra/launcher=slurm needs Hydra\'s submitit launcher: pip install -e ".[cluster]" '
        "(or pip install hydra-submitit-launcher)")
    assert check_launcher(["-m", "hydra/launcher=basic"]) is None
