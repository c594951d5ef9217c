"""Process-wide settings every command and the loop share: torch threads, the device, progress output.

Threads: torch's default of one intra-op thread per core oversubscribes a machine where anything else runs.
On a busy 2-core machine ``robocl train bc`` ran at 2 updates/s with the default and 181/s with one thread
(Symphony: 4 s per env step against 76 steps/s), and robocl's networks are small, so one thread is the
default; ``--threads N`` raises it for large image policies on a machine of their own.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch

DEFAULT_THREADS = 1


def set_threads(n: int) -> None:
    """torch's intra-op threads for this process (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, refused at once when torch cannot use it."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: torch sees no CUDA device (this torch build: {torch.__version__})"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: robocl runs on cpu or cuda")
    return device


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's generators seeded with ``seed`` inside the block, and leave them as they were:
    networks are initialised reproducibly without reseeding the caller's stream."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class DeferredInterrupt:
    """Ctrl-C while installed sets ``requested`` for the loop to act on between updates, instead of raising
    wherever Python happens to be: a KeyboardInterrupt raised inside a finaliser or a library's cleanup is
    discarded ("Exception ignored in ..."), and a run interrupted there trained on (the Ctrl-C test hung so
    once in CI). A second Ctrl-C raises at once, for a step that takes long (an evaluation). Off the main
    thread, where Python has no signal handlers, it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
