"""scripts/install.sh (the Quickstart's install), its checks (scripts/check_torch.py) and .ci/run.
The scripts run with `python` and `nvidia-smi` replaced by stubs that only record what they were asked:
which torch build each machine gets, that an unreachable index stops the install before pip, and that CI
installs the same way before running exactly the README's test command. The checks run for real, on
faked torch builds and on local indexes."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("check_torch", ROOT / "scripts" / "check_torch.py")
check_torch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_torch)

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def stubbed(tmp_path: Path, gpu: bool | None, fail: str = "", real_probe: bool = False) -> dict:
    """An environment whose `python` logs its arguments to tmp_path/calls and exits 1 when they are
    exactly `fail` (when set); with real_probe, `check_torch.py --probe` runs for real. `nvidia-smi` answers
    (gpu=True), fails as on a machine without a working driver (False), or is absent (None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    probe = f'case "$*" in *--probe*) exec {sys.executable} "$@";; esac\n' if real_probe else ""
    failing = f'[ "$*" = "{fail}" ] && exit 1\n' if fail else ""
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n{probe}{failing}exit 0\n')
    if gpu is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if gpu else 9}\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPTBENCH_", "CI_WHEELS"))}
    return {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def install(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("gpu", [False, None], ids=["driver-fails", "no-nvidia-smi"])
def test_a_cpu_machine_probes_the_cpu_index_installs_from_it_then_checks_the_build(tmp_path, gpu):
    env = stubbed(tmp_path, gpu)
    if gpu is None and subprocess.run(["sh", "-c", "command -v nvidia-smi"], env=env).returncode == 0:
        pytest.skip("this machine has a real nvidia-smi on /usr/bin or /bin")
    out = install(env)
    assert out.returncode == 0, out.stderr
    assert calls(tmp_path) == [f"scripts/check_torch.py --probe {CPU_INDEX}",
                               f"-m pip install torch>=2.3,<3 --index-url {CPU_INDEX}",
                               "-m pip install -e .", "scripts/check_torch.py"]
    assert f"torch>=2.3,<3 from {CPU_INDEX} (CPU builds), plus any extra index" in out.stdout


def test_a_gpu_machine_gets_the_default_cuda_build_and_the_check(tmp_path):
    out = install(stubbed(tmp_path, True))
    assert out.returncode == 0, out.stderr
    assert calls(tmp_path) == ["-m pip install torch>=2.3,<3", "-m pip install -e .", "scripts/check_torch.py"]


def test_dev_adds_the_test_tools_and_an_unknown_option_is_one_line(tmp_path):
    env = stubbed(tmp_path, False)
    assert install(env, "--dev").returncode == 0
    assert "-m pip install -e .[dev]" in calls(tmp_path)
    out = install(env, "--gpu")
    assert out.returncode == 2
    assert out.stderr == "install: unknown option '--gpu': the only option is --dev (adds the test tools)\n"


def test_an_unreachable_index_stops_before_pip(tmp_path):
    out = install(stubbed(tmp_path, False, fail=f"scripts/check_torch.py --probe {CPU_INDEX}"))
    assert out.returncode == 1
    assert calls(tmp_path) == [f"scripts/check_torch.py --probe {CPU_INDEX}"]  # no pip, so no retries


def test_an_empty_index_leaves_torch_to_pip_and_still_checks(tmp_path):
    out = install({**stubbed(tmp_path, False), "SPTBENCH_TORCH_INDEX": ""})
    assert out.returncode == 0, out.stderr
    assert calls(tmp_path) == ["-m pip install torch>=2.3,<3", "-m pip install -e .", "scripts/check_torch.py"]


def test_a_failed_check_fails_the_install(tmp_path):
    out = install(stubbed(tmp_path, False, fail="scripts/check_torch.py"))
    assert calls(tmp_path)[-1] == "scripts/check_torch.py"
    assert out.returncode == 1


def test_the_torch_range_is_the_projects():
    assert '"torch>=2.3,<3"' in (ROOT / "pyproject.toml").read_text()  # what install.sh installs by default


def test_the_runtime_install_needs_no_test_tool():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for tool in ("pytest", "ruff", "wandb", "tensorboard", "submitit", "safetensors"):
        assert tool not in runtime
    assert any(d.startswith("pytest") for d in project["optional-dependencies"]["dev"])


def readme_test_command() -> str:
    """The README's test command: what follows the --dev install on its line."""
    (line,) = {ln for ln in (ROOT / "README.md").read_text().splitlines()
               if ln.startswith("bash scripts/install.sh --dev && ")}
    return line.removeprefix("bash scripts/install.sh --dev && ")


def test_ci_goes_through_the_users_install_then_runs_exactly_the_readme_test_command(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    env = {**stubbed(tmp_path, False, real_probe=True), "CI_WHEELS": str(wheels)}
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = [re.sub(r"file://\S+", "file://INDEX", c) for c in calls(tmp_path)]
    command = readme_test_command()
    assert command.startswith("python ")
    assert got == ["-m pip install --upgrade pip", "scripts/check_torch.py --probe file://INDEX",
                   "-m pip install torch==2.13.0 --index-url file://INDEX", "-m pip install -e .[dev]",
                   "scripts/check_torch.py", command.removeprefix("python ")]
    index = re.search(r"--probe file://(\S+)", calls(tmp_path)[1]).group(1)
    assert not Path(index).exists()  # the temporary index is removed


def test_ci_without_its_wheel_says_where_it_looked(tmp_path):
    env = {**stubbed(tmp_path, False), "CI_WHEELS": str(tmp_path)}
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"ci: no torch-2.13.0+cpu wheel in {tmp_path}: set CI_WHEELS to its folder\n"


# The probe, for real, on local indexes.

def test_probe_reads_a_file_index_and_names_a_missing_one(tmp_path):
    (tmp_path / "torch").mkdir()
    assert check_torch.unreachable(tmp_path.as_uri()) is None
    missing = tmp_path / "nothing"
    assert check_torch.unreachable(missing.as_uri()) == f"{missing / 'torch'} is not a folder"


def test_probe_reads_an_http_index(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<a href='torch-2.13.0+cpu.whl'>x</a>")
    server = HTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert check_torch.unreachable(f"http://127.0.0.1:{server.server_port}/", timeout=5) is None
        assert "HTTP 404" in check_torch.unreachable(f"http://127.0.0.1:{server.server_port}/nothing", timeout=5)
    finally:
        server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_probe_gives_up_on_a_silent_index_after_its_timeout(capsys):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"
        start = time.monotonic()
        assert check_torch.probe(url, timeout=0.5) == 1
        assert time.monotonic() - start < 5
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"install: cannot reach the torch index {url} (") and "SPTBENCH_TORCH_INDEX=" in line


def test_probe_of_a_refused_connection_is_one_line(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert check_torch.main(["--probe", f"http://127.0.0.1:{port}"]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1


# The check after installing, on faked torch builds.

@pytest.mark.parametrize("version, cuda, hip, gpu, ok, says", [
    ("2.13.0+cpu", None, None, False, True, "torch 2.13.0+cpu, a CPU build; no NVIDIA GPU answers"),
    ("2.14.1", "12.8", None, True, True, "torch 2.14.1, a CUDA 12.8 build; an NVIDIA GPU answers"),
    ("2.14.1", "12.8", None, False, False, "torch 2.14.1 is a CUDA 12.8 build but no NVIDIA GPU answers"),
    ("2.13.0+cpu", None, None, True, True, "it will not use the GPU"),
    ("2.5.1+rocm6.2", None, "6.2", False, True, "a ROCm 6.2 build"),
])
def test_the_build_check(version, cuda, hip, gpu, ok, says):
    got_ok, line = check_torch.verdict(version, cuda, hip, gpu)
    assert got_ok == ok and says in line and "\n" not in line
    if not ok:
        assert "pip uninstall -y torch" in line and "SPTBENCH_TORCH_INDEX" in line


def fake_torch(version: str, cuda: str | None) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.__version__ = version
    torch.version = types.SimpleNamespace(cuda=cuda, hip=None)
    return torch


def test_check_fails_for_a_cuda_build_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", fake_torch("2.14.1+cu128", "12.8"))
    monkeypatch.setattr(check_torch, "gpu_answers", lambda: False)
    assert check_torch.main([]) == 1
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.splitlines()) == 1


def test_check_passes_a_cpu_build(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", fake_torch("2.13.0+cpu", None))
    monkeypatch.setattr(check_torch, "gpu_answers", lambda: False)
    assert check_torch.main([]) == 0
    assert capsys.readouterr().out == "install: torch 2.13.0+cpu, a CPU build; no NVIDIA GPU answers\n"


def test_check_without_torch_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
    assert check_torch.main([]) == 1
    assert capsys.readouterr().err.startswith("install: torch does not import")


def test_gpu_answers_asks_nvidia_smi(tmp_path, monkeypatch):
    for gpu in (True, False):
        (tmp_path / f"bin{gpu}").mkdir()
        smi = tmp_path / f"bin{gpu}" / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\nexit {0 if gpu else 9}\n")
        smi.chmod(0o755)
        monkeypatch.setenv("PATH", str(smi.parent))
        assert check_torch.gpu_answers() is gpu
    monkeypatch.setenv("PATH", str(tmp_path))
    assert check_torch.gpu_answers() is False
