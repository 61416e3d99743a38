"""Atomic writes and safe checkpoint loading.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the target: a reader (or a resumed run after `kill -9`) sees the old file or the new one, never a
torn one. Checkpoints hold only tensors and plain Python values and are read with
`torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from recipes.errors import CheckpointError

UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: os.umask can only be read by setting it
FORMAT = 1  # bump when the checkpoint layout changes; older files are refused, not misread


def atomic_write(path: Path, write) -> None:
    """Call write(f) on a temporary file, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; results should be as readable as any file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); delete it to recompute") from exc


def save(path: Path, state: dict) -> None:
    atomic_write(Path(path), lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path, identity: dict) -> dict:
    """Read a checkpoint and check it belongs to `identity` (what produced it: config, stage)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, wrong format
        raise CheckpointError(f"checkpoint {path} cannot be read safely ({type(exc).__name__}); "
                              "delete it to restart this stage") from exc
    found = state.get("format") if isinstance(state, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {found}, this code reads format {FORMAT}; "
                              "delete it to restart this stage")
    if state.get("identity") != identity:
        diff = describe_diff(state.get("identity") or {}, identity)
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ({diff}); "
                              "use another output folder (hydra.run.dir=...) or delete it")
    return state


def load_weights(module: torch.nn.Module, weights: dict, path: Path) -> None:
    """load_state_dict with a one-line error when the architecture does not match."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model (missing {missing[:2]}, unexpected {unexpected[:2]}, "
            f"other shape {shapes[:2]}): it is from another architecture or size; delete it or use matching settings"
        )
    module.load_state_dict(weights)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def describe_diff(old: dict, new: dict, limit: int = 4) -> str:
    """'arch.d_model: 32 -> 64, ...' for the keys that differ."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    parts = [f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}" for k in keys[:limit]]
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more or "no visible difference"
