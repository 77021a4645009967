"""Versioned, atomic publishing: complete versions only, old versions survive failures."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from pipeline.io import versioned
from pipeline.io.manifests import ReleaseManifest, released_versions, served_version


def _publish(run_dir, payload: str, fp: str = "f" * 64, keep: int = 3) -> str:
    # What the stage runner passes: the versions kept releases name.
    with versioned.publish(run_dir, "stage", fp, keep=keep, inputs={"up": "v1"},
                           spared=released_versions(run_dir, "stage")) as out:
        os.makedirs(out.table_path("t"))
        with open(os.path.join(out.table_path("t"), "part-0"), "w") as f:
            f.write(payload)
        out.manifest["counts"] = {"rows": len(payload)}
    return out.version


def _payload(run_dir) -> str:
    with open(versioned.resolve(run_dir, "stage") / "t" / "part-0") as f:
        return f.read()


def test_publish_writes_manifest_success_and_pointer(tmp_path):
    version = _publish(tmp_path, "hello", fp="ab" * 32)
    root = tmp_path / "stage"
    assert (root / "_LATEST").read_text().strip() == version
    assert (root / version / "_SUCCESS").exists()
    manifest = json.loads((root / version / "manifest.json").read_text())
    assert manifest["fingerprint"] == "ab" * 32
    assert manifest["counts"] == {"rows": 5}
    assert manifest["inputs"] == {"up": "v1"}
    assert version.endswith("-abababab")
    assert sorted(p.name for p in root.iterdir()) == sorted(["_LATEST", version])
    assert _payload(tmp_path) == "hello"


def test_exception_mid_write_keeps_previous_version(tmp_path):
    old = _publish(tmp_path, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with versioned.publish(tmp_path, "stage", "e" * 64) as out:
            os.makedirs(out.table_path("t"))
            raise RuntimeError("disk full")
    assert versioned.latest_version(tmp_path, "stage") == old
    assert _payload(tmp_path) == "old"
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["_LATEST", old]


def test_sigkill_mid_write_leaves_previous_version_and_next_run_cleans(tmp_path):
    old = _publish(tmp_path, "old")
    script = textwrap.dedent(f"""
        import os, signal
        from pipeline.io import versioned
        with versioned.publish({str(tmp_path)!r}, "stage", "k" * 64) as out:
            os.makedirs(out.table_path("t"))
            open(os.path.join(out.table_path("t"), "part-0"), "w").write("partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    debris = [p.name for p in (tmp_path / "stage").iterdir() if p.name.startswith("_tmp-")]
    assert len(debris) == 1
    assert versioned.latest_version(tmp_path, "stage") == old
    assert _payload(tmp_path) == "old"
    new = _publish(tmp_path, "new")
    assert not [p for p in (tmp_path / "stage").iterdir() if p.name.startswith("_tmp-")]
    assert versioned.latest_version(tmp_path, "stage") == new
    assert _payload(tmp_path) == "new"


def test_debris_of_a_live_writer_is_left_alone(tmp_path):
    """The writer is in the directory's name from the instant it exists, before any file."""
    (tmp_path / "stage").mkdir()
    host = socket.gethostname()
    live = tmp_path / "stage" / f"_tmp-v1-ab12{versioned.OWNER_SEP}{host}+{os.getpid()}"
    dead = tmp_path / "stage" / f"_tmp-v2-cd34{versioned.OWNER_SEP}{host}+{_dead_pid()}"
    elsewhere = tmp_path / "stage" / f"_tmp-v3-ef56{versioned.OWNER_SEP}other-host+1"
    unnamed = tmp_path / "stage" / "_tmp-v4-0000"
    for d in (live, dead, elsewhere, unnamed):
        d.mkdir()
    assert sorted(versioned.clean_debris(tmp_path, "stage")) == [dead.name, unnamed.name]
    assert live.exists() and elsewhere.exists()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    return int(proc.stdout)


def test_sigkill_between_the_rename_and_the_pointer(tmp_path):
    """The new version is complete on disk but unnamed by _LATEST: readers keep the old one."""
    old = _publish(tmp_path, "old")
    script = textwrap.dedent(f"""
        import os, signal
        from pipeline.io import versioned
        write = versioned._write_atomic
        def kill_before_latest(path, text):
            if path.name == versioned.LATEST:
                os.kill(os.getpid(), signal.SIGKILL)
            write(path, text)
        versioned._write_atomic = kill_before_latest
        with versioned.publish({str(tmp_path)!r}, "stage", "k" * 64) as out:
            os.makedirs(out.table_path("t"))
            open(os.path.join(out.table_path("t"), "part-0"), "w").write("orphan")
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    assert len(versioned.list_versions(tmp_path, "stage")) == 2
    assert versioned.latest_version(tmp_path, "stage") == old and _payload(tmp_path) == "old"
    new = _publish(tmp_path, "new")
    assert versioned.latest_version(tmp_path, "stage") == new and _payload(tmp_path) == "new"


def test_prune_keeps_newest_versions(tmp_path):
    versions = [_publish(tmp_path, str(i), fp=f"{i:064d}", keep=2) for i in range(4)]
    assert versioned.list_versions(tmp_path, "stage") == versions[-2:]
    assert versioned.latest_version(tmp_path, "stage") == versions[-1]


def test_same_second_versions_get_distinct_names(tmp_path):
    a = _publish(tmp_path, "a", fp="1" * 64)
    b = _publish(tmp_path, "b", fp="1" * 64)
    assert a != b and versioned.latest_version(tmp_path, "stage") == b


def test_find_matching_only_for_latest_fingerprint(tmp_path):
    _publish(tmp_path, "a", fp="1" * 64)
    assert versioned.find_matching(tmp_path, "stage", "1" * 64) is not None
    assert versioned.find_matching(tmp_path, "stage", "2" * 64) is None
    _publish(tmp_path, "b", fp="2" * 64)
    assert versioned.find_matching(tmp_path, "stage", "1" * 64) is None


def test_resolve_missing_stage_says_what_to_run(tmp_path):
    with pytest.raises(versioned.StageNotFound, match="stage 'graph' has no published version"):
        versioned.resolve(tmp_path, "graph")


def test_file_identity_changes_when_file_rewritten(tmp_path):
    f = tmp_path / "edges.csv"
    f.write_text("a,b\n")
    before = versioned.fingerprint(versioned.file_identity(f))
    f.write_text("a,b\n1,2\n")
    assert versioned.fingerprint(versioned.file_identity(f)) != before


def _release(run_dir, **versions) -> str:
    with versioned.publish(run_dir, versioned.RELEASE, "r" * 64) as out:
        out.manifest.update(ReleaseManifest(versions).entries())
    return out.version


def test_pruning_never_deletes_what_a_release_serves(tmp_path):
    assert served_version(tmp_path, "stage") is None
    released = _publish(tmp_path, "served", fp="0" * 64)
    _release(tmp_path, stage=released)
    later = [_publish(tmp_path, str(i), fp=f"{i:064d}", keep=2) for i in range(1, 5)]
    assert versioned.list_versions(tmp_path, "stage") == [released] + later[-2:]
    assert versioned.latest_version(tmp_path, "stage") == later[-1]
    assert served_version(tmp_path, "stage") == released       # not the newest
    assert served_version(tmp_path, "other") is None
    _release(tmp_path, stage=later[-1])
    newest = _publish(tmp_path, "5", fp=f"{5:064d}", keep=2)
    # Both releases' versions are kept beside the newest two.
    assert versioned.list_versions(tmp_path, "stage") == [released, later[-1], newest]
    assert served_version(tmp_path, "stage") == later[-1]


def test_given_input_versions_win_over_latest(tmp_path):
    older = _publish(tmp_path, "old", fp="1" * 64)
    newer = _publish(tmp_path, "new", fp="2" * 64)
    assert versioned.latest_inputs(tmp_path, ("stage",), "a job") == {"stage": newer}
    assert versioned.latest_inputs(tmp_path, ("stage",), "a job",
                                   {"stage": older}) == {"stage": older}
    with pytest.raises(versioned.StageNotFound, match="v-gone"):
        versioned.latest_inputs(tmp_path, ("stage",), "a job", {"stage": "v-gone"})
