"""Process-wide settings every command and the loop share: torch threads, the device, progress output.

Threads: torch's default of one intra-op thread per core oversubscribes a machine where anything else runs.
On a busy 2-core machine ``robocl train bc`` ran at 2 updates/s with the default and 181/s with one thread
(Symphony: 4 s per env step against 76 steps/s), and robocl's networks are small, so one thread is the
default; ``--threads N`` raises it for large image policies on a machine of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
