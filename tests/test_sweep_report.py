"""The sweep-end hook: `run.py -m` builds the report in the sweep folder, lists failed jobs in it,
can be turned off, and a report that cannot be built neither loses results nor hides failures."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli, tiny

QUICK = ["finetune.max_steps=2", "pretrain.max_steps=2", "task.n_train=100", "task.n_val=50", "task.n_test=50"]


@pytest.mark.slow
def test_sweep_end_builds_the_report_and_keeps_failures_visible(tmp_path):
    args = [*tiny("spt")[1:], *QUICK]
    proc = cli(["-m", "recipe=supervised,spt", "seed=0,1", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = tmp_path / "runs" / "report"
    assert "report: runs/report/report.md" in proc.stderr
    md = (report / "report.md").read_text()
    results = sorted(tmp_path.glob("runs/listops/transformer/*/*/seed*/result.json"))
    accs = {(r["recipe"], r["seed"]): r["metrics"]["test_acc"] for r in (json.loads(p.read_text()) for p in results)}
    assert len(accs) == 4 and "4 runs: 4 counted" in md
    for recipe in ("spt", "supervised"):
        mean = (accs[(recipe, 0)] + accs[(recipe, 1)]) / 2
        assert f"| transformer | {recipe} |" in md and f"| 2 | 0, 1 | {100 * mean:.2f} |" in md
    assert (report / "report.html").exists() and (report / "results.csv").read_text().count("\n") == 5
    # A study reads test numbers once, in its report: a job's log lines name validation only.
    logged = proc.stdout + proc.stderr
    assert logged.count("; test in result.json, for the sweep's report") == 4 and "test_acc" not in logged
    (tmp_path / "own").mkdir()
    single = cli(["recipe=spt", *args], cwd=tmp_path / "own")  # a run of one's own shows both
    assert single.returncode == 0 and "result: spt test_acc 0." in single.stdout + single.stderr

    # A job that cannot run: the sweep exits 1, names it, and its report lists it with the reason.
    other = tmp_path / "other_report"
    bad = cli(["-m", "recipe=spt", "pretrain.objective=ntp", *args, f"hydra.callbacks.report.out={other}"],
              cwd=tmp_path)
    assert bad.returncode == 1
    assert "1 job(s) of the sweep did not succeed" in bad.stderr
    listed = (other / "report.md").read_text().split("## Runs not counted")[1]
    assert "| unfinished | pretrain.objective=ntp needs a causal backbone" in listed
    assert "5 runs: 4 counted" in (other / "report.md").read_text()

    # A report that cannot be written: results stay, the sweep's exit status says so.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = cli(["-m", "recipe=supervised", "seed=0", *args, f"hydra.callbacks.report.out={blocker}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "the sweep finished but its report could not be built" in proc.stderr
    assert "job(s) of the sweep did not succeed" not in proc.stderr
    assert "already complete" in proc.stdout + proc.stderr and "test_acc" not in proc.stdout + proc.stderr
    assert sorted(tmp_path.glob("runs/listops/transformer/*/*/seed*/result.json")) == results


def test_report_hook_is_configured_and_can_be_turned_off(tmp_path):
    """The documented switches compose, and a disabled hook writes nothing (in-process: no training)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        on = compose("config", overrides=[f"out_root={tmp_path}"], return_hydra_config=True)
        off = compose("config", overrides=[f"out_root={tmp_path}", "hydra.callbacks.report.enabled=false"],
                      return_hydra_config=True)
    hook = instantiate(on.hydra.callbacks.report)
    assert hook.enabled and hook.out == f"{tmp_path}/report"
    hook = instantiate(off.hydra.callbacks.report)
    (tmp_path / "x" / "result.json").parent.mkdir()
    (tmp_path / "x" / "result.json").write_text("{}")
    hook.on_multirun_end(off)
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_an_unexpected_error_in_one_job_does_not_stop_the_sweep(tmp_path, monkeypatch):
    """Hydra would abort a sweep on a job's unexpected exception (and skip the report); run.py records
    it and goes on, so every job runs and the sweep still ends with exit status 1."""
    import sys

    import run
    from recipes import experiment

    seeds = []

    def boom(cfg, run_dir, **_):
        seeds.append(cfg.seed)
        raise RuntimeError(f"boom {cfg.seed}")

    monkeypatch.setattr(experiment, "run", boom)
    monkeypatch.setattr(run, "FAILED", [])
    from tests.conftest import ROOT

    # --config-path: imported as a module (not run as a script), run.py's relative config path is not found
    argv = ["run.py", "--config-path", str(ROOT / "conf"), "-m", "recipe=supervised", "seed=0,1",
            f"out_root={tmp_path}", "progress=false", f"hydra.callbacks.report.out={tmp_path}/report"]
    monkeypatch.setattr(sys, "argv", argv)
    run.main()
    assert seeds == [0, 1]
    assert len(run.FAILED) == 2 and all("RuntimeError: boom" in f for f in run.FAILED)
    listed = (tmp_path / "report" / "report.md").read_text().split("## Runs not counted")[1]  # the hook still ran
    assert listed.count("| unfinished | job failed: RuntimeError: boom") == 2
