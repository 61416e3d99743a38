"""scripts/install.sh (the Quickstart's install) and .ci/run, with `python` and `nvidia-smi` replaced by
stubs that only record what they were asked: which torch build each machine gets, and that CI
installs the same way before running exactly the README's test command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


def stubbed(tmp_path: Path, gpu: bool | None) -> dict:
    """An environment whose `python` logs its arguments to tmp_path/calls; `nvidia-smi` answers
    (gpu=True), fails as on a machine without a working driver (False), or is absent (None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    if gpu is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if gpu else 9}\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPTBENCH_")}
    return {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


@pytest.mark.parametrize("gpu", [False, None], ids=["driver-fails", "no-nvidia-smi"])
def test_a_cpu_machine_gets_the_cpu_build(tmp_path, gpu):
    env = stubbed(tmp_path, gpu)
    if gpu is None and subprocess.run(["sh", "-c", "command -v nvidia-smi"], env=env).returncode == 0:
        pytest.skip("this machine has a real nvidia-smi on /usr/bin or /bin")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert calls(tmp_path) == ["-m pip install torch>=2.3,<3 --index-url https://download.pytorch.org/whl/cpu",
                               "-m pip install -e .[dev]"]


def test_a_gpu_machine_gets_the_default_cuda_build(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=stubbed(tmp_path, True),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert calls(tmp_path) == ["-m pip install torch>=2.3,<3", "-m pip install -e .[dev]"]


def test_the_torch_range_is_the_projects():
    assert '"torch>=2.3,<3"' in (ROOT / "pyproject.toml").read_text()  # what install.sh installs by default


def test_ci_installs_through_the_script_then_runs_exactly_the_readme_test_command(tmp_path):
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=stubbed(tmp_path, False), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert calls(tmp_path) == ["-m pip install --upgrade pip", "-m pip install torch==2.13.0",
                               "-m pip install -e .[dev]", "-m pytest -q -n 2"]
