"""One writer per store: a lock taken when a store is opened for appending.

Local directories use ``flock`` on a file inside the store, so the operating system drops the lock when the
writer dies, even under SIGKILL. In-memory stores use a per-process registry. Object stores (S3 and other
fsspec URLs) have no locks, so a lock object is written with a create-if-absent write (two writers racing:
exactly one succeeds); a writer that died leaves it behind, and ``open(..., break_lock=True)`` removes it.
Replacing a store (``create(overwrite=True)``) takes its lock first, so it never deletes one being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Protocol

from zarr.core.sync import sync

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
    """A lock object written only if absent (S3's conditional put, ``If-None-Match: *``), holding a token
    that is unique to this writer; it is deleted only while it still holds that token."""

    def __init__(self, fs: Any, root: str, break_lock: bool) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.path = f"{self.root}/{LOCK_NAME}"
        self.token = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex, "time": time.time()}
        )
        if break_lock:
            holder = self._holder()
            if holder is not None:
                self._delete(*holder)  # that holder's lock only: one written since then is not touched
        try:
            fs.pipe_file(self.path, self.token.encode(), mode="create")
        except FileExistsError:
            holder = self._holder()
            raise StoreLockedError(
                f"{self.root} has a writer lock ({holder[1] if holder else 'just released'}); "
                "if that writer died, open with break_lock=True"
            ) from None
        self._held = True

    def _holder(self) -> tuple[str | None, str] | None:
        """(ETag, token) of the lock object now in place, or None if there is none."""
        self.fs.invalidate_cache(self.path)
        try:
            # ETag first: if the object is replaced between the two reads, the token read is the new one's,
            # and a delete conditional on the old ETag then fails instead of removing the new lock.
            etag = self.fs.info(self.path).get("ETag")
            return etag, self.fs.cat_file(self.path).decode(errors="replace")
        except FileNotFoundError:
            return None

    def _delete(self, etag: str | None, token: str) -> None:
        if etag is not None and hasattr(self.fs, "call_s3"):
            bucket, key, _ = self.fs.split_path(self.path)
            # Replaced or gone meanwhile (precondition failed): then it is not ours to delete.
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
        elif self._holder() == (etag, token):
            self.fs.rm_file(self.path)
        self.fs.invalidate_cache(self.path)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        holder = self._holder()
        if holder is None or holder[1] != self.token:
            warnings.warn(
                f"{self.root}: another process broke this writer's lock (break_lock=True) while it wrote; "
                "its lock is left in place",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self._delete(*holder)


def replace_dir(path: Path, new: Path, overwrite: bool) -> None:
    """Rename the store ``new`` to ``path``; an existing store there is replaced only with ``overwrite`` and
    only while no writer holds it (its lock is taken first, so a live writer's episodes are never deleted)."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if path.exists():
            path.rmdir()
        new.rename(path)
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    old_lock = LocalLock(path)
    try:
        aside = path.with_name(f".{path.name}.replaced-{uuid.uuid4().hex[:8]}")
        path.rename(aside)
        try:
            new.rename(path)
        except BaseException:
            aside.rename(path)
            raise
    finally:
        old_lock.release()
    shutil.rmtree(aside)


def clear_except_lock(store: Any, remote: Any) -> None:
    """Delete a store's objects but not the writer lock this process holds on it."""
    if remote is None:  # a MemoryStore: its lock lives in this process, not among the keys
        sync(store.clear())
        return
    fs, root = remote
    for entry in fs.ls(root, detail=False):
        if not entry.endswith(f"/{LOCK_NAME}"):
            fs.rm(entry, recursive=True)
