"""The settings' schemas (recipes/config_schema.py): a bad value of any option of the stage, model,
compute and probes sections is refused in one line — on the command line before Hydra makes a run
folder (run.check_overrides; run.py prints it as `error: ...` and exits 2: tests/test_cli.py), and in a
run before any data is prepared or any stage trains (the issue's case: finetune.bucket_pool=-1 with
recipe=spt failed only after pretraining). The check never changes the config: what it accepts is run as
written (an int stays an int, so config_hash stays)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from recipes import config_schema, experiment
from recipes.errors import ConfigError
from run import check_overrides
from tasks.base import Task
from tests.conftest import ROOT, make_cfg

SPT = ["recipe=spt"]

# (overrides, the one line): each option of each section at least once, a wrong type and a wrong range.
BAD = [
    (["seed=1.5"], "seed=1.5 must be a non-negative integer"),
    (["finetune.epochs=0"], "finetune.epochs=0 must be a positive integer"),
    (["finetune.batch_size=1.5"], "finetune.batch_size=1.5 must be a positive integer"),
    (["finetune.eval_batch_size=true"], "finetune.eval_batch_size=True must be a positive integer"),
    (["finetune.lr=-1"], "finetune.lr=-1 must be a number > 0"),
    (["finetune.lr='1e-3'"], "finetune.lr='1e-3' must be a number > 0"),
    (["finetune.betas=[0.9,0.98,0.99]"], "finetune.betas=[0.9, 0.98, 0.99] must be two numbers in [0, 1)"),
    (["finetune.betas=0.9"], "finetune.betas=0.9 must be two numbers in [0, 1)"),
    (["finetune.weight_decay=-0.01"], "finetune.weight_decay=-0.01 must be a number >= 0"),
    (["finetune.warmup_steps=ten"], "finetune.warmup_steps='ten' must be a whole number of steps >= 0"),
    (["finetune.min_lr_ratio=-0.5"], "finetune.min_lr_ratio=-0.5 must be a number in [0, 1]"),
    (["finetune.grad_clip=-1"], "finetune.grad_clip=-1 must be a number >= 0 (0 = off)"),
    (["finetune.bucket_pool=-1"], "finetune.bucket_pool=-1 must be a whole number of batches >= 0 (0 = off)"),
    (["finetune.bucket_pool=2.5"], "finetune.bucket_pool=2.5 must be a whole number of batches >= 0"),
    (["finetune.max_steps=0"], "finetune.max_steps=0 must be a positive integer or null"),
    (["finetune.eval_every=1.5"], "finetune.eval_every=1.5 must be a positive integer or null"),
    (["finetune.ckpt_every=-2"], "finetune.ckpt_every=-2 must be a positive integer or null"),
    (["finetune.patience=0"], "finetune.patience=0 must be a positive integer or null"),
    (["finetune.min_steps=soon"], "finetune.min_steps='soon' must be a positive integer or null"),
    (["finetune.on_nan=ignore"], "finetune.on_nan='ignore' must be one of stop, skip_batch"),
    (["finetune.init_from=5"], "finetune.init_from=5 must be the path of an exported body"),
    # the pretraining stage: its own options, and the shared ones (the bucket_pool=-1 with spt)
    ([*SPT, "pretrain.bucket_pool=-1"], "pretrain.bucket_pool=-1 must be a whole number of batches >= 0"),
    ([*SPT, "finetune.bucket_pool=-1"], "finetune.bucket_pool=-1 must be a whole number of batches >= 0"),
    ([*SPT, "pretrain.epochs=0"], "pretrain.epochs=0 must be a positive integer"),
    ([*SPT, "pretrain.objective=clm"], "pretrain.objective='clm' is not one of auto, mlm, ntp"),
    ([*SPT, "pretrain.mask_ratio=1"], "pretrain.mask_ratio=1 must be a number in (0, 1), or null"),
    ([*SPT, "pretrain.pixel_loss=mse"], "pretrain.pixel_loss='mse' must be ce, l1, or null"),
    ([*SPT, "pretrain.inputs=everything"], "pretrain.inputs='everything' is not one of labelled, all_train"),
    ([*SPT, "pretrain.seed=-1"], "pretrain.seed=-1 must be a non-negative integer"),
    ([*SPT, "pretrain.seed=null"], "pretrain.seed=None must be a non-negative integer"),
    (["model.pooling=max"], "model.pooling='max' is not one of auto, mean, cls, last"),
    (["compute.precision=fp8"], "compute.precision='fp8' is not one of auto, fp32, bf16, fp16"),
    (["compute.compile=yes"], "compute.compile='yes' must be true or false"),
    (["compute.micro_batch_size=0"], "compute.micro_batch_size=0 must be a positive integer or null"),
    (["compute.num_workers=-1"], "compute.num_workers=-1 must be an integer >= 0"),
    (["compute.pin_memory=maybe"], "compute.pin_memory='maybe' must be auto, true or false"),
    (["probes.enabled=maybe"], "probes.enabled='maybe' must be true or false"),
    (["probes.n_examples=0"], "probes.n_examples=0 must be a whole number >= 1"),
    (["probes.positions=1.5"], "probes.positions=1.5 must be a whole number >= 1"),
    (["probes.directions=0"], "probes.directions=0 must be a whole number >= 1 or null (exact)"),
    (["probes.window=-1"], "probes.window=-1 must be a whole number >= 0"),
    (["probes.seed=x"], "probes.seed='x' must be a whole number >= 0"),
    (["+probes.width=3"], "probes.width is not a probes setting; the settings are enabled, n_examples"),
]
IDS = [" ".join(args) for args, _ in BAD]


@pytest.mark.parametrize("args, expected", BAD, ids=IDS)
def test_refused_in_one_line_before_hydra_makes_a_folder(args, expected):
    message = check_overrides(args)
    assert message is not None and message.startswith(expected) and "\n" not in message, message


@pytest.mark.parametrize("args, expected", BAD, ids=IDS)
def test_refused_in_a_run_before_any_data(tmp_path, monkeypatch, args, expected):
    def no_data(*_):
        raise AssertionError("data prepared before the settings were checked")

    monkeypatch.setattr(Task, "splits", no_data)
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(args, tmp_path), tmp_path / "run")
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder


def test_a_stage_the_recipe_does_not_run_is_not_checked(tmp_path):
    """A grid over recipes sets pretrain.* for all of them: recipe=supervised never reads it."""
    cfg = make_cfg(["recipe=supervised", "pretrain.lr=-1"], tmp_path)
    config_schema.check(cfg, ("finetune",))
    with pytest.raises(ConfigError, match="pretrain.lr=-1"):
        config_schema.check(cfg, ("pretrain", "finetune"))


def test_every_key_of_the_checked_sections_has_a_rule():
    """A key added to conf/config.yaml's sections gets its rule here too (or the schema would let
    anything through for it)."""
    conf = OmegaConf.load(ROOT / "conf" / "config.yaml")
    for name, schema in [("model", config_schema.Model), ("compute", config_schema.Compute),
                         ("probes", config_schema.Probes), *config_schema.STAGES.items()]:
        assert set(conf[name]) == set(schema.model_fields), name


def test_the_check_changes_nothing(tmp_path):
    """Valid values pass as written: an int where a float is usual stays an int (1, not 1.0), so the
    resolved config, and its config_hash, are what they were before the schema existed."""
    cfg = make_cfg(["recipe=spt", "finetune.lr=1", "finetune.grad_clip=0", "pretrain.mask_ratio=0.5",
                    "compute.pin_memory=false", "probes.directions=null"], tmp_path)
    before = OmegaConf.to_container(cfg)
    config_schema.check(cfg, ("pretrain", "finetune"))
    assert OmegaConf.to_container(cfg) == before
    assert type(cfg.finetune.lr) is int and type(cfg.finetune.grad_clip) is int
