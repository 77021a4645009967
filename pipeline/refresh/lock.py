"""One refresh per run directory at a time: an ``O_EXCL`` lock file that outlives a kill safely.

The lock records host, pid and the process's start time. A lock whose
process is gone from this host (or whose pid now belongs to a process started
later) is stale, left by a killed refresh, and is taken over: renamed aside
atomically, checked to be the stale one just read, then the lock is created
again with ``O_EXCL``, so two contenders can never both win. A lock held on
another host is never judged stale from here.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from pipeline.errors import PipelineError

LOCK = "_refresh.lock"


class LockHeld(PipelineError):
    """Another refresh of this run directory is running."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _stale(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return False
    return _start_time(int(info["pid"])) != info.get("start")


class RunLock:
    """Context manager holding ``<run_dir>/_refresh.lock``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self.took_over: dict | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_me(), f)
                f.flush()
                os.fsync(f.fileno())
            return self
        raise LockHeld(f"could not take the refresh lock {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text()
            info = json.loads(text)
        except FileNotFoundError:
            return
        except json.JSONDecodeError:
            # Created but not yet written by a starting refresh, or cut short by a kill.
            if time.time() - self.path.stat().st_mtime < 10:
                time.sleep(0.2)
                return
            info, text = {"host": socket.gethostname(), "pid": -1, "start": "unknown"}, self.path.read_text()
        if not _stale(info):
            raise LockHeld(f"another refresh of this run directory is running "
                           f"(host {info.get('host')}, pid {info.get('pid')}, since {info.get('since')}); "
                           f"lock {self.path}")
        aside = self.path.with_name(f"{LOCK}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text() != text:
            # A contender replaced the stale lock with its own live one in between: give it back.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink()
            raise LockHeld(f"another refresh took over the stale lock {self.path} first")
        aside.unlink()
        self.took_over = info

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
