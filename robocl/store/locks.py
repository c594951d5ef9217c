"""One writer per store: a lock taken when a store is opened for appending.

Local directories use ``flock`` on a file inside the store, so the operating system drops the lock when the
writer dies, even under SIGKILL. In-memory stores use a per-process registry. Object stores (S3 and other
fsspec URLs) have no locks, so a lock object is written instead; a writer that died leaves it behind, and
``open(..., break_lock=True)`` removes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

LOCK_NAME = ".robocl-writer.lock"


class StoreLockedError(RuntimeError):
    """Another writer holds the store."""


class WriterLock(Protocol):
    def release(self) -> None: ...


class LocalLock:
    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise StoreLockedError(
                f"{root} is open for writing by another process (lock {self.path}); "
                "open it with mode='r' to read while it writes"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


_memory_writers: set[int] = set()


class MemoryLock:
    def __init__(self, store: Any) -> None:
        # MemoryStore objects are unhashable and several may wrap one dict: key the lock on that dict.
        self._key: int | None = id(getattr(store, "_store_dict", store))
        if self._key in _memory_writers:
            raise StoreLockedError("this in-memory store is already open for writing")
        _memory_writers.add(self._key)

    def release(self) -> None:
        if self._key is not None:
            _memory_writers.discard(self._key)
            self._key = None


class ObjectStoreLock:
    def __init__(self, fs: Any, root: str, break_lock: bool) -> None:
        self.fs = fs
        self.path = f"{root.rstrip('/')}/{LOCK_NAME}"
        if fs.exists(self.path) and not break_lock:
            holder = fs.cat_file(self.path).decode(errors="replace")
            raise StoreLockedError(
                f"{root} has a writer lock ({holder}); if that writer died, open with break_lock=True"
            )
        self.token = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex, "time": time.time()}
        )
        fs.pipe_file(self.path, self.token.encode())
        if fs.cat_file(self.path).decode() != self.token:  # lost a race against another writer
            raise StoreLockedError(f"{root}: another writer took the lock at the same time")
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            if self.fs.exists(self.path):
                self.fs.rm_file(self.path)
