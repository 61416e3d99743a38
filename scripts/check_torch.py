"""scripts/install.sh's two checks, in plain Python so that tests can fake what they look at.

    python scripts/check_torch.py --probe URL   # can the torch index at URL be reached? (before installing)
    python scripts/check_torch.py               # which torch is installed, and does it suit this machine?

Each prints one line; a problem is one line with the fix, and exit status 1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TIMEOUT_S = 10  # a reachable index answers in well under this; pip's own retries take minutes


def unreachable(index: str, timeout: float = TIMEOUT_S) -> str | None:
    """Why torch's page on the index `index` cannot be read, or None when it can. The page, not the
    index's root: it is what pip fetches first, and a mirror may serve no root listing."""
    url = index.rstrip("/") + "/torch/"
    if url.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        return None if path.is_dir() else f"{path} is not a folder"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as page:
            page.read(1)
    except urllib.error.HTTPError as exc:  # the server answered, but not with the page
        return f"HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors; a malformed URL a ValueError
        return str(getattr(exc, "reason", None) or exc)
    return None


def probe(index: str, timeout: float = TIMEOUT_S) -> int:
    reason = unreachable(index, timeout)
    if reason is None:
        return 0
    print(f"install: cannot reach the torch index {index} ({reason}): set SPTBENCH_TORCH_INDEX to an index of CPU "
          "builds you can reach, or SPTBENCH_TORCH_INDEX= (empty) to install torch as pip is configured",
          file=sys.stderr)
    return 1


def gpu_answers() -> bool:
    """The same test as install.sh: nvidia-smi exists and lists a GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def verdict(version: str, cuda: str | None, hip: str | None, gpu: bool) -> tuple[bool, str]:
    """(fine?, the line to print) for a torch `version` built for CUDA `cuda` or ROCm `hip` (None: not)."""
    build = f"CUDA {cuda} build" if cuda else f"ROCm {hip} build" if hip else "CPU build"
    where = "an NVIDIA GPU answers" if gpu else "no NVIDIA GPU answers"
    if cuda and not gpu:
        return False, (f"install: torch {version} is a {build} but {where}: it would run on the CPU while carrying "
                       "GBs of CUDA libraries; replace it: python -m pip uninstall -y torch, then bash "
                       "scripts/install.sh with SPTBENCH_TORCH_INDEX set to an index of CPU builds")
    note = "; it will not use the GPU (pip install a CUDA build to use it)" if gpu and not cuda else ""
    return True, f"install: torch {version}, a {build}; {where}{note}"


def check() -> int:
    try:
        import torch
    except ImportError as exc:
        print(f"install: torch does not import ({exc}): run bash scripts/install.sh again and read pip's error",
              file=sys.stderr)
        return 1
    ok, line = verdict(torch.__version__, torch.version.cuda, getattr(torch.version, "hip", None), gpu_answers())
    print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if not argv:
        return check()
    if len(argv) == 2 and argv[0] == "--probe":
        return probe(argv[1])
    print("check_torch: usage: python scripts/check_torch.py [--probe INDEX_URL]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
