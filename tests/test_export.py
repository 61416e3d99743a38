"""Shareable pretrained bodies (recipes/extras/export.py): export from an spt run or its cache folder, fine-tune
from the export exactly as spt's own fine-tuning does, and one-line refusals of mismatched inputs."""

from __future__ import annotations

import json

import pytest

from recipes import experiment
from recipes.engine import checkpoint
from recipes.errors import ConfigError
from recipes.extras import export
from tests.conftest import make_cfg, tiny

pytest.importorskip("safetensors")
QUICK = ["finetune.max_steps=6", "finetune.eval_every=3"]
PRE = ["pretrain.max_steps=4", "pretrain.eval_every=2"]


def finetune_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows if r["stage"] == "finetune"]


@pytest.fixture(scope="module")
def spt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("spt")
    result = experiment.run(make_cfg(tiny("spt", *QUICK, *PRE), root), root / "spt")
    return root, result


@pytest.mark.slow
def test_a_body_exported_from_an_spt_run_fine_tunes_exactly_as_spt_did(spt_run, capsys):
    root, spt = spt_run
    body = root / "body"
    assert export.main([str(root / "spt"), str(body)]) == 0
    assert "exported" in capsys.readouterr().out
    config = json.loads((body / "config.json").read_text())
    assert config["pretrain_key"] == spt["pretrain"]["key"] and config["task"] == spt["config"]["task"]
    # From the cache folder itself: the same weights.
    assert export.main([spt["pretrain"]["dir"], str(root / "body2")]) == 0
    assert json.loads((root / "body2" / "config.json").read_text())["weights_sha256"] == config["weights_sha256"]

    # A supervised run from the export starts from the same weights and the same head as spt's fine-tuning.
    sup = experiment.run(make_cfg(tiny("supervised", *QUICK, *PRE, f"finetune.init_from={body}"), root), root / "sup")
    assert finetune_rows(root / "sup") == finetune_rows(root / "spt")
    assert sup["metrics"]["test_acc"] == spt["metrics"]["test_acc"]
    assert sup["init_from"]["pretrain_key"] == spt["pretrain"]["key"] and sup["init_from"]["path"] == str(body)
    assert sup["init_from"]["weights_sha256"] == config["weights_sha256"]
    # Its probes see spt's bodies: the shared one before fine-tuning, the same weights after; and a
    # finished run without probes gets the same ones from the export and its checkpoints.
    assert {k: sup["probes"]["stages"][k] for k in ("pretrained", "finetuned")} == \
        {k: spt["probes"]["stages"][k] for k in ("pretrained", "finetuned")}
    checkpoint.write_json(root / "sup" / "result.json", {k: v for k, v in sup.items() if k != "probes"})
    back = experiment.run(make_cfg(tiny("supervised", *QUICK, *PRE, f"finetune.init_from={body}"), root), root / "sup")
    assert back["probes"]["stages"] == sup["probes"]["stages"] and back["probes"]["added_from_checkpoints"]
    # The identity records the weights' source, not their path: the second export is the same configuration.
    again = experiment.run(make_cfg(tiny("supervised", *QUICK, *PRE, f"finetune.init_from={root / 'body2'}"), root),
                           root / "sup2")
    scratch = experiment.run(make_cfg(tiny("supervised", *QUICK, *PRE), root), root / "scratch")
    assert again["config_hash"] == sup["config_hash"] != scratch["config_hash"]
    assert finetune_rows(root / "scratch") != finetune_rows(root / "sup")


def test_mismatched_or_damaged_bodies_are_one_line(spt_run, tmp_path):
    root, spt = spt_run
    body = tmp_path / "body"
    export.export(root / "spt", body)

    def refused(*overrides, base=None):
        base = tiny("supervised", *QUICK) if base is None else base
        cfg = make_cfg([*base, f"finetune.init_from={body}", *overrides], tmp_path)
        with pytest.raises(ConfigError) as err:
            experiment.run(cfg, tmp_path / "run")
        assert "\n" not in str(err.value) and not (tmp_path / "run" / "result.json").exists()
        return str(err.value)

    assert "arch.d_model: 16 -> 32" in refused("arch.d_model=16")
    assert "recipe=supervised" in refused("recipe=spt")
    other_task = ["recipe=supervised", "task=proximity", "task.n_train=200", "task.n_val=50", "task.n_test=50",
                  "task.length=32", "task.near=2", "task.far=6", "arch.d_model=32", "arch.n_layers=1", "arch.n_heads=2",
                  *QUICK, "progress=false"]
    assert "vocabulary of" in refused(base=other_task)
    assert not list((tmp_path / "_cache" / "data").glob("proximity-*"))  # refused before preparing its data
    weights = bytearray((body / export.WEIGHTS).read_bytes())
    weights[-1] ^= 1
    (body / export.WEIGHTS).write_bytes(bytes(weights))
    assert "does not match the file_sha256" in refused()
    assert "no config.json" in refused(f"finetune.init_from={tmp_path / 'nowhere'}")


def test_export_of_a_run_without_pretraining_is_one_line(spt_run, tmp_path, capsys):
    root, _ = spt_run
    experiment.run(make_cfg(tiny("supervised", *QUICK), root), root / "plain")
    assert export.main([str(root / "plain"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export a completed recipe=spt run" in err[0]
    assert not (tmp_path / "out").exists()
