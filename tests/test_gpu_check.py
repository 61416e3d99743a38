"""bench/gpu_check.py's logic without a GPU: the steps it assembles, the budget, a missing mamba-ssm,
and the summary it writes (the commands themselves are faked)."""

from __future__ import annotations

import json

import torch

from bench import gpu_check


class Fake:
    """Stands in for `execute`: exit status per step, by a word of its command; the ListOps run
    leaves a result.json as run.py would."""

    def __init__(self, out, codes):
        self.out, self.codes, self.calls = out, codes, []

    def __call__(self, argv, timeout):
        line = " ".join(map(str, argv))
        self.calls.append((line, timeout))
        if "run.py" in line:
            (self.out / "listops_spt").mkdir(parents=True)
            (self.out / "listops_spt" / "result.json").write_text(json.dumps(
                {"status": "ok", "metrics": {"test_acc": 0.3}, "steps": {"pretrain": 200, "finetune": 200}}))
        if "bench.throughput" in line:
            (self.out / "bench").mkdir(parents=True)
            (self.out / "bench" / "throughput-cuda.md").write_text("| arch | params |\n| s4 | 1 |")
        code = next((c for word, c in self.codes.items() if word in line), 0)
        return code, f"output of {argv[0]}", 1.0


def test_the_steps_are_the_issue_s_checks_in_order(tmp_path):
    steps = gpu_check.steps(tmp_path, install=True)
    assert [s["name"] for s in steps] == ["env", "mamba_ssm", "parity", "listops_spt", "throughput"]
    argv = {s["name"]: " ".join(map(str, s["argv"])) for s in steps}
    assert "tests/test_parity.py -k cuda" in argv["parity"]
    assert "bench.throughput --device cuda --paper" in argv["throughput"]
    assert all(k in argv["listops_spt"] for k in ("experiment=lra_listops", "arch=transformer", "recipe=spt",
                                                  "pretrain.max_steps=200", "finetune.max_steps=200"))
    assert gpu_check.steps(tmp_path, install=False)[1]["install"] is None


def test_a_missing_mamba_ssm_is_tried_once_then_reported_and_the_rest_still_runs(tmp_path):
    fake = Fake(tmp_path, {"import mamba_ssm": 1, "pip install": 1})
    report = gpu_check.check(tmp_path, budget=480, install=True, run=fake)
    by = {r["name"]: r for r in report}
    assert by["mamba_ssm"]["status"] == "failed" and by["mamba_ssm"]["install"]["status"] == "failed"
    assert "PyTorch path on CUDA" in by["mamba_ssm"]["note"]
    assert [by[n]["status"] for n in ("env", "parity", "throughput", "listops_spt")] == ["ok"] * 4
    assert by["listops_spt"]["metrics"] == {"test_acc": 0.3} and "| s4 | 1 |" in by["throughput"]["table"]
    assert sum("pip install" in line for line, _ in fake.calls) == 1
    assert all(t <= 480 for _, t in fake.calls)


def test_a_mamba_ssm_that_builds_is_imported_again(tmp_path):
    codes = {"pip install": 0}
    fake = Fake(tmp_path, codes)
    first = []

    def import_fails_once(argv, timeout):
        if "import mamba_ssm" in " ".join(argv) and not first:
            first.append(1)
            return 1, "ModuleNotFoundError", 0.1
        return fake(argv, timeout)

    by = {r["name"]: r for r in gpu_check.check(tmp_path, 480, True, run=import_fails_once)}
    assert by["mamba_ssm"]["status"] == "ok" and by["mamba_ssm"]["install"]["status"] == "ok"
    assert "note" not in by["mamba_ssm"]


def test_a_spent_budget_skips_the_remaining_steps(tmp_path):
    report = gpu_check.check(tmp_path, budget=0, install=True, run=Fake(tmp_path, {}))
    assert {r["status"] for r in report} == {"skipped"}


def test_main_writes_one_summary_and_refuses_a_machine_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "execute", Fake(tmp_path, {"import mamba_ssm": 1, "pip install": 1}))
    assert gpu_check.main(["--out", str(tmp_path)]) == 0  # a missing mamba-ssm is a finding, not a failure
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["ok", "failed", "ok", "ok", "ok"]
    assert "| listops_spt | ok |" in (tmp_path / "summary.md").read_text()
