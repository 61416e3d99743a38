"""sptbench entry point: python run.py arch=<a> task=<t> recipe=<r> [key=value ...] (-m for grids).

Wiring only: Hydra composes conf/, recipes.experiment.run does the work. Mistakes the user can
fix end as one `error:` line and exit status 2; a diverged run is recorded and exits 1.
A sweep (-m) runs every job whatever happens to the others, builds the report in the sweep folder
(reports/hook.py, `hydra.callbacks.report`), then exits 1 if any job or the report failed — also
with `hydra/launcher=slurm` or `submitit_local`, whose jobs run in other processes (FAILED_DIR).
Under torchrun every rank runs this file; ranks other than 0 write no Hydra files and no report.
"""

import difflib
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parent / "conf"
GROUPS = ("arch", "task", "recipe", "experiment", "logger")
log = logging.getLogger("sptbench")
FAILED: list[str] = []  # jobs of a multirun that did not succeed; the sweep goes on, then exits 1
# A launcher such as submitit runs each job in another process, or on another machine, where FAILED is
# a copy: such a job also leaves its line in FAILED_DIR, read when the sweep ends. The folder is under
# the working directory, which SLURM jobs share with the process that submitted them.
LAUNCHER_PID = os.getpid()
FAILED_DIR = Path.cwd() / ".sptbench_failed" / f"{LAUNCHER_PID}-{time.time_ns()}"


def job_failed(line: str, job_num: int) -> None:
    FAILED.append(line)
    if os.getpid() != LAUNCHER_PID:
        FAILED_DIR.mkdir(parents=True, exist_ok=True)
        (FAILED_DIR / f"{job_num}.txt").write_text(line)


def collect_failed() -> None:
    """Add the lines jobs in other processes left in FAILED_DIR to FAILED, then remove it."""
    if FAILED_DIR.is_dir():
        FAILED.extend(p.read_text() for p in sorted(FAILED_DIR.glob("*.txt"), key=lambda p: int(p.stem)))
        shutil.rmtree(FAILED_DIR)
        if not any(FAILED_DIR.parent.iterdir()):
            FAILED_DIR.parent.rmdir()


def folder_name(overrides: str) -> str:
    """Hydra's override_dirname ('finetune.lr=0.001,seed=...') made safe as one folder name: no '/',
    and when too long for a file system, shortened with a hash of the whole so it stays unique."""
    name = overrides.replace("/", "_")
    if len(name) <= 120:
        return name
    return f"{name[:100].rsplit(',', 1)[0]},+{hashlib.sha256(name.encode()).hexdigest()[:10]}"


OmegaConf.register_new_resolver("folder", folder_name, replace=True)


def check_group_choices(argv: list[str]) -> str | None:
    """Unknown arch/task/recipe names as one line, before Hydra's multi-line message."""
    if any(a.startswith(("hydra.searchpath", "+hydra.searchpath", "--config-dir", "-cd")) for a in argv):
        return None  # the user brings their own config folders: let Hydra resolve names
    for arg in argv:
        group, sep, value = arg.partition("=")
        if not sep or group not in GROUPS or value in ("null", ""):
            continue
        known = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in known:
                return (f"unknown {group} '{choice}': choose one of {', '.join(known)} (or add conf/{group}/"
                        f"{choice}.yaml, or a config folder of your own: hydra.searchpath=[file://FOLDER])")
    return None


def check_launcher(argv: list[str]) -> str | None:
    """A cluster launcher without its plugin as one line, before Hydra's multi-line message."""
    import importlib.util

    for arg in argv:
        group, sep, value = arg.partition("=")
        if group == "hydra/launcher" and (value == "slurm" or value.startswith("submitit")):
            if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
                return (f"hydra/launcher={value} needs Hydra's submitit launcher: pip install -e \".[cluster]\" "
                        "(or pip install hydra-submitit-launcher)")
    return None


def check_overrides(argv: list[str]) -> str | None:
    """A misspelt key, a word where a number goes, or a setting its schema refuses (check_settings), as
    one line with exit status 2 before Hydra makes a run folder (Hydra itself prints a multi-line message
    and exits 1). The command's overrides are composed once here, a sweep by the first value of each swept
    key. Anything this check cannot judge (config folders of the user's own, flags, a failure that is not a
    composition error) is left to Hydra."""
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):  # --config-dir, --cfg, --help, ...: Hydra's business
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        first = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override()
                 else o.input_line for o in parsed]
    except OverrideParseException as exc:
        return f"cannot read the override: {str(exc).splitlines()[0]}"
    except Exception:  # e.g. an interval sweep (an optimizer's range): no first value to try
        return None
    groups = [line for o, line in zip(parsed, first) if "/" in o.key_or_group or o.key_or_group in GROUPS]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            base = compose("config", groups)  # the defaults of the chosen arch, task, ...: the types to expect
            cfg = compose("config", first)
    except ConfigCompositionException as exc:
        cause = exc.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
            key = cause.full_key
            leaves = _leaf_keys(OmegaConf.to_container(base))
            siblings = [k for k in leaves if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
            close = difflib.get_close_matches(key, siblings or leaves, n=1)
            hint = f": did you mean {close[0]}?" if close else ""
            return f"unknown key {key}{hint} (a key that is not in the config is added with +{key}=...)"
        return None  # let Hydra say it in full
    except Exception:
        return None
    problem = check_settings(cfg)
    if problem:
        return problem
    for o, line in zip(parsed, first):
        key = o.key_or_group
        if o.type.name != "CHANGE" or "/" in key or key in GROUPS or key.startswith("hydra."):
            continue
        default = OmegaConf.select(base, key, default=None)
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and isinstance(value, str) and not line.partition("=")[2].startswith("${"):
            return f"{key}={value!r} must be a number (its default is {default})"
    return None


def check_settings(cfg: DictConfig) -> str | None:
    """The composed settings against their schemas (recipes/config_schema.py), so that a bad value
    is refused before Hydra makes a run folder; the run checks them again (a sweep's other values)."""
    from recipes import config_schema
    from recipes.errors import ConfigError
    from recipes.experiment import recipe_module

    try:
        config_schema.check(cfg, recipe_module(cfg.recipe).STAGES)
    except ConfigError as exc:
        return str(exc)
    except Exception:  # e.g. an interpolation that resolves only under Hydra: the run says it
        return None
    return None


def _leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def check_output_folder(argv: list[str]) -> str | None:
    """An output folder that cannot be written, as one line: Hydra creates it before main() runs
    and would fail with a traceback."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in ("out_root", "hydra.run.dir", "hydra.sweep.dir") and "$" not in value:
            from recipes.errors import unwritable  # here: it imports torch, which --help need not wait for

            problem = unwritable(Path(value))
            if problem:
                return f"{key}={value} cannot be written ({problem}): point it at a writable folder"
    return None


def to_run_log(message: str) -> None:
    """`message` into the job's run.log (Hydra's file handler) only, not again on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from recipes import experiment
    from recipes.engine import guard
    from recipes.errors import USER_ERRORS, TrainingDiverged

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN  # in a sweep, one bad job must not stop the others
    try:
        with guard.sigterm_saves():  # a preempted run saves a checkpoint, then exits 143
            experiment.run(cfg, Path(hc.runtime.output_dir), sweep=multirun)  # its report lists it, reads test
    except USER_ERRORS as exc:
        to_run_log(str(exc))  # for a sweep's report (reports/load.py: last_error); the terminal gets it once
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        job_failed(f"{hc.runtime.output_dir}: {exc}", hc.job.num)
    except TrainingDiverged as exc:
        print(f"failed: {exc} (recorded in result.json)", file=sys.stderr)
        if not multirun:
            sys.exit(1)
        job_failed(f"{hc.runtime.output_dir}: {exc}", hc.job.num)
    except guard.Preempted as exc:  # the whole process is going: a sweep stops here too
        print(f"preempted: {exc}; run the same command to resume", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if not multirun:
            raise
        # Recorded as failed in result.json by experiment.run; the traceback goes to the job's run.log.
        # Hydra would stop the sweep here (and skip its report); the other jobs deserve to run.
        log.exception("job failed: %s: %s", type(exc).__name__, exc)
        job_failed(f"{hc.runtime.output_dir}: {type(exc).__name__}: {exc}", hc.job.num)


if __name__ == "__main__":
    if "--dry-run" in sys.argv:  # list the runs, their size, steps and GPU hours; train nothing (bench/plan.py)
        from bench import plan

        sys.exit(plan.main([a for a in sys.argv[1:] if a not in ("--dry-run", "-m", "--multirun")]))
    problem = (check_group_choices(sys.argv[1:]) or check_launcher(sys.argv[1:]) or check_overrides(sys.argv[1:])
               or check_output_folder(sys.argv[1:]))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 alone writes the run folder and its run.log
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.callbacks.report.enabled=false"]
    main()
    collect_failed()
    from reports import hook  # loaded by Hydra when a sweep configured the report callback

    if FAILED:
        print(f"error: {len(FAILED)} job(s) of the sweep did not succeed:", *FAILED, sep="\n  ", file=sys.stderr)
    if FAILED or hook.FAILED:
        sys.exit(1)
