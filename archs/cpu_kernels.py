"""CPU kernels in C++ (archs/*.cpp), compiled on first use and loaded with ctypes.

Why C++: a recurrence (Mamba's scan) or a sum over a large implicit tensor (S4's Cauchy kernel)
costs PyTorch one full-memory pass per elementwise operation; a loop keeps its values in
registers. The sources are plain C++ behind a C interface: no PyTorch headers, so a build takes
about a second, with the system's C++ compiler ($CXX, else c++).

Each library is cached in $SPTBENCH_KERNEL_CACHE (default ~/.cache/sptbench/kernels) under a hash
of its source, the flags, the compiler and this CPU's model and instruction set (the build uses
-march=native, so a library from another CPU must never be loaded). It is written to a temporary
name and renamed, so concurrent first runs never load a half-written file.

-ffast-math lets the compiler vectorize exp (glibc's libmvec). It may treat NaN loosely inside a
kernel; a non-finite input still yields a non-finite loss, which the training loop stops on.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
FLAGS = ["-O3", "-march=native", "-ffast-math", "-shared", "-fPIC"]


class KernelUnavailable(RuntimeError):
    """A C++ kernel cannot be built or loaded here; the message says why."""


def cpu_signature() -> str:
    """This CPU's model and instruction-set flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(dict.fromkeys(keep))  # the first core's lines; every core repeats them
    except OSError:
        return platform.processor() or platform.machine()


def cache_dir() -> Path:
    if os.environ.get("SPTBENCH_KERNEL_CACHE"):
        return Path(os.environ["SPTBENCH_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sptbench" / "kernels"


def compile_library(cxx: str, source: Path, target: Path) -> None:
    """Compile `source` into `target` (atomically); libmvec is linked where it exists (glibc)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        for libs in (["-lmvec", "-lm"], ["-lm"]):
            out = subprocess.run([cxx, *FLAGS, "-o", tmp, str(source), *libs], capture_output=True, text=True,
                                 timeout=300)
            if out.returncode == 0:
                os.replace(tmp, target)
                return
        lines = (out.stderr or out.stdout).strip().splitlines() or ["no output"]
        raise KernelUnavailable(f"{cxx} failed to build {source.name}: {lines[-1]}")
    finally:
        Path(tmp).unlink(missing_ok=True)


@functools.cache
def library(name: str) -> ctypes.CDLL:
    """archs/<name>.cpp, loaded, built if needed; raises KernelUnavailable with the reason."""
    source = HERE / f"{name}.cpp"
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelUnavailable(f"no C++ compiler ({cxx}: {exc}); install g++ or clang++, or set CXX") from exc
    key = hashlib.sha256("\0".join([source.read_text(), *FLAGS, version, cpu_signature()]).encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KernelUnavailable(f"cannot create {target.parent} ({exc}); set SPTBENCH_KERNEL_CACHE") from exc
        compile_library(cxx, source, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {target} ({exc}); delete it to rebuild") from exc


@functools.cache
def unavailable_reason(name: str) -> str | None:
    """None if archs/<name>.cpp works here, else why not. Cached: `library` caches only successes, and
    impl=auto asks at every forward, where retrying a missing compiler would start a process each time."""
    try:
        library(name)
    except KernelUnavailable as exc:
        return str(exc)
    return None


@functools.cache
def pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="sptbench-kernel")


def workers_for(tasks: int) -> int:
    """How many calls run_tasks splits `tasks` into."""
    return max(1, min(torch.get_num_threads(), tasks))


def run_tasks(fn, tasks: int, *args, per_worker=None) -> None:
    """fn(*args, *per_worker(w), first, last) for each worker w < workers_for(tasks), over disjoint
    ranges [first, last) that cover [0, tasks); per_worker gives what differs between workers (a
    private accumulator, say), nothing if None. ctypes releases the GIL during each call, so the
    ranges run in parallel on torch's thread count."""
    workers = workers_for(tasks)
    bounds = [tasks * i // workers for i in range(workers + 1)]
    calls = [(*args, *(per_worker(w) if per_worker else ()), ctypes.c_long(lo), ctypes.c_long(hi))
             for w, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
    if workers == 1:
        fn(*calls[0])
        return
    for f in [pool(workers).submit(fn, *call) for call in calls]:
        f.result()


def ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def longs(*values: int) -> list[ctypes.c_long]:
    return [ctypes.c_long(v) for v in values]
