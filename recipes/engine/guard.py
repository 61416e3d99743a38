"""Two guards of the training loop: SIGTERM (a cluster's notice of preemption) and non-finite numbers.

SIGTERM: Slurm, Kubernetes and most schedulers send it, wait a grace period, then SIGKILL. Inside a
training loop the handler only raises a flag, and the loop acts on it at the next step boundary,
where model, optimizer and RNG are consistent: it saves last.pt and raises `Preempted`. Anywhere
else (data preparation, writing results) stopping at once loses nothing, because every file is
written atomically, so the handler raises `Preempted` right away. run.py turns it into exit status
143 (128 + SIGTERM) and a line saying how to resume: run the same command again.

Non-finite loss or gradient (`<stage>.on_nan`): `stop` (default) ends the run as failed, naming
the stage and the step, with the last good checkpoint kept; `skip_batch` drops that batch's update
and goes on, and the result lists the skipped steps.
"""

from __future__ import annotations

import contextlib
import signal
import threading

ON_NAN = ("stop", "skip_batch")


class Preempted(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt so that, like Ctrl-C, it passes every `except Exception`
    (which would record the run as failed): an interrupted run is resumed, not failed."""


_state = {"requested": False, "in_loop": False}


def _on_sigterm(signum, frame) -> None:
    _state["requested"] = True
    if not _state["in_loop"]:
        raise Preempted("SIGTERM outside training: nothing to save (every file written so far is complete)")


@contextlib.contextmanager
def sigterm_saves():
    """SIGTERM handled as above while the block runs (main thread only: elsewhere the signal module
    cannot install handlers, and whoever owns the main thread decides)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.update(requested=False, in_loop=False)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _state.update(requested=False, in_loop=False)


def in_loop(flag: bool) -> None:
    """A training loop starts (True) or ends (False): between the two, SIGTERM waits for a step boundary."""
    _state["in_loop"] = flag


def stop_requested() -> bool:
    return _state["requested"]
