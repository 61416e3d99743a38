"""Atomic writes and safe checkpoint loading.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the target: a reader (or a resumed run after `kill -9`) sees the old file or the new one, never a
torn one. Checkpoints hold only tensors and plain Python values and are read with
`torch.load(weights_only=True)`, which refuses arbitrary pickled objects.

Integrity: renames protect against our own crashes, not against a full disk, a bad copy or a
flipped bit, and torch.load happily reads a checkpoint whose tensor bytes were garbled. So every
checkpoint and every JSON file written here carries a sha256 of its content, checked on read. A
file that fails the check raises `Corrupt`; callers move it aside (`quarantine`) and recompute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from recipes.errors import CheckpointError
from recipes.schema import checksum as json_digest  # reports check result.json with the same function

log = logging.getLogger(__name__)
UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: os.umask can only be read by setting it
# The code-compatibility version of checkpoints (and of the pretraining cache key): bump it when the
# checkpoint layout or the meaning of saved weights changes (a backbone's math, an encoder), so that
# older files are refused with a message instead of being misread. 2: content checksums.
FORMAT = 2


class Corrupt(CheckpointError):
    """A file that fails its integrity check (truncated, garbled, not ours): never to be used."""


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


def write_json(path: Path, obj: dict) -> None:
    """A JSON object plus "sha256", the digest of the rest (as read back: tuples become lists)."""
    plain = json.loads(json.dumps(obj, default=str))
    text = json.dumps({**plain, "sha256": json_digest(plain)}, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: Path) -> dict:
    """A JSON object written by write_json; Corrupt when torn, garbled or edited. A file without
    "sha256" (written before checksums) is accepted as it is."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise Corrupt(f"{path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise Corrupt(f"{path} is not a JSON object")
    digest = obj.pop("sha256", None)
    if digest is not None and digest != json_digest(obj):
        raise Corrupt(f"{path} does not match its checksum (damaged or edited)")
    return obj


def read_intact(path: Path) -> dict | None:
    """read_json, or None when the file is absent or damaged (then moved aside, to be recomputed)."""
    if not Path(path).exists():
        return None
    try:
        return read_json(path)
    except Corrupt as exc:
        quarantine([path], exc)
        return None


def quarantine(paths, why: Exception) -> None:
    """Move damaged files aside as <name>.corrupt (kept to inspect, never read again); one warning."""
    moved = []
    for path in map(Path, paths):
        if path.exists():
            os.replace(path, path.with_name(path.name + ".corrupt"))
            moved.append(path.name)
    log.warning("%s; moved %s aside as *.corrupt, recomputing", why, ", ".join(moved))


def fingerprint(state) -> str:
    """sha256 over a checkpoint's tensors (dtype, shape, bytes) and plain values, in order."""
    h = hashlib.sha256()

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                h.update(repr(k).encode())
                walk(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(state)
    return h.hexdigest()


def save(path: Path, state: dict) -> None:
    state = {"format": FORMAT, **state}
    atomic_write(Path(path), lambda f: torch.save({**state, "sha256": fingerprint(state)}, f))


def load(path: Path, identity: dict) -> dict:
    """Read a checkpoint and check it belongs to `identity` (what produced it: config, stage).
    Corrupt when it cannot be read safely or fails its checksum; CheckpointError when it is intact
    but from another code version (FORMAT) or configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle (refused by weights_only), not a checkpoint
        raise Corrupt(f"checkpoint {path} cannot be read safely ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise Corrupt(f"checkpoint {path} cannot be read safely (not a dict)")
    found = state.get("format")
    if found != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {found}, this code reads format {FORMAT} "
                              "(it was written by an incompatible version); delete it to restart this stage")
    if state.pop("sha256", None) != fingerprint(state):
        raise Corrupt(f"checkpoint {path} does not match its checksum (truncated or damaged)")
    if state.get("identity") != identity:
        diff = describe_diff(state.get("identity") or {}, identity)
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ({diff}); "
                              "use another output folder (hydra.run.dir=...) or delete it")
    return state


def discard_if_damaged(paths, identity: dict) -> None:
    """Check the files of one training stage before resuming from them. If any is damaged, move them
    all aside: a stage restarted from scratch reproduces them exactly, a mix of old and new would not."""
    for path in map(Path, paths):
        if not path.exists():
            continue
        try:
            read_json(path) if path.suffix == ".json" else load(path, identity)
        except Corrupt as exc:
            quarantine(paths, exc)
            return


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
