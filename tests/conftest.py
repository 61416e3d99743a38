"""Shared helpers: tiny configurations that train in seconds, in-process and CLI runners; the test tiers.

Tiers. `python -m pytest -m "not slow"` is the fast tier, for the edit-test loop; `python -m pytest`
runs everything (README, .ci/run). The rule for `@pytest.mark.slow`, decided by measurement, not by
guess: a test is slow when

- it took >= 1 s (setup + call + teardown) in `--durations=0` with the suite pinned to one core
  (`OMP_NUM_THREADS=1 taskset -c 0`); the marks were set from such a run on the 2-core development
  machine with a training sweep on both cores, so the cut is below 1 s on an idle core; or
- it starts a Python process that loads torch (`python run.py` past its checks before Hydra,
  torchrun, `-m recipes.check_arch`...): 3-7 s of imports each, whatever the test does. A subprocess that
  stops before importing torch (an unknown group name) takes ~0.3 s and stays in the fast tier.

Every run prints its 15 slowest tests (addopts in pyproject.toml): when a fast test shows up there
at >= 1 s, mark it. A parametrized test is marked per case (`pytest.param(..., marks=...)`) when
only some cases are slow. A module fixture (scope="module") of >= 1 s makes every test that uses
it slow (the reports' synthetic studies). A first-use cost is nobody's: torch.optim's first step
(~1.5 s) lands on whichever test comes first (test_conformance[cnn--determinism] in file order) and
would move to the next one if that test were marked.

Every module of the package has fast tests: `python -m pytest -m "not slow" --check-modules`
(without -n) fails unless each module of archs/, tasks/, recipes/, reports/, bench/ and run.py had
one of its functions called by a fast test (a module without functions: imported).
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent

# A ListOps small enough to learn in seconds on 2 cores, and a 1-layer Transformer.
TINY = [
    "task.n_train=600", "task.n_val=200", "task.n_test=200", "task.min_length=4", "task.max_length=24",
    "arch.d_model=32", "arch.n_layers=1", "arch.n_heads=2",
    "finetune.epochs=8", "finetune.batch_size=32", "finetune.lr=0.003",
    "finetune.warmup_steps=10", "progress=false",
]
TINY_PRETRAIN = ["pretrain.epochs=6", "pretrain.lr=0.003", "pretrain.warmup_steps=10",
                 "pretrain.mask_ratio=0.15"]


def tiny(recipe: str = "spt", *extra: str) -> list[str]:
    return [f"recipe={recipe}", *TINY, *(TINY_PRETRAIN if recipe == "spt" else []), *extra]


def make_cfg(overrides: list[str], tmp_path: Path):
    """Compose conf/ as run.py would, with out_root under tmp_path."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"out_root={tmp_path}", *overrides])


def cli(args: list[str], cwd: Path, timeout: int = 300, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """python run.py ARGS, run from `cwd` (so relative outputs land there), with the folders `path`
    (e.g. a plugin's package) on PYTHONPATH after the repo."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (ROOT, *path))), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tmp_run(tmp_path):
    return tmp_path / "run"


def nan_loss(at_call: int):
    """recipes.stages.classify_loss, except that its loss is NaN at call `at_call` (1-based)."""
    import recipes.stages

    real, calls = recipes.stages.classify_loss, []

    def loss_fn(model, ids, mask, labels):
        loss, c, n = real(model, ids, mask, labels)
        calls.append(1)
        return (loss * float("nan") if len(calls) == at_call else loss), c, n
    return loss_fn


# --check-modules: which files of the package had a function called during a fast test.
PACKAGES = ("archs", "tasks", "recipes", "reports", "bench")
CALLED: set[str] = set()


def pytest_addoption(parser):
    parser.addoption("--check-modules", action="store_true",
                     help="fail unless every module of the package had a function called by a test not marked slow")


def pytest_configure(config):
    if config.getoption("--check-modules") and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--check-modules records calls in this process: run it without -n")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `-n 2` on 2 cores: one thread per worker (and per Python a test starts), not torch's default of
        # one per core each, which oversubscribes the cores (measured: the suite took 646 s that way).
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def record_call(frame, event, arg):
    if event != "call" or not frame.f_code.co_flags & inspect.CO_OPTIMIZED:
        return  # module and class bodies run on import: that is not a test using the module
    caller = frame.f_back
    if caller is not None and caller.f_code.co_filename == frame.f_code.co_filename \
            and not caller.f_code.co_flags & inspect.CO_OPTIMIZED:
        return  # a comprehension or decorator run by the module's own import
    CALLED.add(frame.f_code.co_filename)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    watch = item.config.getoption("--check-modules") and item.get_closest_marker("slow") is None
    if watch:
        sys.setprofile(record_call)
        threading.setprofile(record_call)
    try:
        yield
    finally:
        if watch:
            sys.setprofile(None)
            threading.setprofile(None)


def package_modules() -> list[Path]:
    return [ROOT / "run.py", *(f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py")))]


def has_functions(path: Path) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(ast.parse(path.read_text())))


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--check-modules"):
        return
    imported = {str(Path(m.__file__).resolve()) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    missing = [str(f.relative_to(ROOT)) for f in package_modules()
               if (str(f) not in CALLED if has_functions(f) else str(f) not in imported)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if missing:
        reporter.write_line(f"--check-modules: no fast test uses {', '.join(missing)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        reporter.write_line(f"--check-modules: every one of {len(package_modules())} modules is used by a fast test")
