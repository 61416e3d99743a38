"""Plugins from outside the repo: a backbone package written here, in tmp_path, with its YAML found
through hydra.searchpath, run through run.py and checked by `python -m recipes.check_arch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli

# A plain module, as a user would write it: no Backbone base class, no max_len, no `causal`.
# Bidirectional, and packed so that the backward direction never reads padding.
GRU = '''
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class GRUBackbone(nn.Module):
    def __init__(self, d_model: int, n_layers: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(d_model, d_model, n_layers, batch_first=True, bidirectional=True,
                          dropout=dropout if n_layers > 1 else 0.0)
        self.out = nn.Linear(2 * d_model, d_model)

    def forward(self, x, mask=None):
        b, length, _ = x.shape
        lengths = mask.sum(1) if mask is not None else torch.full((b,), length)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=length)
        return self.out(y)


class LeakyGRU(GRUBackbone):
    """Ignores the mask: its backward direction carries the padding into real positions."""

    def forward(self, x, mask=None):
        return self.out(self.gru(x)[0])
'''
YAML = "_target_: gru_plugin.gru.{cls}\nd_model: 32\nn_layers: 2\ndropout: 0.0\n"  # no name: arch=gru names it
SHORT = ["task.n_train=64", "task.n_val=32", "task.n_test=32", "task.max_length=24", "pretrain.max_steps=3",
         "finetune.max_steps=3", "pretrain.eval_every=3", "finetune.eval_every=3", "progress=false"]


@pytest.fixture
def plugin(tmp_path) -> tuple[Path, Path]:
    """-> (the folder to put on PYTHONPATH, the config folder holding arch/gru.yaml and arch/leaky.yaml)."""
    package = tmp_path / "src" / "gru_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "gru.py").write_text(GRU)
    conf = tmp_path / "conf" / "arch"
    conf.mkdir(parents=True)
    (conf / "gru.yaml").write_text(YAML.format(cls="GRUBackbone"))
    (conf / "leaky.yaml").write_text(YAML.format(cls="LeakyGRU"))
    return tmp_path / "src", tmp_path / "conf"


@pytest.mark.slow
def test_an_out_of_tree_gru_trains_through_run_py(plugin, tmp_path):
    src, conf = plugin
    out = cli(["arch=gru", f"hydra.searchpath=[file://{conf}]", "recipe=spt", *SHORT], tmp_path, path=(src,))
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (tmp_path / "runs" / "listops" / "gru" / "spt").rglob("result.json")  # named by the group choice
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["arch"] == "gru" and result["config"]["arch"]["name"] == "gru"
    assert result["pretrain"]["objective"] == "mlm"  # no `causal` attribute: bidirectional
    assert result["steps"] == {"pretrain": 3, "finetune": 3}
    log = (path.parent / "run.log").read_text()  # the header says what ran, with the plugin's size
    backbone = result["params"]["backbone"]
    assert f"run: task listops | arch gru | recipe spt | seed 0 | params {backbone:,} backbone" in log
    assert "%|" not in out.stderr and "generate listops" not in out.stderr  # progress=false: no bars at all


@pytest.mark.slow
def test_an_out_of_tree_plugin_off_the_path_is_one_error_line(plugin, tmp_path):
    _, conf = plugin
    out = cli(["arch=gru", f"hydra.searchpath=[file://{conf}]", "recipe=supervised", *SHORT], tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: arch 'gru': cannot import module 'gru_plugin.gru'")
    assert "PYTHONPATH" in lines[0] and "pip install -e" in lines[0]
    assert "[hydra.utils]" not in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr


def check(yamls: list[Path], src: Path | None) -> subprocess.CompletedProcess:
    """python -m recipes.check_arch YAMLS, as a plugin author runs it."""
    path = os.pathsep.join(str(p) for p in (ROOT, src) if p)
    return subprocess.run([sys.executable, "-m", "recipes.check_arch", *map(str, yamls)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_archs_check_passes_a_conforming_plugin_and_names_what_a_leaky_one_breaks(plugin):
    src, conf = plugin
    out = check([conf / "arch" / "gru.yaml", conf / "arch" / "leaky.yaml"], src)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    gru = [line for line in lines if " gru: " in line]
    assert len(gru) == 6 and all(line.startswith("ok ") for line in gru), out.stdout
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 1, out.stdout  # padding, and nothing else: the leaky GRU is otherwise fine
    assert failed[0].startswith("FAILED  leaky: padding invariance: real outputs change when only the padding does")
    assert lines[-1] == "11 of 12 checks passed; 1 failed"


@pytest.mark.slow
def test_archs_check_refuses_what_it_cannot_build_in_one_line(plugin, tmp_path):
    src, conf = plugin
    out = check([conf / "arch" / "gru.yaml"], None)  # the package is not on the path
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: arch 'gru': cannot import module 'gru_plugin.gru' (of _target_ gru_plugin.gru.GRUBackbone): "
        "put its package on PYTHONPATH or pip install -e it"]
    out = check([tmp_path / "missing.yaml"], src)
    assert out.returncode == 2 and "no such file" in out.stderr


def test_archs_check_in_process_usage_and_refusals(tmp_path, capsys):
    """recipes.check_arch's command without a subprocess: usage, a missing file, a YAML that names no class,
    and what it builds from a good one (the runs above go through `python -m recipes.check_arch`)."""
    from archs import conformance
    from recipes import check_arch as check

    assert check.main(["--help"]) == 0 and "python -m recipes.check_arch PATH" in capsys.readouterr().out
    assert check.main([]) == 2
    capsys.readouterr()
    assert check.main([str(tmp_path / "missing.yaml")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip().splitlines() == [
        f"error: {tmp_path / 'missing.yaml'}: no such file; give the path of a backbone YAML such as "
        "conf/arch/gru.yaml"]
    (tmp_path / "plain.yaml").write_text("d_model: 8\n")
    assert check.main([str(tmp_path / "plain.yaml")]) == 2
    assert "a backbone YAML needs `_target_: package.module.Class`" in capsys.readouterr().err
    cfg = check.load(ROOT / "conf" / "arch" / "cnn.yaml")
    assert cfg.name == "cnn" and all(cfg[k] == v for k, v in conformance.SMALL.items())
    assert sum(p.numel() for p in check.make(cfg, seed=0).parameters()) > 0


def test_a_task_plugin_that_cannot_be_imported_is_one_config_error():
    from omegaconf import OmegaConf

    from recipes.errors import ConfigError
    from recipes.experiment import build_task

    with pytest.raises(ConfigError) as caught:
        build_task(OmegaConf.create({"_target_": "mylab_tasks.copy.CopyTask", "name": "copy"}))
    assert str(caught.value) == ("task 'copy': cannot import module 'mylab_tasks.copy' (of _target_ "
                                 "mylab_tasks.copy.CopyTask): put its package on PYTHONPATH or pip install -e it")
    with pytest.raises(ConfigError, match="module tasks.listops has no 'ListOpz'"):
        build_task(OmegaConf.create({"_target_": "tasks.listops.ListOpz", "name": "listops"}))
