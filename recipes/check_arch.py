"""The conformance checks of tests/test_backbones.py on backbone YAMLs anywhere, e.g. a plugin's:

    python -m recipes.check_arch PATH/gru.yaml [MORE.yaml ...]

Each YAML (and its other direction, when it has a `causal` or `bidirectional` option) is built at
a small size (archs.conformance.SMALL) exactly as run.py builds it, then checked for shapes and
gradients, padding invariance, direction (causal when declared, bidirectional otherwise), a
state-dict round trip, determinism under a seed, and learning a small task. One line per check;
exit status 1 if any failed, 2 if a YAML cannot be read or its class imported (put the plugin's
package on PYTHONPATH or pip install -e it).

It lives in recipes/, not archs/: it must build backbones with the very rules a run uses
(recipes.model.build_backbone), not a copy of them, and archs/ imports nothing from recipes/.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from archs import conformance
from archs.base import is_causal


def load(path: Path) -> DictConfig:
    """The arch config in `path`, its name defaulting to the file's (as the config group choice does)."""
    from omegaconf.errors import OmegaConfBaseException

    from recipes.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give the path of a backbone YAML such as conf/arch/gru.yaml")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError) as exc:  # YAML syntax errors are ValueErrors
        raise ConfigError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from exc
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        raise ConfigError(f"{path}: a backbone YAML needs `_target_: package.module.Class`")
    return OmegaConf.merge({"name": path.stem}, cfg, conformance.SMALL)


def make(cfg: DictConfig, seed: int):
    from recipes.model import build_backbone

    torch.manual_seed(seed)
    return build_backbone(cfg, max_len=conformance.MAX_LEN).eval()


def check(cfg: DictConfig, label: str) -> list[str]:
    """Run every check on `cfg`; print one line each; return the lines of those that failed."""
    build = partial(make, cfg)
    model = build(0)  # a constructor that refuses its config fails here, as one ConfigError
    # A YAML with no direction option leaves the direction to the module's own `causal` attribute,
    # whose claim the direction check then tests against the module's outputs.
    causal = conformance.declared_causal(cfg) if {"causal", "bidirectional"} & set(cfg) else is_causal(model)
    failed = []
    for name, run_check in conformance.CHECKS.items():
        try:
            run_check(build, causal)
            line = f"ok      {label}: {name}"
        except conformance.CheckFailed as exc:
            line = f"FAILED  {label}: {name}: {exc}"
        except Exception as exc:  # the module itself broke: say where, in one line
            detail = str(exc).splitlines()[0] if str(exc) else ""
            line = f"FAILED  {label}: {name}: {type(exc).__name__}{': ' + detail if detail else ''}"
        print(line, flush=True)
        if line.startswith("FAILED"):
            failed.append(line)
    return failed


def main(argv: list[str]) -> int:
    from recipes.errors import ConfigError

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1])
        return 0 if argv else 2
    failed, total = [], 0
    try:
        for path in map(Path, argv):
            cfg = load(path)
            variants = [{}] + ([conformance.flipped_direction(cfg)] if conformance.flipped_direction(cfg) else [])
            for overrides in variants:
                label = " ".join([str(cfg.name), *(f"{k}={v}" for k, v in overrides.items())])
                failed += check(OmegaConf.merge(cfg, overrides), label)
                total += len(conformance.CHECKS)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{total - len(failed)} of {total} checks passed" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
