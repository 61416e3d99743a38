"""Experiment trackers (recipes/extras/track.py), offline: TensorBoard's event files and W&B's offline run file
read back and checked against the run folder's metrics.jsonl and result.json; config hashes untouched."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
import time
from pathlib import Path

import pytest

import recipes.stages
from recipes import experiment
from recipes.errors import ConfigError, TrainingDiverged
from tests.conftest import ROOT, cli, make_cfg, nan_loss, tiny

QUICK = ["finetune.max_steps=6", "finetune.eval_every=3"]
QUICK_SPT = [*QUICK, "pretrain.max_steps=4", "pretrain.eval_every=2"]


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def numeric(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("stage", "step") and isinstance(v, (int, float))}


@pytest.mark.slow
def test_default_config_hashes_are_unchanged_by_the_logger_group():
    """The config hashes of default runs, as computed before conf/logger/ existed: adding the logger group
    (and finetune.init_from, left out of the hash while null) must not move any existing run."""
    before = {"spt": "3b349c1ba5a05b47", "supervised": "383d1cf662a4f990", "supervised_matched": "ee08852076f46d0e"}
    for recipe, value in before.items():
        stages = experiment.recipe_module(recipe).STAGES
        for logger in ("none", "tensorboard", "wandb"):
            plain = experiment.resolve(make_cfg([f"recipe={recipe}", f"logger={logger}"], Path("/nonexistent")))
            assert plain["logger"]["name"] == logger
            assert experiment.digest(experiment.hashed_config(plain, stages)) == value, (recipe, logger)


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    texts = {tag.split("/")[0]: textwrap.dedent(events.Tensors(tag)[-1].tensor_proto.string_val[0].decode())
             for tag in events.Tags()["tensors"]}
    return scalars, texts


@pytest.mark.slow
def test_tensorboard_gets_every_metrics_row_the_config_and_the_result(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    result = experiment.run(make_cfg(tiny("spt", *QUICK_SPT, "logger=tensorboard"), tmp_path), run_dir)
    assert list(run_dir.glob("events.out.tfevents.*"))  # in the run folder itself: TensorBoard names it so
    scalars, texts = tensorboard_events(run_dir)
    rows = metric_rows(run_dir)
    assert {r["stage"] for r in rows} == {"pretrain", "finetune"} and len(rows) == 4
    expected = {}
    for row in rows:
        for key, value in numeric(row).items():
            expected.setdefault(f"{row['stage']}/{key}", []).append((row["step"], pytest.approx(value, rel=1e-6)))
    assert {k: v for k, v in scalars.items() if not k.startswith("result/")} == expected  # each row once
    assert scalars["result/metrics.test_acc"] == [(6, pytest.approx(result["metrics"]["test_acc"]))]
    assert scalars["result/baselines.order_free.test_acc"] == [(6, pytest.approx(
        result["baselines"]["order_free"]["test_acc"]))]
    assert json.loads(texts["config"]) == result["config"]
    assert json.loads(texts["result"])["status"] == "ok"


def test_a_failed_run_is_reported_to_the_tracker(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(recipes.stages, "classify_loss", nan_loss(3))
    with pytest.raises(TrainingDiverged):
        experiment.run(make_cfg(tiny("supervised", "logger=tensorboard"), tmp_path), tmp_path / "run")
    _, texts = tensorboard_events(tmp_path / "run")
    result = json.loads(texts["result"])
    assert result["status"] == "failed" and "non-finite loss" in result["reason"]


def wandb_records(path: Path):
    """The records of a W&B run file (.wandb): a 7-byte header, then LevelDB-log framing in 32 KiB blocks
    (per chunk: crc32c, length, type; type 1 = a whole record, 2/3/4 = its first/middle/last part)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, part = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        part, pos = part + data[pos + 7:pos + 7 + size], pos + 7 + size
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            yield record


def item_key(item) -> str:
    """A W&B record item's key: `key`, or for a slashed name such as finetune/step its parts (nested_key)."""
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_run_is_named_after_the_run_folder_and_gets_rows_config_and_result(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))  # nothing written outside the test's folder
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "listops" / "transformer" / "supervised" / "seed0"
    result = experiment.run(make_cfg(tiny("supervised", *QUICK, "logger=wandb", "logger.mode=offline",
                                          "logger.project=unit"), tmp_path), run_dir)
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(60):  # W&B's service may still be writing the file when finish() returns
        records = list(wandb_records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.5)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.run_group, run.project, run.job_type) == (
        "listops/transformer/supervised/seed0", "listops/transformer/supervised", "unit", "supervised")
    config = {item_key(i): json.loads(i.value_json) for i in run.config.update}
    assert config["finetune"] == result["config"]["finetune"] and config["config_hash"] == result["config_hash"]
    history = [{item_key(i): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    rows = metric_rows(run_dir)
    assert len(history) == len(rows) == 2
    for logged, row in zip(history, rows):
        assert logged["finetune/step"] == row["step"]
        assert {k: logged[f"finetune/{k}"] for k in numeric(row)} == pytest.approx(numeric(row))
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in r.summary.update})
    assert summary["status"] == "ok" and summary["metrics.test_acc"] == pytest.approx(result["metrics"]["test_acc"])
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


def test_a_missing_tracker_package_is_one_line_before_any_data(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    with pytest.raises(ConfigError, match=r"logger=tensorboard needs the tensorboard package.*pip install"):
        experiment.run(make_cfg(tiny("supervised", "logger=tensorboard"), tmp_path), tmp_path / "run")
    assert not (tmp_path / "_cache" / "data").exists() and not (tmp_path / "run" / "result.json").exists()


def test_unknown_logger_is_one_line(tmp_path):
    out = cli(["logger=mlflow", f"out_root={tmp_path}"], cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown logger 'mlflow': choose one of none, tensorboard, wandb (or add conf/logger/mlflow.yaml, "
        "or a config folder of your own: hydra.searchpath=[file://FOLDER])"]
    assert (ROOT / "conf" / "logger" / "none.yaml").exists()
