"""The command line: the documented command end to end, predictable run folders, multirun, and
one-line errors with a non-zero exit and no result.json."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli, tiny

QUICK = ["finetune.max_steps=4", "finetune.eval_every=2", "pretrain.max_steps=4",
         "pretrain.eval_every=2"]


def test_documented_command_writes_result_in_predictable_folder(tmp_path):
    proc = cli(["arch=transformer", "recipe=spt", "task=listops", *tiny("spt")[1:], "seed=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "runs/listops/transformer/spt/seed3/result.json").read_text())
    assert result["status"] == "ok" and result["seed"] == 3 and result["recipe"] == "spt"
    assert (tmp_path / "runs/listops/transformer/spt/seed3/metrics.jsonl").exists()


def test_multirun_grid_puts_every_run_in_one_sweep(tmp_path):
    proc = cli(["-m", "recipe=supervised,spt", "seed=0,1", *tiny("spt")[1:], *QUICK, "hydra.sweep.dir=sweep"],
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = sorted(str(p.relative_to(tmp_path / "sweep")) for p in (tmp_path / "sweep").rglob("result.json"))
    assert found == [f"listops/transformer/{r}/seed{s}/result.json" for r in ("spt", "supervised") for s in (0, 1)]


BAD = [
    (["arch=mamba9"], "unknown arch 'mamba9': choose one of"),
    (["task=lisstops"], "unknown task 'lisstops'"),
    (["recipe=spt,semi"], "unknown recipe 'semi'"),
    (["pretrain.mask_ratio=1.5"], "pretrain.mask_ratio=1.5 must be in (0, 1)"),
    (["pretrain.mask_ratio=null", "task.mask_ratio=0"], "task.mask_ratio=0 must be in (0, 1)"),
    (["arch.n_heads=3"], "d_model=32 is not divisible by n_heads=3"),
    (["arch.d_model=-8"], "d_model=-8 must be a positive integer"),
    (["task.n_train=0"], "task.n_train=0 must be a positive integer"),
    (["finetune.batch_size=0"], "finetune.batch_size=0 must be a positive integer"),
    (["finetune.lr=-1"], "finetune.lr=-1 must be > 0"),
    (["finetune.lr=fast"], "finetune.lr='fast' must be a number"),
    (["seed=-1"], "seed=-1 must be a non-negative integer"),
    (["pretrain.objective=ntp"], "objective=ntp needs a causal backbone"),
    (["arch.causal=true", "model.pooling=cls"], "pooling=cls with a causal backbone"),
    (["task.data_dir=/nonexistent/listops"], "task.data_dir=/nonexistent/listops is not a directory"),
    (["device=tpu"], "device='tpu' is not one of auto, cpu, cuda"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[b[0][0] for b in BAD])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    proc = cli([*tiny("spt")[1:], *args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("result.json"))


def test_malformed_official_file_names_file_and_line(tmp_path):
    data = tmp_path / "listops-1000"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"basic_{split}.tsv").write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n")
    (data / "basic_val.tsv").write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n( [MAX 2 ) oops ]\t1\n")
    proc = cli([*tiny("spt")[1:], f"task.data_dir={data}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: {data}/basic_val.tsv:3: unknown ListOps token 'oops'" in proc.stderr
    assert not list(tmp_path.rglob("result.json"))


def test_misspelt_option_fails_loudly(tmp_path):
    proc = cli([*tiny("spt")[1:], "arch.d_modle=64"], cwd=tmp_path)
    assert proc.returncode != 0 and "d_modle" in proc.stderr
    assert not list(tmp_path.rglob("result.json"))


def test_kill_9_then_same_command_resumes_to_the_same_result(tmp_path):
    """SIGKILL mid-training (no chance to clean up), rerun the identical command: it resumes from the
    last checkpoint and ends with exactly the uninterrupted run's metrics."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

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
