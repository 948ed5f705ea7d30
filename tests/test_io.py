"""Atomic writes: a writer killed inside its block leaves a temporary file named after its host and
process, and the next writer into that folder removes it; temporary files of live writers, of
other machines and of unknown form are kept."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from svfnet.common.atomic import atomic_path, host_token, remove_stale_temporaries, write_json

KILLED_WRITER = """
import os, signal, sys
from svfnet.common.atomic import atomic_path
with atomic_path(sys.argv[1]) as temporary:
    temporary.write_bytes(b"half written")
    print(temporary.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _dead_pid() -> int:
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(process.stdout)


def test_a_killed_writer_s_temporary_file_is_removed_by_the_next_writer(tmp_path):
    target = tmp_path / "stage" / "model.pt"
    writer = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(target)],
        capture_output=True,
        text=True,
    )
    assert writer.returncode == -signal.SIGKILL, writer.stderr
    left = target.parent / writer.stdout.strip()
    assert left.is_file() and not target.exists()
    assert left.name.startswith(f".model.pt.{host_token()}-") and left.name.endswith(".tmp.pt")

    write_json(target.parent / "summary.json", {"done": True})  # another file of the folder

    assert not left.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def test_only_temporary_files_of_gone_writers_on_this_machine_are_removed(tmp_path):
    host, dead = host_token(), _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        names = {
            "dead": f".a.nii.gz.{host}-{dead}.abc_0123.tmp.nii.gz",
            "live": f".b.npz.{host}-{live.pid}.abc_0123.tmp.npz",
            "other_host": f".c.json.{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead}.abc_0123.tmp.json",
            "old_form": ".d.json.abc_0123.tmp.json",
            "user_file": "notes.txt",
        }
        for name in names.values():
            (tmp_path / name).write_text("x")
        removed = remove_stale_temporaries(tmp_path)
        assert removed == [tmp_path / names["dead"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            v for k, v in names.items() if k != "dead"
        )
    finally:
        live.kill()
        live.wait()


def test_a_failed_block_removes_its_temporary_file_and_keeps_the_old_content(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert '"version": 1' in target.read_text()


def test_missing_folder_has_nothing_to_remove(tmp_path):
    assert remove_stale_temporaries(tmp_path / "absent") == []
