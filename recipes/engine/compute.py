"""How a run computes — precision, torch.compile, micro-batches, data-loading workers — and the
hardware it ran on. None of it changes what is computed, up to rounding: `compute` is left out of the
config hash (like `device`), and result.json records what was used under `hardware`, so that
reports can tell runs from different machines apart instead of pooling them silently.

Precision `auto` is bf16 autocast on CUDA (the matmuls run on tensor cores; bf16 has fp32's range,
so no loss scaling) and fp32 on CPU. fp16 needs a GradScaler: small gradients would underflow.
"""

from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from recipes.engine import distributed
from recipes.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    precision: str = "fp32"  # what runs: fp32 | bf16 | fp16 (never auto)
    compile: bool = False
    micro_batch_size: int | None = None  # per rank and forward pass; None = the rank's whole share
    num_workers: int = 0
    pin_memory: bool = False

    def autocast(self, device: torch.device):
        dtype = PRECISIONS[self.precision]
        return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


PLAIN = Compute()  # fp32, one forward per share, batches built in the training process


def resolve(cfg: DictConfig, device: torch.device) -> Compute:
    """conf `compute:` -> Compute, with `auto` decided for `device`. Its values' types and ranges are
    checked before (recipes/config_schema.py); what this device cannot do is refused here, in one line."""
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("compute.precision=fp16 needs CUDA; on CPU use fp32 (or bf16)")
    pin = cfg.pin_memory
    if pin == "auto":
        pin = device.type == "cuda"  # page-locked host memory: copies to the GPU run asynchronously
    if pin and device.type != "cuda":
        raise ConfigError("compute.pin_memory=true only helps copies to a GPU; on CPU use auto or false")
    return Compute(precision, cfg.compile, cfg.micro_batch_size, cfg.num_workers, pin)


def hardware(device: torch.device, compute: Compute, impl: str | None = None) -> dict:
    """What result.json records about where and how a run computed."""
    if device.type == "cuda":
        name, count = torch.cuda.get_device_name(device), distributed.world()
    else:
        name, count = cpu_name(), 0
    return {"device": device.type, "name": name, "gpus": count, "world_size": distributed.world(),
            "threads": torch.get_num_threads(), "precision": compute.precision, "compile": compute.compile,
            "micro_batch_size": compute.micro_batch_size, "num_workers": compute.num_workers,
            "pin_memory": compute.pin_memory, "torch": torch.__version__, "cuda": torch.version.cuda}


def cpu_name() -> str:
    """The processor's model name ('AMD EPYC 7B13'); platform.processor() is often just 'x86_64'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class _Batches(Dataset):
    def __init__(self, split, indices, pad_id: int):
        self.split, self.indices, self.pad_id = split, indices, pad_id

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        return self.split.batch(self.indices[k], self.pad_id)


def batches(split, indices: list, pad_id: int, compute: Compute, device: torch.device):
    """split.batch(i, pad_id) for each index array i, in order, moved to `device`: built here, or ahead
    in `num_workers` processes, into pinned memory when `pin_memory`."""
    if compute.num_workers == 0 and not compute.pin_memory:
        made = (split.batch(i, pad_id) for i in indices)
    else:  # batch_size=None: each item is already a batch (no collation)
        made = DataLoader(_Batches(split, indices, pad_id), batch_size=None, num_workers=compute.num_workers,
                          pin_memory=compute.pin_memory)
    for ids, mask, labels in made:
        yield tuple(t.to(device, non_blocking=compute.pin_memory) for t in (ids, mask, labels))
