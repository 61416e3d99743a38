"""The README and docs/ cannot go stale unnoticed: every relative link and #anchor resolves, every file
path they name in backticks exists, every `python run.py ...` they show composes with conf/ (each value of
a sweep), every `python -m <our module> --flag` names a flag that module has, and the example log lines
are what a real run prints (numbers masked) — and, for the command they are shown for, its numbers."""

from __future__ import annotations

import importlib.util
import logging
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, make_cfg

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OURS = ("archs", "tasks", "recipes", "reports", "bench", "run")  # the repository's own top-level modules


def split(page: Path) -> tuple[list[str], list[str]]:
    """(prose lines, code lines) of a page: fenced blocks and 4-space indented example blocks are code."""
    prose, code, fenced = [], [], False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced or (line.startswith("    ") and not line.lstrip().startswith(("-", "|"))):
            code.append(line)
        else:
            prose.append(line)
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> Iterator[str]:
    seen: dict[str, int] = {}  # a repeated heading gets -1, -2, ...
    for line in split(page)[0]:
        if m := re.match(r"#{1,6} (.+)", line):
            base = slug(m.group(1))
            seen[base] = seen.get(base, -1) + 1
            yield base if seen[base] == 0 else f"{base}-{seen[base]}"


def links(page: Path) -> list[str]:
    return [t for line in split(page)[0] for t in re.findall(r"\]\(([^)\s]+)\)", line)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_anchors_resolve(page):
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}: {file} does not exist"
        if anchor:
            assert anchor in anchors(file), f"{page.name}: link to {target}: no such heading in {file.name}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    assert set(PAGES[1:]) <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_paths_named_in_backticks_exist(page):
    """`recipes/engine/loop.py`, `conf/arch/`: a concrete path into the repository (no placeholder or glob)."""
    top = r"(?:archs|tasks|recipes|reports|bench|conf|scripts|tests|docs|\.ci)/"
    for line in split(page)[0]:
        for path in re.findall(rf"`({top}[\w./+-]*)`", line):
            assert (ROOT / path).exists(), f"{page.name}: `{path}` does not exist"


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page, words) for every python/torchrun command in a code block, and every inline one in prose;
    continuation lines joined, comments dropped, `&&` chains split, leading VAR=value and
    `taskset ... env` dropped."""
    out = []
    for page in PAGES:
        prose, code = split(page)
        joined = re.sub(r"\\\n\s*", " ", "\n".join(code))
        for line in joined.splitlines() + [c for ln in prose for c in re.findall(r"`((?:python|torchrun) [^`]+)`", ln)]:
            for part in re.sub(r"\s#.*$", "", line.strip()).split("&&"):
                part = re.sub(r"^(taskset -c \S+ env )?(\w+=\S+ )*", "", part.strip())
                if part.startswith(("python ", "torchrun ")):
                    out.append((page.name, shlex.split(part)))
    return out


def run_py_overrides(words: list[str]) -> list[str] | None:
    """The overrides of a `python run.py ...` or `torchrun ... run.py ...` command; None for another command."""
    if "run.py" not in words:
        return None
    return [w for w in words[words.index("run.py") + 1:] if not w.startswith("-")]


RUN_COMMANDS = [(page, " ".join(w)) for page, w in shown_commands() if run_py_overrides(w) is not None]
# Left out, as they need what only their user has: their own package (hydra.searchpath), or "..." for
# the rest of a command (several machines under torchrun).
SKIPPED = [(page, c) for page, c in RUN_COMMANDS if "hydra.searchpath" in c or "..." in c]


def is_sweep(value: str) -> bool:
    return "," in value and not value.startswith(("[", "{"))


def test_the_docs_show_run_commands():
    assert len(RUN_COMMANDS) > 20 and len(SKIPPED) <= 2, SKIPPED


@pytest.mark.slow
def test_every_run_command_composes():
    """Each override list, with each value of a swept key in turn, composes with conf/ and passes the
    run's value checks — the same as `python run.py ... --dry-run` up to building the model."""
    from recipes import config_schema, experiment

    done = set()  # many commands share variants: compose each once
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for page, command in RUN_COMMANDS:
            if (page, command) in SKIPPED:
                continue
            overrides = [re.sub(r"<[^>]+>", "x", o) for o in run_py_overrides(shlex.split(command))]  # <yours>
            pairs = [o.partition("=")[::2] for o in overrides]
            first = [f"{k}={v.split(',')[0]}" if is_sweep(v) else f"{k}={v}" for k, v in pairs]
            variants = [first]
            for i, (key, value) in enumerate(pairs):
                if is_sweep(value) and key != "seed":  # another seed composes no other file
                    variants += [[*first[:i], f"{key}={v}", *first[i + 1:]] for v in value.split(",")[1:]]
            for variant in variants:
                if tuple(variant) in done:
                    continue
                done.add(tuple(variant))
                try:
                    cfg = compose("config", overrides=variant)
                    config_schema.check(cfg, experiment.recipe_module(cfg.recipe.name).STAGES)
                except Exception as exc:
                    pytest.fail(f"{page}: {command}\n  {' '.join(variant)}: {type(exc).__name__}: {exc}")


def test_every_module_command_has_its_flags():
    """`python -m bench.throughput --paper`: the module is ours, exists, and its source defines --paper."""
    checked = 0
    for page, words in shown_commands():
        command = " ".join(words)
        if words[0] != "python" or words[1] != "-m":
            continue
        module = words[2]
        if module.split(".")[0] not in OURS:
            continue
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{page}: {command}: no module {module}"
        origin = Path(spec.origin)
        source = (origin.parent / "__main__.py" if origin.name == "__init__.py" else origin).read_text()
        for flag in (w.partition("=")[0] for w in words if w.startswith("--")):
            assert f'"{flag}"' in source, f"{page}: {command}: {module} has no {flag}"
        checked += 1
    assert checked >= 10


# The example log lines. They are shown for the command in the sentence just before them.

def example(prefix: str) -> str:
    (line,) = [ln.strip() for page in PAGES for ln in split(page)[1] if ln.strip().startswith(prefix)]
    return line


def shape(line: str) -> str:
    """A log line with what varies between runs masked: numbers, the folder, the implementation."""
    line = re.sub(r"folder \S+$", "folder PATH", line)
    line = re.sub(r"impl \w+", "impl IMPL", line)
    return re.sub(r"\d[\d,]*(\.\d+)?(e-?\d+)?", "N", line)


@pytest.mark.slow
def test_the_example_log_lines_are_what_a_run_prints(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    tiny = ["arch=mamba", "recipe=spt", "progress=false", "baselines=false", "probes.enabled=false",
            "task.n_train=64", "task.n_val=32", "task.n_test=32", "task.max_length=24", "arch.d_model=16",
            "arch.n_layers=1", "pretrain.epochs=1", "finetune.epochs=1", "pretrain.warmup_steps=1",
            "finetune.warmup_steps=1"]
    from recipes import experiment

    experiment.run(make_cfg(tiny, tmp_path), tmp_path / "run")
    printed = [r.getMessage() for r in caplog.records]
    for prefix in ("run: ", "stage pretrain: "):
        (line,) = [m for m in printed if m.startswith(prefix)]
        assert shape(example(prefix)) == shape(line)


def test_the_example_log_lines_have_their_commands_numbers():
    """The numbers, computed without data: the model's sizes and each stage's plan (as train.py counts)."""
    import math

    from recipes import experiment
    from recipes.model import n_params

    text = (ROOT / "docs" / "running.md").read_text()
    (command,) = re.findall(r"For `(python run.py [^`]+)`:\n\n    run: ", text)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=run_py_overrides(shlex.split(command)))
    task = experiment.build_task(cfg.task)
    body = experiment.build_body(cfg, task)
    header = example("run: ")
    assert header.startswith(f"run: task {cfg.task.name} | arch {cfg.arch.name} | recipe {cfg.recipe.name} | "
                             f"seed {cfg.seed} | params {n_params(body.backbone):,} backbone + "
                             f"{n_params(body.encoder):,} encoder | ")
    hp = cfg.pretrain
    per_epoch = math.ceil(cfg.task.n_train / hp.batch_size)
    assert example("stage pretrain: ") == (
        f"stage pretrain: {hp.epochs * per_epoch} steps ({hp.epochs} epochs of {per_epoch}), batch size "
        f"{hp.batch_size}, lr {hp.lr:g}, warmup {hp.warmup_steps}, validation every {per_epoch} steps")
