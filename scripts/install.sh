#!/usr/bin/env bash
# Install sptbench (editable, with its test tools) into the current Python. Where no NVIDIA GPU
# answers, torch comes as a CPU build: the default wheel would pull ~2.5 GB of CUDA libraries that
# a CPU cannot use. Where one does, the default (CUDA) build. The README's Quickstart and .ci/run
# both install this way.
#   SPTBENCH_TORCH        the torch requirement (default: the range of pyproject.toml)
#   SPTBENCH_TORCH_INDEX  where the CPU build comes from (default: PyTorch's CPU index; set it empty
#                         to let pip's own configuration decide, e.g. a local wheel as in our CI)
set -euo pipefail
cd "$(dirname "$0")/.."
torch="${SPTBENCH_TORCH:-torch>=2.3,<3}"
index="${SPTBENCH_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: an NVIDIA GPU answers: the default (CUDA) build of $torch"
    python -m pip install "$torch"
elif [ -n "$index" ]; then
    echo "install: no NVIDIA GPU: a CPU build of $torch from $index"
    python -m pip install "$torch" --index-url "$index"
else
    echo "install: no NVIDIA GPU: $torch as pip is configured"
    python -m pip install "$torch"
fi
python -m pip install -e ".[dev]"
