"""One run folder per run, errors said once and in the right order, honest time accounting: a folder
locked while a process runs in it, no folder left by a refused command, the data path's own error
before a folder clash, one `error:` line with exit status 2 for every user mistake (misspelt keys and
words where numbers go included), hints that name the backbone's own option, and `wall_time_s`
summed over a run's attempts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import recipes.stages
from recipes import experiment
from recipes.errors import ConfigError, DataError
from tests.conftest import cli, make_cfg

SHORT = ["recipe=supervised", "arch=cnn", "task.n_train=64", "task.n_val=32", "task.n_test=32",
         "task.max_length=24", "arch.d_model=16", "arch.n_layers=1", "finetune.max_steps=4",
         "finetune.eval_every=2", "finetune.warmup_steps=1", "progress=false"]


def hydra_made(folder):
    """A folder as Hydra leaves it before main() runs: .hydra/ and an empty run.log."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("{}\n")
    (folder / "run.log").write_text("")
    return folder


@pytest.mark.slow
def test_a_second_process_in_the_same_folder_is_refused_in_one_line(tmp_path):
    run_dir = hydra_made(tmp_path / "runs" / "a" / "seed0")
    hold = (f"import time\nfrom filelock import FileLock\nlock = FileLock({str(run_dir / '.lock')!r})\n"
            "lock.acquire()\nprint('held', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(experiment.FolderBusy) as refused:
            experiment.run(make_cfg(SHORT, tmp_path / "runs"), run_dir)
        assert "in use by another process" in str(refused.value) and "\n" not in str(refused.value)
        assert (run_dir / ".hydra").is_dir()  # the running one's folder is never removed
    finally:
        holder.kill()
        holder.wait()
    result = experiment.run(make_cfg(SHORT, tmp_path / "runs"), run_dir)  # the lock died with its holder
    assert result["status"] == "ok"


def test_a_refused_command_leaves_no_folder_and_a_used_folder_stays(tmp_path):
    out_root = tmp_path / "runs"
    run_dir = hydra_made(out_root / "listops" / "cnn" / "supervised" / "finetune.lr=-1" / "seed0")
    with pytest.raises(ConfigError, match="finetune.lr=-1"):
        experiment.run(make_cfg([*SHORT, "finetune.lr=-1"], out_root), run_dir)
    assert not (out_root / "listops").exists() and out_root.is_dir()  # every level it alone made: gone

    # A folder that holds an earlier attempt's log is not this command's to delete.
    used = hydra_made(out_root / "used")
    (used / "run.log").write_text("[2026-01-01 00:00:00,000][recipes.engine.loop][INFO] - finetune step 2/4: ...\n")
    with pytest.raises(ConfigError):
        experiment.run(make_cfg([*SHORT, "finetune.lr=-1"], out_root), used)
    assert (used / "run.log").read_text().startswith("[2026")


@pytest.mark.slow
def test_a_missing_data_folder_is_said_before_a_clash_with_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    experiment.run(make_cfg(SHORT, tmp_path), run_dir)
    with pytest.raises(DataError, match="task.data_dir=/nonexistent is not a directory"):
        experiment.run(make_cfg([*SHORT, "task.data_dir=/nonexistent"], tmp_path), run_dir)
    with pytest.raises(ConfigError) as clash:  # a real clash suggests another folder before deletion
        experiment.run(make_cfg([*SHORT, "seed=1"], tmp_path), run_dir)
    message = str(clash.value)
    assert message.index("out_root=") < message.index("delete") and "hydra.run.dir=" in message
    assert (run_dir / "result.json").is_file()


@pytest.mark.slow
def test_user_mistakes_are_one_line_with_status_2_and_no_folder(tmp_path):
    for args, expected in ((["finetune.lrr=0.1"], "error: unknown key finetune.lrr: did you mean finetune.lr?"),
                           (["arch=mamba", "arch.d_model=big"], "error: arch.d_model='big' must be a number"),
                           (["finetune.lr=-1"], "error: finetune.lr=-1 must be a number > 0")):
        out = cli([*args, "out_root=runs"], tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(expected)
        assert "ERROR" not in out.stdout  # said once: not also as a log line on the console
        assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()], args  # no run folder left


@pytest.mark.parametrize("args, expected", [
    (["compute.micro_batches=2"], "unknown key compute.micro_batches: did you mean compute.micro_batch_size? (a key "
                                  "that is not in the config is added with +compute.micro_batches=...)"),
    (["-m", "seed=0,1", "arch=s4d,mamba", "arch.d_state=x"], "arch.d_state='x' must be a number (its default is 64)"),
    (["task.n_train=many"], "task.n_train='many' must be a number (its default is 5000)"),
    (["+new_key=1"], None), (["arch.d_model=${arch.n_layers}"], None), (["arch=s4d", "seed=0,1"], None),
])
def test_overrides_are_checked_before_hydra_makes_a_folder(args, expected):
    import run

    assert run.check_overrides(args) == expected


def test_hints_name_the_backbones_own_options():
    import run
    from recipes.stages import objective_for

    with pytest.raises(ConfigError, match=r"set arch.bidirectional=false, or pretrain.objective=mlm"):
        objective_for("ntp", False, {"bidirectional": True, "d_model": 64})
    with pytest.raises(ConfigError, match=r"set arch.causal=true"):
        objective_for("ntp", False, {"causal": False})
    with pytest.raises(ConfigError, match=r"set a causal backbone"):
        objective_for("ntp", False, {"d_model": 64})
    assert "hydra.searchpath=" in run.check_group_choices(["arch=gru"])


CAUSAL_CLAIMS = '''
import torch
from torch import nn


class Claims(nn.Module):
    """Says it is causal; {how}."""
    causal = True

    def __init__(self, d_model: int, n_layers: int, dropout: float):
        super().__init__()
        self.mix = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        if mask is not None:
            x = x * mask.unsqueeze(-1)
        context = x.cumsum(1) if {truly} else x.sum(1, keepdim=True).expand_as(x)
        return self.mix(context) + x
'''


@pytest.mark.parametrize("truly", [True, False])
def test_check_arch_tests_the_modules_own_causal_claim(tmp_path, monkeypatch, truly):
    """A YAML without a direction option: the module's `causal = True` is what is checked, by behaviour."""
    from recipes import check_arch as check

    module = f"claims_{str(truly).lower()}"  # one module name per case: imports are cached
    (tmp_path / f"{module}.py").write_text(CAUSAL_CLAIMS.format(truly=truly, how="and is" if truly else "but is not"))
    (tmp_path / "claims.yaml").write_text(f"_target_: {module}.Claims\nd_model: 16\nn_layers: 1\ndropout: 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = check.load(tmp_path / "claims.yaml")
    failed = [line for line in check.check(cfg, "claims") if ": direction:" in line]
    if truly:
        assert failed == []
    else:
        assert len(failed) == 1 and "declared causal, but earlier outputs change with later inputs" in failed[0]


def test_wall_time_adds_every_attempt_once(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    wall = {"finetune": 12.0, "probes": 1.0}
    assert experiment.account_time(wall, False, run_dir, 20.0) == {**wall, "overhead": 7.0, "total": 20.0}
    experiment.record_attempt(run_dir, 10.0)  # interrupted, then preempted: both counted
    experiment.record_attempt(run_dir, 5.0)
    assert experiment.account_time(wall, False, run_dir, 6.0) == {**wall, "overhead": 8.0, "total": 21.0}
    # A pretraining reused from the cache counts what it cost, and is not this run's time.
    shared = {"pretrain": 100.0, "finetune": 12.0}
    assert experiment.account_time(shared, True, tmp_path, 14.0) == {**shared, "overhead": 2.0, "total": 114.0}
    # A SIGKILLed attempt recorded nothing: the stages still count, the overhead is never negative.
    assert experiment.account_time({"finetune": 30.0}, False, tmp_path, 5.0)["total"] == 30.0


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_a_total_that_counts_both_attempts(tmp_path, monkeypatch):
    real, calls = recipes.stages.classify_loss, []

    def slow_then_interrupted(*args):
        calls.append(1)
        time.sleep(0.2)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    cfg = make_cfg([*SHORT, "finetune.ckpt_every=1"], tmp_path)
    monkeypatch.setattr(recipes.stages, "classify_loss", slow_then_interrupted)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, tmp_path / "run")
    first = time.perf_counter() - started
    monkeypatch.setattr(recipes.stages, "classify_loss", real)
    result = experiment.run(cfg, tmp_path / "run")
    wall = result["wall_time_s"]
    attempts = json.loads((tmp_path / "run" / "attempts.json").read_text())["seconds"]
    assert len(attempts) == 1 and 0.8 < attempts[0] <= first
    assert wall["total"] == pytest.approx(wall["finetune"] + wall.get("probes", 0) + wall["overhead"], abs=0.01)
    assert wall["total"] >= attempts[0]  # the first attempt's time is in the total


@pytest.mark.slow
def test_the_report_shows_result_jsons_total_as_wall_time(tmp_path):
    from reports.load import load_runs

    experiment.run(make_cfg(SHORT, tmp_path), tmp_path / "runs" / "a")
    (row,) = load_runs(tmp_path / "runs").itertuples()
    total = json.loads((tmp_path / "runs" / "a" / "result.json").read_text())["wall_time_s"]["total"]
    assert row.compute_s == total


@pytest.mark.slow
def test_the_unigram_floor_is_logged_to_4_digits(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    experiment.run(make_cfg(SHORT, tmp_path), tmp_path / "run")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("baselines:")]
    floor = line.rsplit(" ", 1)[1]
    assert len(floor.split(".")[1]) == 4, line
