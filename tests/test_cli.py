"""The command line: the documented command end to end, predictable run folders, multirun, and
one-line errors with a non-zero exit and no result.json — one subprocess per way the command ends.
The messages themselves are checked in-process, case by case, in tests/test_bad_inputs.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, cli, tiny

QUICK = ["finetune.max_steps=4", "finetune.eval_every=2", "pretrain.max_steps=4",
         "pretrain.eval_every=2"]


EXCLUDED = ("progress=",)  # keys left out of the folder name (conf/config.yaml, override_dirname)


def folder(overrides: list[str]) -> str:
    """The overrides part of a run folder: Hydra's override_dirname (sorted key=value joined by ','),
    shortened by run.folder_name when long."""
    from run import folder_name

    return folder_name(",".join(sorted(o for o in overrides if not o.startswith(EXCLUDED))))


def test_folder_names_stay_short_and_unique():
    from run import folder_name

    assert folder_name("finetune.lr=0.001") == "finetune.lr=0.001"
    long_a, long_b = ",".join(f"k{i}={i}" for i in range(60)), ",".join(f"k{i}={i + 1}" for i in range(60))
    assert len(folder_name(long_a)) <= 120 and folder_name(long_a) != folder_name(long_b)
    assert "/" not in folder_name("experiment=a/b")


@pytest.mark.slow
def test_documented_command_writes_result_in_predictable_folder(tmp_path):
    overrides = tiny("spt")[1:]
    proc = cli(["arch=transformer", "recipe=spt", "task=listops", *overrides, "seed=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "runs/listops/transformer/spt" / folder(overrides) / "seed3"
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and result["seed"] == 3 and result["recipe"] == "spt"
    assert (run / "metrics.jsonl").exists()


@pytest.mark.slow
def test_multirun_grid_uses_the_same_folders_and_reports_failed_jobs(tmp_path):
    overrides = [*tiny("spt")[1:], *QUICK]
    proc = cli(["-m", "recipe=supervised,spt", "seed=0,1", *overrides], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = sorted(str(p.relative_to(tmp_path / "runs")) for p in (tmp_path / "runs").rglob("result.json"))
    assert found == [f"listops/transformer/{r}/{folder(overrides)}/seed{s}/result.json"
                     for r in ("spt", "supervised") for s in (0, 1)]
    # A job that cannot run does not stop the others, and the sweep's exit status says so.
    bad = cli(["-m", "recipe=spt", "pretrain.objective=auto,ntp", *overrides], cwd=tmp_path)
    assert bad.returncode == 1
    assert "1 job(s) of the sweep did not succeed" in bad.stderr and "objective=ntp needs a causal" in bad.stderr


# One case per way a mistake ends the command. What each mistake's line says is checked in-process,
# case by case, in tests/test_bad_inputs.py (the same validation code, without a Python start per
# case); a name refused before Hydra starts is checked on the command line there too
# (test_unwritable_output_folder_on_the_command_line).
@pytest.mark.slow
def test_bad_configuration_is_one_clear_line(tmp_path):
    """A value its schema refuses (recipes/config_schema.py): exit 2, one `error:` line, no traceback, and
    no run folder (refused before Hydra makes one)."""
    proc = cli([*tiny("spt")[1:], "pretrain.mask_ratio=1.5"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pretrain.mask_ratio=1.5 must be a number in (0, 1)" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_malformed_official_file_names_file_and_line(tmp_path):
    """A mistake in the data, found while loading it: exit 2, the file and line in the `error:` line."""
    data = tmp_path / "listops-1000"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"basic_{split}.tsv").write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n")
    (data / "basic_val.tsv").write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n( [MAX 2 ) oops ]\t1\n")
    proc = cli([*tiny("spt")[1:], f"task.data_dir={data}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: {data}/basic_val.tsv:3: unknown ListOps token 'oops'" in proc.stderr
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.slow
def test_misspelt_option_fails_loudly(tmp_path):
    proc = cli([*tiny("spt")[1:], "arch.d_modle=64"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown key arch.d_modle: did you mean arch.d_model?")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fault, status, line", [
    ("finetune:3:INT", 130, "interrupted: run the same command again to resume from the last checkpoint"),
    ("finetune:3:NAN", 1, "failed: finetune: non-finite loss (nan) at step 2; "),  # steps count from 0
], ids=["ctrl-c", "diverged"])
def test_interrupted_or_diverged_run_ends_with_its_status_and_one_line(tmp_path, fault, status, line):
    """Ctrl-C (exit 130, nothing recorded) and a non-finite loss (exit 1, recorded as failed)."""
    from tests.test_faults import faulted

    args = [*tiny("supervised"), "finetune.max_steps=6", "finetune.eval_every=6", "hydra.run.dir=run"]
    proc = faulted(fault, [str(ROOT / "run.py"), *args], tmp_path)
    assert proc.returncode == status, proc.stderr[-2000:]
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith(line.split(":")[0] + ":")]
    assert len(said) == 1 and said[0].startswith(line), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    result = tmp_path / "run" / "result.json"
    assert (json.loads(result.read_text())["status"] == "failed") if status == 1 else not result.exists()


@pytest.mark.slow
def test_kill_9_then_same_command_resumes_to_the_same_result(tmp_path):
    """SIGKILL mid-training (no chance to clean up), rerun the identical command: it resumes from the
    last checkpoint and ends with exactly the uninterrupted run's metrics."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [*tiny("supervised"), "finetune.max_steps=150", "finetune.eval_every=50", "finetune.ckpt_every=5"]
    reference = cli([*args, "hydra.run.dir=ref"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, "hydra.run.dir=killed"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "result.json").exists(), "the run finished before it could be killed"

    resumed = cli([*args, "hydra.run.dir=killed"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "finetune: resuming from" in (tmp_path / "killed" / "run.log").read_text()
    ref = json.loads((tmp_path / "ref" / "result.json").read_text())
    got = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert got["metrics"] == ref["metrics"] and got["config_hash"] == ref["config_hash"]
    from tests.test_recipes import rows

    assert rows(tmp_path / "killed" / "metrics.jsonl") == rows(tmp_path / "ref" / "metrics.jsonl")
