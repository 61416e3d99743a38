"""Data parallelism over the processes `torchrun --nproc_per_node=N run.py ...` starts.

torchrun starts N copies of run.py with RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT in the
environment. `setup` joins them into one process group (NCCL on GPUs, Gloo on CPU); each process
(rank) then trains on its share of every global batch, DistributedDataParallel averages the
gradients, and rank 0 alone writes files. Without those variables every helper here is the
identity of one process: rank 0 of a world of 1, no communication.

Collectives (all_reduce, barrier, gather) must be called by every rank in the same order: the
training loop keeps its ranks in lockstep by giving each the same number of steps and evaluations.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from filelock import FileLock, Timeout
from torch import nn

from recipes.errors import ConfigError

log = logging.getLogger(__name__)
_device = torch.device("cpu")  # where collective tensors live: NCCL reduces CUDA tensors only


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, logs and result.json."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group once per process; -> the device of this rank (cuda:LOCAL_RANK)."""
    global _device
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or dist.is_initialized():
        return _device if dist.is_initialized() else device
    local = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started {size} processes but this node has {torch.cuda.device_count()} "
                              "GPU(s): use --nproc_per_node=<number of GPUs>")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(dist.destroy_process_group)
    _device = device
    log.info("distributed: rank %d of %d on %s", rank(), world(), device)
    return device


def wrap(model: nn.Module) -> nn.Module:
    """The module to train with: DDP around `model` when several ranks run, else `model` itself.
    broadcast_buffers=False: no backbone keeps running statistics (no BatchNorm, by design), and a
    broadcast on every forward would be one more collective for ranks to keep in step."""
    if world() == 1:
        return model
    ids = [_device.index] if _device.type == "cuda" else None
    with warnings.catch_warnings():  # recent torch renames the option; the torch versions we accept know this name
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def share(index: np.ndarray) -> np.ndarray:
    """This rank's part of a global batch (or list of batches): every world()-th item from rank().

    This is the distributed sampler: the global order stays the single-process one (seeded by seed
    and epoch), so N ranks see exactly the examples of one process's batch, and shares differ in
    size by at most one. torch's DistributedSampler would instead pad the data to a multiple of the
    world size (repeating examples) and shuffle with its own seed."""
    return index[rank()::world()]


def sum_all(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (float64, so counts stay exact)."""
    if world() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world() > 1:
        dist.barrier(device_ids=[_device.index]) if _device.type == "cuda" else dist.barrier()


def rank_seed(seed: int) -> int:
    """Seed of this rank's random streams (dropout, masking): `seed` on rank 0, a derived one on the
    others, so ranks do not draw the same dropout and mask patterns for different examples."""
    r = rank()
    return seed if r == 0 else int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


@contextmanager
def main_holds(path: str):
    """`with FileLock(path)` for a whole process group: rank 0 takes the lock (other runs wait on it),
    and the other ranks wait until it has, then work under it.

    Every rank taking the lock would deadlock: rank 1 waits on the lock that rank 0 holds while rank 0
    waits for rank 1 in an all-reduce. Rank 0 tries for a minute at a time and tells the others
    whether it got the lock, so no collective waits longer than the process group's timeout
    (30 minutes by default) while another run pretrains."""
    lock = FileLock(path)
    if world() == 1:
        with lock:
            yield
        return
    held = False
    while not held:
        if is_main():
            try:
                lock.acquire(timeout=60)
                held = True
            except Timeout:
                log.info("waiting for %s (another run holds it)", path)
        held = sum_all([held])[0] > 0
    try:
        yield
    finally:
        if is_main():
            lock.release()
