"""bench/plan.py: the runs of a grid, their steps and GPU hours, before anything trains."""

from __future__ import annotations

import json
import math

import pytest

from bench import plan
from recipes.errors import ConfigError
from tests.conftest import cli


def test_expand_is_the_product_of_the_preset_sweep_and_the_command_line():
    runs = plan.expand(["experiment=x", "arch=a,b", "seed=0,1,2"], {"recipe": "sup,spt", "seed": "0,1"})
    assert len(runs) == 2 * 3 * 2  # the command line's seeds replace the preset's
    assert sorted(["experiment=x", "recipe=sup", "arch=b", "seed=2"]) in [sorted(r) for r in runs]
    assert len({tuple(sorted(r)) for r in runs}) == len(runs)
    assert sorted(map(sorted, plan.expand(["recipe=spt"], {"recipe": "sup,spt", "seed": "0,1"}))) == \
        [["recipe=spt", "seed=0"], ["recipe=spt", "seed=1"]]


def test_bench_rate_interpolates_log_log_and_scales_by_backbone_size():
    rows = [{"arch": "s4", "L": 1000, "tokens_per_s": 100.0, "params": 10},
            {"arch": "s4", "L": 4000, "tokens_per_s": 25.0, "params": 10},
            {"arch": "mamba:torch", "L": 1000, "tokens_per_s": 1.0, "params": 10},
            {"arch": "mamba:cuda", "L": 1000, "tokens_per_s": 8.0, "params": 10}]
    assert plan.bench_rate(rows, "s4", 2000, 10) == pytest.approx(50.0)  # rate ~ 1/L between the two
    assert plan.bench_rate(rows, "s4", 500, 20) == pytest.approx(50.0)  # below the range: the shortest, halved
    assert plan.bench_rate(rows, "mamba", 1000, 10) == pytest.approx(8.0)  # the fused kernels' row
    assert plan.bench_rate(rows, "cnn", 1000, 10) is None


@pytest.mark.slow
def test_plan_counts_steps_and_hours_as_the_runs_will(tmp_path):
    rows = [{"arch": arch, "L": n, "tokens_per_s": 1e6, "params": 800_000}
            for arch in ("s4", "cnn") for n in (1024, 4096)]
    runs = plan.plan(["experiment=lra_listops", "arch=s4,cnn", "recipe=supervised,spt,supervised_matched", "seed=0"],
                     rows, None)
    assert [(r["arch"], r["recipe"]) for r in runs][:3] == [("s4", "supervised"), ("s4", "spt"),
                                                            ("s4", "supervised_matched")]
    s4 = {r["recipe"]: r for r in runs if r["arch"] == "s4"}
    # conf/per_arch/lra_listops/s4.yaml: fine-tuning 40 epochs of batch 32, pretraining 100 of batch 50, 96k examples
    fine, pre = 40 * math.ceil(96_000 / 32), 100 * math.ceil(96_000 / 50)
    assert s4["supervised"]["steps"] == {"finetune": fine}
    assert s4["spt"]["steps"] == {"pretrain": pre, "finetune": fine}
    assert s4["supervised_matched"]["steps"] == {"finetune": pre + fine}
    from recipes import experiment  # the backbone size the rate is scaled to
    from recipes.model import n_params

    cfg = plan.compose(["experiment=lra_listops", "arch=s4"])
    backbone = n_params(experiment.build_body(cfg, experiment.build_task(cfg.task)).backbone)
    rate = 1e6 * 800_000 / backbone
    assert s4["spt"]["on"] == "GPU"  # a GPU's throughput file: GPU hours
    assert s4["spt"]["hours"] == pytest.approx((pre * 50 + fine * 32) * 2000 / rate / 3600)
    assert "| listops | cnn | spt | 0 |" in plan.render(runs)


def test_plan_refuses_a_bad_grid_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="n_heads"):
        plan.plan(["experiment=lra_listops", "arch=s4", "+arch.n_heads=8"], None, None)
    with pytest.raises(ConfigError, match="arch=nope"):
        plan.plan(["arch=nope"], None, None)


@pytest.mark.slow
def test_run_py_dry_run_lists_the_grid_and_trains_nothing(tmp_path):
    bench = tmp_path / "t.json"
    bench.write_text(json.dumps({"rows": [{"arch": "cnn", "L": 2048, "tokens_per_s": 1e6, "params": 800_000}]}))
    out = cli(["-m", "experiment=lra_listops", "arch=cnn", "recipe=supervised", "seed=0,1", "--dry-run",
               "--throughput", str(bench)], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("| listops | cnn | supervised |") == 2 and "2 runs;" in out.stdout
    assert not (tmp_path / "runs").exists()
    bad = cli(["experiment=lra_listops", "arch=s4", "+arch.n_heads=8", "--dry-run"], tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "n_heads" in bad.stderr


def test_measure_times_each_distinct_backbone_once(monkeypatch):
    import bench.throughput

    real, calls = bench.throughput.time_steps, []

    def counted(arch, length, args):
        calls.append((arch, length, args["tokens"], tuple(args["set"])))
        return real(arch, length, {**args, "steps": 1, "warmup": 0})

    monkeypatch.setattr(bench.throughput, "time_steps", counted)
    runs = plan.plan(["arch=cnn", "recipe=supervised", "seed=0,1", "finetune.epochs=1", "finetune.batch_size=8",
                      "task.max_length=40", "task.n_train=64"], None, "run")  # the run's device: this CPU
    assert len(runs) == 2 and all(r["hours"] > 0 and r["on"] == "CPU" for r in runs)
    assert "est. CPU hours" in plan.render(runs) and "GPU" not in plan.render(runs)
    assert runs[0]["steps"] == {"finetune": 8}
    assert len(calls) == 1 and calls[0][:3] == ("cnn", 40, 8 * 40)  # the run's own batch and length
    assert "kernel_size=7" in calls[0][3]  # the run's arch settings, not conf/arch's alone


def test_dry_run_measure_takes_overrides_after_the_flags_and_says_cpu_hours(monkeypatch, capsys):
    import bench.throughput

    monkeypatch.setattr(bench.throughput, "time_steps", lambda arch, length, args: {"tokens_per_s": 1e4})
    assert plan.main(["--measure", "arch=cnn", "recipe=supervised", "--out", "/dev/null", "finetune.epochs=1",
                      "task.n_train=64", "finetune.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "| listops | cnn | supervised | 0 |" in out and "CPU hours" in out and "GPU" not in out
