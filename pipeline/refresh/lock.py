"""One refresh per run directory at a time: a kernel lock (``flock``) on ``<run_dir>/_refresh.lock``.

The kernel releases the lock when its holder exits, however it exits, so a
killed refresh never leaves a lock behind and nothing has to judge
staleness (no pids, no ``/proc``, no clocks). The file itself is never
removed (removing a locked path would let a second process lock a new file
of the same name). While held it names its holder (host, pid, since), for
the error a contender prints; a clean exit empties it, so a holder record
found on entry is one a killed refresh left (``took_over``). On network
filesystems this relies on their lock support (NFSv4 maps ``flock`` to its
byte-range locks).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pipeline.errors import PipelineError

LOCK = "_refresh.lock"


class LockHeld(PipelineError):
    """Another refresh of this run directory is running."""


class RunLock:
    """Context manager holding ``<run_dir>/_refresh.lock``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self.took_over: dict | None = None
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise LockHeld(f"another refresh of this run directory is running (host "
                           f"{holder.get('host')}, pid {holder.get('pid')}, since "
                           f"{holder.get('since')}); lock {self.path}") from None
        self.took_over = _read(fd) or None
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write(fd, json.dumps(me).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            _write(self._fd, b"")
            os.close(self._fd)            # releases the lock
            self._fd = None


def _read(fd: int) -> dict:
    """The holder record in the lock file ({} when empty or cut short)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096)
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"unreadable": text.decode(errors="replace")}


def _write(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
