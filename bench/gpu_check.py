"""The first look at a GPU machine, in one command and at most --budget seconds (default 8 minutes):

    python -m bench.gpu_check [--out runs/gpu_check]

Steps, each a subprocess with its share of the time left, whatever happens to the others:
1. `env`: the GPU, driver, torch and CUDA versions (nvidia-smi, torch.cuda);
2. `mamba_ssm`: whether mamba-ssm imports; if not, one `pip install mamba-ssm` try (it compiles CUDA
   code, so this says whether the machine can build it; --no-install skips it);
3. `parity`: the CUDA parity tests of tests/test_parity.py — mamba-ssm's fused kernels against our
   PyTorch path where mamba-ssm imports, and every backbone's CUDA path against its CPU reference;
4. `listops_spt`: a few hundred steps of the paper-scale ListOps Transformer with SPT (generated data,
   fewer examples so generating them takes seconds), through run.py;
5. `throughput`: `python -m bench.throughput --device cuda --paper` (a few timed steps each) in the
   time left: last, because it is the one whose printed rows still say something when cut short.
Writes <out>/summary.json and <out>/summary.md: per step its command, status (ok | failed | timeout |
skipped), seconds, and the numbers it produced (tokens/s table, test accuracy, pretraining loss).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SPT_STEPS = 200  # per stage: a few hundred steps of the paper-scale model in all
ENV_PROBE = ("import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); "
             "print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)")


def steps(out: Path, install: bool) -> list[dict]:
    """The checks, in order: name, argv, the share of the remaining budget it may take, and (for the
    mamba step) what to try when the first command fails."""
    run_dir = out / "listops_spt"
    return [
        {"name": "env", "argv": ["sh", "-c", f"nvidia-smi --query-gpu=name,driver_version,memory.total "
                                             f"--format=csv,noheader; {PY} -c \"{ENV_PROBE}\""], "share": 0.1},
        {"name": "mamba_ssm", "argv": [PY, "-c", "import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)"],
         "share": 0.1, "install": [PY, "-m", "pip", "install", "--no-build-isolation", "--retries", "1", "--timeout",
                                   "20", "mamba-ssm"] if install else None},  # fails fast on a machine off the net
        {"name": "parity", "argv": [PY, "-m", "pytest", "-q", "-rs", "tests/test_parity.py", "-k", "cuda"],
         "share": 0.3},
        {"name": "listops_spt", "argv": [PY, "run.py", "experiment=lra_listops", "arch=transformer", "recipe=spt",
                                         "task.n_train=2000", "task.n_val=200", "task.n_test=200",
                                         f"pretrain.max_steps={SPT_STEPS}", f"finetune.max_steps={SPT_STEPS}",
                                         "pretrain.warmup_steps=20", "finetune.warmup_steps=20",
                                         f"pretrain.eval_every={SPT_STEPS}", f"finetune.eval_every={SPT_STEPS}",
                                         "progress=false", "baselines=false", f"out_root={out / 'runs'}",
                                         f"hydra.run.dir={run_dir}"], "share": 0.5, "result": run_dir / "result.json"},
        {"name": "throughput", "argv": [PY, "-m", "bench.throughput", "--device", "cuda", "--paper", "--steps", "3",
                                        "--warmup", "1", "--timeout", "60", "--out", str(out / "bench")], "share": 1.0},
    ]


def execute(argv: list[str], timeout: float) -> tuple[int | None, str, float]:
    """-> (exit status, None on timeout; the last 4000 characters of its output; seconds)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout))
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:  # what it printed so far comes as bytes, whatever text=True says
        code, text = None, "".join(t.decode(errors="replace") if isinstance(t, bytes) else t
                                   for t in (exc.stdout, exc.stderr) if t)
    except OSError as exc:
        code, text = 127, str(exc)
    return code, text[-4000:], round(time.perf_counter() - start, 1)


def status(code: int | None) -> str:
    return "timeout" if code is None else "ok" if code == 0 else "failed"


def numbers(step: dict, out: Path) -> dict:
    """What a finished step measured, read from the files it wrote."""
    if step["name"] == "throughput":
        table = out / "bench" / "throughput-cuda.md"
        return {"table": table.read_text()} if table.is_file() else {}
    if "result" in step and step["result"].is_file():
        result = json.loads(step["result"].read_text())
        return {k: result.get(k) for k in ("status", "metrics", "steps", "params", "wall_time_s", "hardware")}
    return {}


def check(out: Path, budget: float, install: bool, run=None) -> list[dict]:
    """Run the steps within `budget` seconds -> one entry per step. `run(argv, timeout)` as `execute`."""
    run = run or execute
    deadline = time.monotonic() + budget
    report = []
    for step in steps(out, install):
        left = deadline - time.monotonic()
        if left < 5:
            report.append({"name": step["name"], "status": "skipped", "reason": "the time budget is spent"})
            continue
        code, text, seconds = run(step["argv"], left * step["share"])
        entry = {"name": step["name"], "command": " ".join(map(str, step["argv"])), "status": status(code),
                 "seconds": seconds, "output_tail": text}
        if code != 0 and step.get("install"):  # mamba-ssm missing: can this machine build it?
            code, text, more = run(step["install"], (deadline - time.monotonic()) * 0.25)
            entry.update(install={"command": " ".join(step["install"]), "status": status(code), "seconds": more,
                                  "output_tail": text})
            if code == 0:
                code, text, _ = run(step["argv"], 60)
                entry.update(status=status(code), output_tail=text)
        if step["name"] == "mamba_ssm" and entry["status"] != "ok":
            entry["note"] = "no mamba-ssm: the parity step checks our PyTorch path on CUDA against the CPU only"
        entry.update(numbers(step, out))
        report.append(entry)
    return report


def render(report: list[dict]) -> str:
    lines = ["| step | status | seconds | |", "|---|---|---|---|"]
    for r in report:
        lines.append(f"| {r['name']} | {r['status']} | {r.get('seconds', '')} | {r.get('note', r.get('reason', ''))} |")
    for r in report:
        if r.get("table"):
            lines += ["", "## throughput", r["table"]]
        if r.get("metrics"):
            lines += ["", f"## {r['name']}", "```", json.dumps({k: r[k] for k in ("metrics", "steps", "wall_time_s")
                                                              if k in r}, indent=1), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    ap.add_argument("--budget", type=float, default=480, help="seconds for all steps together")
    ap.add_argument("--no-install", action="store_true", help="do not try pip install mamba-ssm")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU here: run python -m bench.gpu_check on the GPU machine", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = check(out, args.budget, not args.no_install)
    (out / "summary.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "summary.md").write_text(render(report) + "\n")
    print(render(report))
    print(f"saved {out / 'summary.json'} and summary.md")
    return 0 if all(r["status"] == "ok" or r["name"] == "mamba_ssm" for r in report) else 1


if __name__ == "__main__":
    sys.exit(main())
