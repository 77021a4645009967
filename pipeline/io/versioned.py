"""Versioned, atomic stage outputs: the one helper every stage writes through.

Layout of a stage::

    <run_dir>/<stage>/_LATEST              # name of the newest complete version
    <run_dir>/<stage>/<version>/           # complete: manifest.json + _SUCCESS
    <run_dir>/<stage>/_tmp-<version>-<random>@<host>+<pid>   # being written (or debris)

A stage writes into a ``_tmp-`` directory, flushes its files to disk, writes
``manifest.json`` and then ``_SUCCESS``, renames the directory to its version name and only then
replaces ``_LATEST`` (write-then-rename, so the pointer is never half
written). A job killed at any point leaves ``_LATEST`` on the previous
version; the next publish of the stage removes the debris.

``run_dir`` must be a POSIX filesystem the driver can rename in (a local disk,
or a shared mount when executors run on other hosts).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import CorruptFile, PipelineError
from pipeline.io.table_check import check_tables

log = logging.getLogger(__name__)

LATEST = "_LATEST"
SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
TMP_PREFIX = "_tmp-"
OWNER_SEP = "@"      # _tmp-<version>-<random>@<host>+<pid>: the writer, from the first instant
# (no ":" in names: HDFS and Hadoop paths refuse it)
# The refresh's stage: each version's manifest names, under "versions", the
# stage versions it serves, which pruning must never delete.
RELEASE = "release"


class StageNotFound(FileNotFoundError):
    """A reader asked for a stage (or version) that has not been published."""


def fingerprint(payload: Any) -> str:
    """Stable hash of JSON-able inputs (config, input versions, source files)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_identity(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Identify a source file or directory by path, size and mtime of each file.

    Cheap enough for large inputs, and changes whenever a file is rewritten.
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    out = []
    for p in files:
        st = p.stat()
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def stage_dir(run_dir: str | os.PathLike, stage: str) -> Path:
    return Path(run_dir) / stage


def latest_version(run_dir: str | os.PathLike, stage: str) -> str | None:
    pointer = stage_dir(run_dir, stage) / LATEST
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


# The job that publishes each stage, named in "run ... first" errors.
PRODUCERS = {"graph": "jobs/ingest.py", "split": "jobs/split.py", "neighbors": "jobs/sample.py",
             "pairs": "jobs/sample.py", "batches": "jobs/sample.py", "model": "jobs/train.py",
             "embeddings": "jobs/infer.py", "index": "jobs/evaluate.py", "eval": "jobs/evaluate.py"}


def latest_inputs(run_dir: str | os.PathLike, stages: tuple[str, ...], purpose: str,
                  given: dict[str, str] | None = None) -> dict[str, str]:
    """The version of each stage a job reads: the one ``given`` (the all-stages run and the
    refresh hand each stage the versions they just published), else the latest, which only
    a single job run from the command line relies on; or an error naming the job to run
    first. Each version is checked before anything reads it (:func:`check_version`).
    """
    out = {}
    for stage in stages:
        version = (given or {}).get(stage) or latest_version(run_dir, stage)
        if version is None:
            raise PipelineError(f"{purpose} needs the '{stage}' stage in {run_dir}; "
                                f"run {PRODUCERS[stage]} first")
        out[stage] = check_version(run_dir, stage, version).name
    return out


def link_stages(source: str, sub: str, stages: tuple[str, ...]) -> str:
    """``sub``, made to share ``source``'s ``stages`` (linked, not copied)."""
    path = Path(sub)
    path.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        link, target = path / stage, (Path(source) / stage).resolve()
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return str(path)


def list_versions(run_dir: str | os.PathLike, stage: str) -> list[str]:
    """Complete versions of a stage, oldest first."""
    root = stage_dir(run_dir, stage)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith("_") and (p / SUCCESS).exists())


def resolve(run_dir: str | os.PathLike, stage: str, version: str | None = None) -> Path:
    """Directory of a complete version (default: the one ``_LATEST`` names)."""
    name = version or latest_version(run_dir, stage)
    if name is None:
        raise StageNotFound(
            f"stage '{stage}' has no published version under {stage_dir(run_dir, stage)}; "
            f"run the job that produces it first")
    path = stage_dir(run_dir, stage) / name
    if not (path / SUCCESS).exists():
        raise StageNotFound(f"{path} is not a complete version of stage '{stage}' (no {SUCCESS})")
    return path


PARQUET_MAGIC = b"PAR1"


def check_parquet(path: str | os.PathLike) -> int:
    """Fail with :class:`CorruptFile` naming the first truncated Parquet file under ``path``.

    A complete Parquet file starts and ends with ``PAR1``; truncation (a copy
    cut short, a full disk) loses the trailing footer. Two 4-byte reads per
    file, so it is cheap enough before every stage. Returns the number of
    files checked. Damage inside a file is caught when Spark reads it (see
    :func:`clear_read_errors`).
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))
    for f in files:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(4)
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
        if size < 12 or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
            part = "header" if head != PARQUET_MAGIC else "footer"
            raise CorruptFile(f"{f} is truncated or corrupted ({size} bytes, no Parquet {part})")
    return len(files)


def check_version(run_dir: str | os.PathLike, stage: str, version: str | None = None) -> Path:
    """:func:`resolve`, then :func:`check_parquet` on the version's tables, then their
    schemas against the declared ones (:func:`pipeline.io.table_check.check_tables`)."""
    path = resolve(run_dir, stage, version)
    try:
        check_parquet(path)
    except CorruptFile as e:
        raise CorruptFile(f"{stage}/{path.name}: {e}; rebuild the stage (force=true)") from None
    check_tables(path, stage, manifest=MANIFEST, producer=PRODUCERS.get(stage))
    return path


_SPARK_FILE = re.compile(r"(?:file:)?/*(/[^\s'\",\]]+\.parquet)")


def read_error(exc: BaseException) -> CorruptFile | None:
    """A clear error for a Spark failure that came from reading a damaged Parquet file.

    Spark names the file in its message (FAILED_READ_FILE, CANNOT_READ_FILE_FOOTER, ...);
    returns None when the failure was something else.
    """
    text = str(exc)
    if not re.search(r"FAILED_READ_FILE|CANNOT_READ_FILE_FOOTER|Parquet|parquet", text):
        return None
    m = _SPARK_FILE.search(text)
    if m is None:
        return None
    line = next(line for line in text.splitlines() if m.group(1) in line)
    reason = re.sub(r"^[:\s]*([\w.]+Exception:\s*)?", "", line).strip()
    return CorruptFile(f"{m.group(1)} cannot be read (corrupted Parquet?): {reason[:300]}")


@contextmanager
def clear_read_errors() -> Iterator[None]:
    """Turn Spark's failure to read a damaged Parquet file into a :class:`CorruptFile`."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as e:
        err = read_error(e)
        if err is None:
            raise
        raise err from e


def read_manifest(run_dir: str | os.PathLike, stage: str, version: str | None = None) -> dict:
    return json.loads((resolve(run_dir, stage, version) / MANIFEST).read_text())


def find_matching(run_dir: str | os.PathLike, stage: str, fp: str) -> str | None:
    """The latest version if it was built from exactly these inputs, else None."""
    name = latest_version(run_dir, stage)
    if name is None:
        return None
    try:
        manifest = read_manifest(run_dir, stage, name)
    except (StageNotFound, FileNotFoundError, json.JSONDecodeError):
        return None
    return name if manifest.get("fingerprint") == fp else None


@dataclass
class Staging:
    """The temporary directory a stage writes into, and its manifest."""

    stage: str
    version: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def table_path(self, table: str) -> str:
        return str(self.path / table)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk (before ``_SUCCESS`` claims them)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(tmp: Path) -> tuple[str, int] | None:
    """The writer (host, pid) a temporary directory's name records; None if it names none."""
    _, sep, owner = tmp.name.rpartition(OWNER_SEP)
    host, _, pid = owner.rpartition("+")
    return (host, int(pid)) if sep and host and pid.isdigit() else None


def clean_debris(run_dir: str | os.PathLike, stage: str) -> list[str]:
    """Remove temporary directories left by killed writers of this host.

    A temporary directory's name records its writer's host and pid (so the
    owner is known from the instant it exists); it is removed only when that
    process is gone, so a concurrent writer is never disturbed.
    """
    root = stage_dir(run_dir, stage)
    removed = []
    if not root.is_dir():
        return removed
    host = socket.gethostname()
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            owner = _owner(p)
            alive = owner is not None and (owner[0] != host or _pid_alive(owner[1]))
            if not alive:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        elif p.name.startswith(f"{LATEST}.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    if removed:
        log.info("removed debris of killed runs in %s: %s", root, ", ".join(sorted(removed)))
    return removed


def point_latest(run_dir: str | os.PathLike, stage: str, version: str) -> None:
    """Make ``_LATEST`` name an existing complete version (rollback, a refused refresh)."""
    resolve(run_dir, stage, version)
    _write_atomic(stage_dir(run_dir, stage) / LATEST, version + "\n")


def prune(run_dir: str | os.PathLike, stage: str, keep: int,
          spared: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Delete the oldest versions beyond ``keep``; never the one ``_LATEST`` names,
    nor one of ``spared`` (the stage runner passes the versions kept releases name,
    :func:`pipeline.io.manifests.released_versions`, so job runs never break a release)."""
    keep = max(1, keep)
    spared = {latest_version(run_dir, stage)} | set(spared)
    versions = list_versions(run_dir, stage)
    doomed = [v for v in versions[:-keep] if v not in spared] if len(versions) > keep else []
    for v in doomed:
        shutil.rmtree(stage_dir(run_dir, stage) / v, ignore_errors=True)
    return doomed


def _new_version_name(root: Path, fp: str) -> str:
    # Microseconds keep names in creation order, which pruning relies on.
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    base = f"v{stamp}-{fp[:8]}"
    name, n = base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}.{n}"
    return name


@contextmanager
def publish(run_dir: str | os.PathLike, stage: str, fp: str, *,
            config: Any = None, inputs: dict[str, str] | None = None,
            keep: int = 3, spared: frozenset[str] | set[str] = frozenset()) -> Iterator[Staging]:
    """Stage a new version; publish it only if the ``with`` body succeeds.

    The body writes its tables under ``staging.table_path(name)`` and adds
    counts to ``staging.manifest``. On an exception the temporary directory is
    removed and ``_LATEST`` is untouched.
    """
    root = stage_dir(run_dir, stage)
    root.mkdir(parents=True, exist_ok=True)
    clean_debris(run_dir, stage)
    version = _new_version_name(root, fp)
    tmp = root / (f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
                  f"{OWNER_SEP}{socket.gethostname()}+{os.getpid()}")
    tmp.mkdir()
    staging = Staging(stage=stage, version=version, path=tmp)
    staging.manifest.update({
        "stage": stage,
        "version": version,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fp,
        "inputs": dict(inputs or {}),
        "config": config,
    })
    try:
        yield staging
        _fsync_tree(tmp)
        _write_atomic(tmp / MANIFEST, json.dumps(staging.manifest, indent=2, sort_keys=True, default=str))
        _write_atomic(tmp / SUCCESS, "")
        final = root / version
        os.rename(tmp, final)
        _fsync_dir(root)
        _write_atomic(root / LATEST, version + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pruned = prune(run_dir, stage, keep, spared)
    if pruned:
        log.info("pruned old %s versions: %s", stage, ", ".join(pruned))
    log.info("published %s/%s", stage, version)
