"""Faults: runs killed (SIGKILL) or preempted (SIGTERM) at many points and rerun, damaged files,
two processes racing for the same cache, non-finite numbers, planted pickles. Every time: nothing
damaged is read, the rerun resumes, and the final result equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

import recipes.stages
from recipes import experiment
from recipes.engine import checkpoint
from recipes.errors import CheckpointError, TrainingDiverged
from tests.conftest import ROOT, make_cfg, nan_loss
from tests.test_recipes import rows

SIZES = ["task.n_train=200", "task.n_val=64", "task.n_test=64", "task.min_length=4",
         "task.max_length=24", "arch.d_model=16", "arch.n_layers=1", "arch.n_heads=2", "progress=false"]
SMALL = ["recipe=spt", *SIZES, "out_root=runs", *(f"{s}.{k}" for s in ("pretrain", "finetune")
                            for k in ("max_steps=12", "eval_every=4", "ckpt_every=2", "warmup_steps=2"))]
def small(recipe: str, *extra: str) -> list[str]:
    return [f"recipe={recipe}", *SIZES, "finetune.warmup_steps=2", "pretrain.warmup_steps=2", *extra]


VOLATILE = ("wall_time_s", "created", "sha256")  # wall clock, and the checksum that covers it


def comparable(path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}


def faulted(fault: str | None, args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "SPTBENCH_FAULT": fault or "none:0:KILL"}
    return subprocess.run([sys.executable, "-m", "tests.faultinject", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# (fault, expected exit status): one run after another in the same folder, each resuming from what
# the one before left. -9: killed; 143: SIGTERM handled (a checkpoint saved when inside training).
CHAIN = [
    ("prepare:1:TERM", 143),         # data in its temporary folder, not yet in place; outside training
    ("write:last.pt:1:KILL", -9),    # the first pretraining checkpoint torn mid-write
    ("pretrain:5:TERM", 143),        # preempted during pretraining: last.pt saved at a step boundary
    ("write:checkpoints/best.pt:1:KILL", -9),  # resumed from it; fine-tuning's first best.pt torn
    ("finetune:6:TERM", 143),        # preempted during fine-tuning
    ("write:result.json:1:KILL", -9),  # resumed fine-tuning, result.json torn mid-write
    (None, 0),
]


@pytest.mark.slow
def test_killed_and_preempted_at_every_point_then_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    (tmp_path / "ref").mkdir()
    monkeypatch.chdir(tmp_path / "ref")  # the same relative paths as the faulted runs: identical configs
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=SMALL)
    experiment.run(cfg, tmp_path / "ref" / "run")

    work = tmp_path / "faulted"
    work.mkdir()
    args = [str(ROOT / "run.py"), *SMALL, "hydra.run.dir=run"]
    saved = None  # (stage, step) of the checkpoint the last SIGTERM saved
    for fault, status in CHAIN:
        proc = faulted(fault, args, work)
        out = proc.stdout + proc.stderr
        assert proc.returncode == status, f"{fault}: {out[-3000:]}"
        assert "damaged" not in out and "Traceback" not in out, f"{fault}: {out[-3000:]}"
        if saved:  # the run after a preemption resumed from the checkpoint it saved
            assert f"{saved[0]}: resuming from" in out and f"at step {saved[1]} of 12" in out, out[-3000:]
            saved = None
        if status:
            assert not (work / "run" / "result.json").exists(), fault
        if status == 143:
            assert "preempted:" in proc.stderr and "run the same command to resume" in proc.stderr, fault
        if fault in ("pretrain:5:TERM", "finetune:6:TERM"):
            stage = fault.split(":")[0]
            assert f"preempted: {stage}: saved" in proc.stderr, proc.stderr[-2000:]
            saved = (stage, proc.stderr.split(" at step ")[1].split()[0])

    assert comparable(work / "run" / "result.json") == comparable(tmp_path / "ref" / "run" / "result.json")
    assert rows(work / "run" / "metrics.jsonl") == rows(tmp_path / "ref" / "run" / "metrics.jsonl")
    assert not list(work.rglob("*.corrupt"))  # nothing torn ever reached a real file name

    # Report writing killed mid-write: no torn report.html appears; the rerun writes it whole.
    from reports.__main__ import main

    (work / "run").rename(work / "runs" / "run")
    report = [str(work / "runs"), "-o", str(work / "report")]
    assert faulted("write:report.html:1:KILL", ["-m", "reports", *report], work).returncode == -9
    assert (work / "report" / "report.md").exists() and not (work / "report" / "report.html").exists()
    assert main(report) == 0
    assert (work / "report" / "report.html").read_text().endswith("</html>\n")


@pytest.mark.slow
def test_two_processes_needing_the_same_data_and_pretraining_produce_them_once(tmp_path):
    """Two seeds sharing one pretraining (pretrain.seed=0), started together: one prepares the data
    and pretrains while the other waits on the locks, then reuses both."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    short = ["pretrain.max_steps=4", "finetune.max_steps=4"]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *SMALL, *short, "pretrain.seed=0", f"seed={s}",
                               f"hydra.run.dir=run{s}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for s in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    results = [json.loads((tmp_path / f"run{s}" / "result.json").read_text()) for s in (0, 1)]
    assert all(r["status"] == "ok" for r in results)
    assert results[0]["pretrain"]["key"] == results[1]["pretrain"]["key"]
    assert sorted(r["pretrain"]["reused"] for r in results) == [False, True]
    assert sum("data: preparing" in log for log in logs) == 1
    assert sum("pretrain: training" in log for log in logs) == 1
    assert len(list((tmp_path / "runs" / "_cache" / "data").glob("listops-*/key.json"))) == 1


QUICK = [*SIZES, "finetune.max_steps=6", "finetune.eval_every=3", "pretrain.max_steps=6", "pretrain.eval_every=3"]


def flip_byte(path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_number(path) -> None:  # still valid JSON, but not what the run wrote
    text = path.read_text()
    assert '": 0.' in text
    path.write_text(text.replace('": 0.', '": 0.9', 1))


@pytest.mark.slow
def test_damaged_files_are_detected_moved_aside_and_recomputed(tmp_path, caplog):
    args = small("spt", *QUICK)
    run = tmp_path / "run"
    first = experiment.run(make_cfg(args, tmp_path), run)
    pretrain_dir = tmp_path / "_cache" / "pretrain" / first["pretrain"]["key"]
    arrow = sorted((tmp_path / "_cache" / "data").glob("listops-*/train/*.arrow"))[0]
    damages = [  # (file, damage, whether result.json must go too for the file to be needed again)
        (run / "result.json", edit_number, False),
        (run / "result.json", truncate, False),
        (run / "checkpoints" / "best.pt", flip_byte, True),
        (run / "checkpoints" / "last.pt", truncate, True),
        (run / "checkpoints" / "done.json", edit_number, True),
        (pretrain_dir / "best.pt", flip_byte, True),
        (arrow, flip_byte, True),
    ]
    for path, damage, needed in damages:
        if needed:
            (run / "result.json").unlink()
        damage(path)
        caplog.clear()
        again = experiment.run(make_cfg(args, tmp_path), run)
        what = f"{path.name} {damage.__name__}"
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and path.name in warnings[0], (what, warnings)
        assert any(w in warnings[0] for w in ("checksum", "unreadable", "cannot be read safely")), (what, warnings)
        assert path.exists() and (path.with_name(path.name + ".corrupt").exists()
                                  or path.parent.parent.with_name(path.parent.parent.name + ".corrupt").exists()), what
        assert again["metrics"] == first["metrics"], what
        assert checkpoint.read_json(run / "result.json")["metrics"] == first["metrics"], what


def test_checkpoint_of_another_code_version_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": checkpoint.FORMAT - 1, "identity": {}, "model": {}}, path)
    with pytest.raises(CheckpointError, match=rf"has format {checkpoint.FORMAT - 1}, this code reads format "
                                              rf"{checkpoint.FORMAT} \(it was written by an incompatible version"):
        checkpoint.load(path, identity={})
    checkpoint.save(path, {"identity": {"config_hash": "a"}, "model": {}})
    with pytest.raises(CheckpointError, match=r"different configuration \(config_hash: a -> b\)"):
        checkpoint.load(path, identity={"config_hash": "b"})


class Payload:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_planted_pickles_never_run(tmp_path):
    marker = tmp_path / "pwned"
    # A malicious last.pt in a run folder: refused by weights_only, moved aside; the run trains from scratch.
    args = small("supervised", *QUICK)
    reference = experiment.run(make_cfg(args, tmp_path / "ref"), tmp_path / "ref" / "run")
    planted = tmp_path / "run" / "checkpoints" / "last.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "model": Payload(marker)}, protocol=2))
    result = experiment.run(make_cfg(args, tmp_path / "ref"), tmp_path / "run")
    assert not marker.exists() and planted.with_name("last.pt.corrupt").exists()
    assert result["metrics"] == reference["metrics"]
    # A malicious CIFAR batch: the data loader's allow-list refuses it.
    from tasks.base import DataError
    from tasks.image import read_batch

    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing to load io.open"):
        read_batch(bad)
    assert not marker.exists()


def nan_gradient(at_call: int):
    """classify_loss whose loss stays finite at call `at_call` but whose gradient is NaN there."""
    real, calls = recipes.stages.classify_loss, []

    def loss_fn(model, ids, mask, labels):
        loss, c, n = real(model, ids, mask, labels)
        calls.append(1)
        if len(calls) == at_call:
            w = next(model.parameters())
            poison = torch.sqrt(-(w.sum() ** 2) - 1)  # NaN, and NaN gradient through where()
            loss = loss + torch.where(torch.tensor(False), poison, torch.zeros(()))
        return loss, c, n
    return loss_fn


@pytest.mark.slow
def test_non_finite_gradient_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes.stages, "classify_loss", nan_gradient(4))
    args = small("supervised", "finetune.max_steps=8", "finetune.ckpt_every=2")
    with pytest.raises(TrainingDiverged, match="non-finite gradient"):
        experiment.run(make_cfg(args, tmp_path), tmp_path / "run")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert result["status"] == "failed" and "at step 3" in result["reason"] and str(last) in result["reason"]
    assert result["diverged"] == {"stage": "finetune", "step": 3, "what": "gradient", "checkpoint": str(last)}
    state = checkpoint.load(last, torch.load(last, weights_only=True)["identity"])  # intact: checksum checked
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.slow
def test_skip_batch_policy_drops_the_bad_batch_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes.stages, "classify_loss", nan_loss(3))
    result = experiment.run(make_cfg(small("supervised", *QUICK, "finetune.on_nan=skip_batch"), tmp_path),
                            tmp_path / "run")
    assert result["status"] == "ok" and result["skipped_steps"] == {"finetune": [2]}
    assert result["config"]["finetune"]["on_nan"] == "skip_batch"
    weights = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert np.isfinite([r["train_loss"] for r in rows(tmp_path / "run" / "metrics.jsonl")]).all()


def test_no_eval_or_exec_and_no_unsafe_loads_in_the_code():
    """Config strings are data: nothing in the suite evaluates them, and nothing unpickles files
    without an allow-list (torch.load with weights_only=True, no pickle.load, no allow_pickle)."""
    import ast

    from omegaconf import OmegaConf

    import run  # noqa: F401  (registers the suite's resolvers)

    assert not OmegaConf.has_resolver("eval")
    files = [p for p in ROOT.rglob("*.py") if not {"tests", ".git", ".venv"} & set(p.relative_to(ROOT).parts)]
    assert len(files) > 30
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile", "__import__"), where
                continue
            if not isinstance(node.func, ast.Attribute):
                continue
            owner, name = getattr(node.func.value, "id", ""), node.func.attr
            keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            assert not (owner in ("pickle", "dill", "cloudpickle") and name in ("load", "loads")), where
            assert not (owner == "torch" and name == "load" and keywords.get("weights_only") is not True), where
            assert keywords.get("allow_pickle") is not True, where
            assert not (owner == "yaml" and name in ("load", "unsafe_load")), where


def test_report_escapes_every_string_from_files_and_never_counts_a_damaged_result(tmp_path):
    from reports.__main__ import main
    from reports.load import load_runs

    hostile = '<q onmouseover="alert(1)">'
    fields = {k: f"{k}{hostile}" for k in ("task", "arch", "device", "impl", "code_version", "group_hash")}
    for i, status in enumerate(("ok", "failed", "ok")):
        checkpoint.write_json(tmp_path / f"runs{hostile}" / f"r{i}" / "result.json", {
            **fields, "recipe": "spt", "seed": i, "status": status, "config_hash": f"c{i}{hostile}",
            "reason": None if status == "ok" else f"reason{hostile}", "params": {"total": 10},
            "metrics": {"test_acc": 0.5, "val_acc": 0.5}, "steps": {"finetune": 1},
            "wall_time_s": {"finetune": 1.0}, "config": {"finetune": {"lr": hostile}}})
    damaged = tmp_path / f"runs{hostile}" / "r2" / "result.json"
    damaged.write_text(damaged.read_text().replace('"test_acc": 0.5', '"test_acc": 0.9'))
    runs = load_runs(tmp_path).set_index("path")
    bad = runs.loc[str(damaged.parent)]
    assert bad["status"] == "unreadable" and "checksum" in bad["reason"] and pd.isna(bad["test_acc"])
    assert runs.loc[str(damaged.parent.with_name("r0")), "test_acc"] == 0.5
    assert main([str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<q" not in page and page.count("&lt;q onmouseover=&quot;alert(1)&quot;&gt;") >= 5
