"""recipes/schema.py: result.json written through one function and read through one, by every version.

Files written before the schema module (the committed example study's runs, schema 0) load with the
same numbers the report shows; new files round-trip; the one digest helper gives the hashes the
hand-written copies gave, so no config hash, group hash or cache key moves."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from recipes.engine import checkpoint
from recipes.schema import VERSION, Result, checksum, combine, digest, read_result, stage_part
from reports.load import load_runs
from tests.conftest import ROOT

EXAMPLE = ROOT / "reports" / "examples" / "study_cpu_converged"


def test_digest_is_the_formula_the_hand_written_copies_used():
    for obj in ({"b": 1, "a": [1, 2, {"z": None}]}, {"path": Path("/x"), "n": 3}, {}):
        text = json.dumps(obj, sort_keys=True, default=str)
        assert digest(obj) == hashlib.sha256(text.encode()).hexdigest()[:16]
        assert checksum(json.loads(text)) == hashlib.sha256(json.dumps(json.loads(text), sort_keys=True)
                                                            .encode()).hexdigest()


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("old_runs")
    with tarfile.open(EXAMPLE / "runs.tar.xz") as tar:
        tar.extractall(root, filter="data")
    return root


def test_results_written_before_the_schema_load_as_the_report_read_them(old_runs):
    paths = sorted(old_runs.rglob("result.json"))
    assert len(paths) == 180  # the converged digits study: 5 backbones x 3 recipes x 2 fractions x 2 lrs x 3 seeds
    for path in paths:
        r = read_result(path)
        assert r.schema == 0 and r.status == "ok" and 0 <= r.metrics["test_acc"] <= 1
        # Written before `overhead`: the stages' seconds, not the process's `total`.
        assert "overhead" not in r.wall_time_s and r.compute_s == pytest.approx(
            sum(v for k, v in r.wall_time_s.items() if k in ("finetune", "pretrain")))
        assert r.hardware_label.startswith("cpu ")
    runs = load_runs(old_runs).set_index("config_hash")
    assert (runs.status == "ok").all()
    shown = pd.read_csv(EXAMPLE / "results.csv").set_index("config_hash")  # what the committed report read
    assert sorted(runs.index) == sorted(shown.index)
    for col in ("test_acc", "val_acc", "compute_s", "pretrain_steps", "finetune_stop", "finetune_best_step",
                "majority_test_acc", "pretrain_val_acc"):
        assert runs[col].astype(float).fillna(-1).to_dict() == pytest.approx(
            shown.loc[runs.index, col].astype(float).fillna(-1).to_dict()), col
    for col in ("group_hash", "device", "baseline_n", "finetune_reason"):
        assert runs[col].to_dict() == shown.loc[runs.index, col].to_dict(), col


def test_a_new_result_round_trips(tmp_path):
    summary = {"steps": 8, "stopping": {"cap": 8, "steps": 8}, "skipped_steps": [], "wall_time_s": 1.5}
    result = combine({"schema": VERSION, "task": "listops", "status": "ok", "reason": None},
                     stage_part("finetune", summary), stage_part("pretrain", {**summary, "steps": 4}),
                     {"metrics": {"test_acc": 0.5}}, {"metrics": {"pretrain_val_acc": 0.25}},
                     {"wall_time_s": {"overhead": 0.5, "total": 3.5}})
    assert result["steps"] == {"finetune": 8, "pretrain": 4}
    assert result["wall_time_s"] == {"finetune": 1.5, "pretrain": 1.5, "overhead": 0.5, "total": 3.5}
    checkpoint.write_json(tmp_path / "result.json", result)
    back = read_result(tmp_path / "result.json")
    assert back == read_result(result) and back.schema == VERSION and back.compute_s == 3.5
    assert back.metrics == {"test_acc": 0.5, "pretrain_val_acc": 0.25} and back.stopped("pretrain")["cap"] == 8
    assert back.stopped("other") == {} and back.probes is None and back.pretrain == {}


def test_combine_refuses_unknown_and_repeated_fields():
    with pytest.raises(KeyError, match="no field 'tset_acc'"):
        combine({"tset_acc": 1})
    with pytest.raises(KeyError, match="metrics.test_acc given twice"):
        combine({"metrics": {"test_acc": 1}}, {"metrics": {"test_acc": 2}})
    with pytest.raises(KeyError, match="impl given twice"):
        combine({"impl": "torch"}, {"impl": "cuda"})


def test_a_damaged_or_foreign_file_is_refused_and_unknown_fields_ignored(tmp_path):
    path = tmp_path / "result.json"
    checkpoint.write_json(path, {"status": "ok", "metrics": {"test_acc": 0.5}})
    path.write_text(path.read_text().replace("0.5", "0.9"))
    with pytest.raises(ValueError, match="checksum"):
        read_result(path)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        read_result(tmp_path / "list.json")
    r = read_result({"status": "ok", "from_the_future": 1, "metrics": [1], "schema": "x"})
    assert r.metrics == {} and r.schema == 0 and Result.__dataclass_fields__.get("from_the_future") is None


def test_the_schema_module_loads_no_torch():
    # A fresh Python without torch (~0.1 s): reports read results through it.
    code = "import sys, recipes.schema; print(sorted(m for m in ('torch', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("pretrain_seed, follows", [(None, True), ("${seed}", True), ("0", False), ("5", False)])
def test_the_group_hash_leaves_out_a_pretraining_seed_that_follows_the_runs(tmp_path, pretrain_seed, follows):
    # The rule asks the config whether pretrain.seed moves with seed (conf/config.yaml: `${seed}`), not
    # what its text says; for these configs it decides as the old comparison with "${seed}" did.
    from recipes import experiment
    from tests.conftest import make_cfg

    cfg = make_cfg(["recipe=spt", "seed=5", *([f"pretrain.seed={pretrain_seed}"] if pretrain_seed else [])], tmp_path)
    hashed = experiment.hashed_config(experiment.resolve(cfg), ("pretrain", "finetune"))
    seedless = experiment.seedless(cfg, hashed)
    assert "seed" not in seedless and ("seed" not in seedless["pretrain"]) == follows
    assert hashed["seed"] == 5 and "seed" in hashed["pretrain"]  # the config hash keeps both
