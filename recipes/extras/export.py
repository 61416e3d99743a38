"""Shareable pretrained bodies: export one, fine-tune from one.

    python -m recipes.extras.export SOURCE OUT     # SOURCE: a recipe=spt run folder, or <cache_dir>/pretrain/<key>
    python run.py recipe=supervised finetune.init_from=OUT [the arch options it was pretrained with]

OUT holds `model.safetensors` (the Body's weights: encoder.* and backbone.*, no pickle) and `config.json`:
the arch config the weights need, the vocabulary size, the pretraining key and what it depends on (data,
objective, settings), the task config when exported from a run, and the weights' sha256. The folder can
be shared as it is (e.g. a Hugging Face Hub repository) instead of pretraining again.

A run with finetune.init_from records where its weights came from: the file's sha256 and the pretraining
key stand in the config hash (experiment.hashed_config) and result.json's `init_from`. A mismatched
arch config or vocabulary is refused with one line, before any data is prepared.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from recipes.engine import checkpoint
from recipes.errors import USER_ERRORS, CheckpointError, ConfigError

WEIGHTS, CONFIG = "model.safetensors", "config.json"
KIND = "sptbench-body"


def safetensors_torch():
    try:
        import safetensors.torch
    except ImportError as exc:
        raise ConfigError("shared bodies need the safetensors package: pip install -e \".[safetensors]\" "
                          "(or pip install safetensors)") from exc
    return safetensors.torch


def pretrain_dir(source: Path) -> tuple[Path, dict | None]:
    """-> (the pretraining cache folder, the run's result.json or None) for a run folder or a cache folder."""
    if (source / "depends_on.json").exists():
        return source, None
    result = checkpoint.read_intact(source / "result.json")
    if result is None:
        raise ConfigError(f"{source} is neither a run folder with result.json nor a pretraining cache folder "
                          "(<cache_dir>/pretrain/<key>, with depends_on.json)")
    if result.get("status") != "ok" or "pretrain" not in result:
        raise ConfigError(f"{source} holds no finished pretraining (status {result.get('status')}, recipe "
                          f"{result.get('recipe')}): export a completed recipe=spt run")
    folder = Path(result["pretrain"]["dir"])
    if not (folder / "depends_on.json").exists():
        raise ConfigError(f"the pretrained body of {source} was in {folder}, which is gone: rerun the run, or "
                          "give its cache folder (<cache_dir>/pretrain/<key>)")
    return folder, result


def export(source: Path, out: Path) -> Path:
    """Write OUT/model.safetensors and OUT/config.json from a finished pretraining; -> OUT."""
    st = safetensors_torch()
    folder, result = pretrain_dir(Path(source))
    depends_on = checkpoint.read_json(folder / "depends_on.json")
    key = folder.name
    if not (folder / "done.json").exists():
        raise ConfigError(f"pretraining in {folder} has not finished (no done.json): run it to the end first")
    state = checkpoint.load(folder / "best.pt", {"pretrain": key})
    body = {k.removeprefix("body."): v.contiguous() for k, v in state["model"].items() if k.startswith("body.")}
    out = Path(out)
    weights = st.save(body, metadata={"kind": KIND, "pretrain_key": key})
    checkpoint.atomic_write(out / WEIGHTS, lambda f: f.write(weights))
    config = {"kind": KIND, "format": checkpoint.FORMAT, "pretrain_key": key, "arch": depends_on["arch"],
              "vocab_size": depends_on["vocab_size"], "depends_on": depends_on,
              "task": (result or {}).get("config", {}).get("task"),
              # file_sha256: the file's bytes, to catch a damaged copy; weights_sha256: its tensors in name order,
              # the body's identity (safetensors orders its header freely: two exports of one body differ).
              "file_sha256": hashlib.sha256(weights).hexdigest(), "weights_sha256": tensors_digest(body),
              "exported_from": str(source)}
    checkpoint.write_json(out / CONFIG, config)
    return out


def tensors_digest(tensors: dict) -> str:
    return checkpoint.fingerprint(dict(sorted(tensors.items())))


def read(path) -> tuple[dict, bytes]:
    """-> (config.json, the weights' bytes) of an exported body, checked: ours, this code's format, intact."""
    folder = Path(path)
    if folder.name == WEIGHTS:
        folder = folder.parent
    if not (folder / CONFIG).exists() or not (folder / WEIGHTS).exists():
        raise ConfigError(f"finetune.init_from={path}: no {CONFIG} and {WEIGHTS} there; give a folder written "
                          "by python -m recipes.extras.export")
    config = checkpoint.read_json(folder / CONFIG)
    if config.get("kind") != KIND:
        raise ConfigError(f"finetune.init_from={path}: {CONFIG} is not an sptbench body (kind {config.get('kind')!r})")
    if config.get("format") != checkpoint.FORMAT:
        raise ConfigError(f"finetune.init_from={path} has format {config.get('format')}, this code reads format "
                          f"{checkpoint.FORMAT}: export it again with this version")
    weights = (folder / WEIGHTS).read_bytes()
    if hashlib.sha256(weights).hexdigest() != config.get("file_sha256"):
        raise ConfigError(f"finetune.init_from={path}: {WEIGHTS} does not match the file_sha256 in {CONFIG} "
                          "(damaged or incomplete download): fetch or export it again")
    return config, weights


def source(path, arch: dict, recipe: str) -> dict:
    """Where finetune.init_from's weights come from, for the config hash: {"weights_sha256", "pretrain_key"}.
    ConfigError for another recipe than supervised, a bad file, or an arch config other than its own."""
    if recipe != "supervised":
        raise ConfigError(f"finetune.init_from is for recipe=supervised (fine-tuning a shared body); recipe={recipe} "
                          "builds its own body: drop finetune.init_from or use recipe=supervised")
    if not isinstance(path, str):
        raise ConfigError(f"finetune.init_from={path!r} must be the path of an exported body, or null")
    config, _ = read(path)
    if config["arch"] != arch:
        raise ConfigError(f"finetune.init_from={path} was pretrained with another arch config (this run -> the "
                          f"body's: {checkpoint.describe_diff({'arch': arch}, {'arch': config['arch']})}): set the "
                          "body's values (its config.json lists them)")
    return {"weights_sha256": config["weights_sha256"], "pretrain_key": config["pretrain_key"]}


def check_vocab(config: dict, path, spec) -> None:
    """ConfigError when the body's vocabulary size is not the task's (`spec`, tasks.base.TaskSpec)."""
    if config["vocab_size"] != spec.vocab_size:
        raise ConfigError(f"finetune.init_from={path} has a vocabulary of {config['vocab_size']} ids, task "
                          f"'{spec.name}' has {spec.vocab_size}: fine-tune it on the task it was pretrained on")


def load_body(body, path, expected: dict, spec) -> dict:
    """Load the exported weights at `path` into `body` (recipes.model.Body). expected: source()'s record,
    checked again (the file may have changed since). -> what result.json records under init_from."""
    config, weights = read(path)
    check_vocab(config, path, spec)
    tensors = safetensors_torch().load(weights)
    if tensors_digest(tensors) != expected["weights_sha256"]:
        raise CheckpointError(f"finetune.init_from={path} changed while the run started: run again")
    checkpoint.load_weights(body, tensors, Path(path))
    return {"path": str(path), **expected, "depends_on": config["depends_on"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.extras.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a recipe=spt run folder, or <cache_dir>/pretrain/<key>")
    parser.add_argument("out", type=Path, help="folder to write model.safetensors and config.json into")
    args = parser.parse_args(argv)
    try:
        out = export(args.source, args.out)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {out / WEIGHTS} and {out / CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
