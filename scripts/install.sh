#!/usr/bin/env bash
# Install sptbench (editable) into the active Python: torch first, then `pip install -e .`, then
# scripts/check_torch.py says which torch landed. Where no NVIDIA GPU answers, torch comes from an
# index of CPU builds: pip's default wheel would pull ~2.5 GB of CUDA libraries a CPU cannot use.
# The README's Quickstart and .ci/run both install this way (docs/install.md).
#   --dev                 also the test tools (the `dev` extra)
#   SPTBENCH_TORCH        the torch requirement (default: the range of pyproject.toml)
#   SPTBENCH_TORCH_INDEX  where the CPU build comes from (default: PyTorch's CPU index); empty: pip's
#                         own configuration decides (the check after installing still applies)
set -euo pipefail
cd "$(dirname "$0")/.."
target="."
for arg in "$@"; do
    case "$arg" in
        --dev) target=".[dev]" ;;
        *) echo "install: unknown option '$arg': the only option is --dev (adds the test tools)" >&2; exit 2 ;;
    esac
done
torch="${SPTBENCH_TORCH:-torch>=2.3,<3}"
index="${SPTBENCH_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: an NVIDIA GPU answers: $torch as pip is configured (pip's default torch is a CUDA build)"
    python -m pip install "$torch"
elif [ -n "$index" ]; then
    # Probe first, with a short timeout: pip would retry each file for minutes, then fall back to
    # other sources (which may hold a CUDA build) or fail without saying what to change.
    python scripts/check_torch.py --probe "$index"
    echo "install: no NVIDIA GPU: $torch from $index (CPU builds), plus any extra index or find-links in pip's configuration"
    python -m pip install "$torch" --index-url "$index"
else
    echo "install: no NVIDIA GPU, SPTBENCH_TORCH_INDEX empty: $torch as pip is configured"
    python -m pip install "$torch"
fi
echo "install: sptbench: pip install -e \"$target\""
python -m pip install -e "$target"
python scripts/check_torch.py
