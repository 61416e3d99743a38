"""The classes that configs name with `_target_`, for built-in and out-of-tree plugins alike.

A backbone or task may live in the user's own package (`_target_: mylab.backbones.GRU`). We import
it here rather than let Hydra's instantiate do it: a failed lookup there logs several
`[hydra.utils][ERROR]` lines of its own before its exception, and says nothing of the usual fix.
"""

from __future__ import annotations

import importlib
import inspect

from recipes.errors import ConfigError


def locate(target, owner: str) -> type:
    """The class named by `target` ('package.module.Class'). `owner` ("arch 'gru'") starts the
    one-line ConfigError raised when it cannot be imported."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{owner}: _target_={target!r} must be a dotted path such as mylab.backbones.GRU")
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):  # the plugin itself, not one of its imports
            raise ConfigError(f"{owner}: cannot import module {module_name!r} (of _target_ {target}): put its "
                              "package on PYTHONPATH or pip install -e it") from exc
        raise ConfigError(f"{owner}: importing {module_name} needs {exc.name!r}, which is not installed "
                          f"(pip install it)") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"{owner}: module {module_name} has no {attr!r} (_target_ {target})")
    return cls


def accepts(cls, name: str) -> bool:
    """Whether cls(...) takes a keyword `name` (explicitly, or through **kwargs)."""
    params = inspect.signature(cls).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
