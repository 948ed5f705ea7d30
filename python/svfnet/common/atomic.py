"""Writing files so that nothing half-written is ever left under its final name.

A temporary file's name says who writes it: ``.<name>.<host>-<pid>.<random>.tmp<suffixes>`` beside
the final ``<name>`` (``<host>``: 8 hex digits of a hash of the machine's name). A writer killed
before it could remove its temporary file (SIGKILL, the out-of-memory killer, a power cut) leaves it
behind; the next writer into that folder on the same machine removes it, once the process that
wrote it is gone (:func:`remove_stale_temporaries`, which :func:`atomic_path` calls once per folder
and process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# tempfile's random part: 8 characters of [a-z0-9_]
_TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp.*")
# folders already swept by this process (a folder of thousands of outputs is listed once, not per write)
_swept_folders: set[str] = set()


def host_token() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files of :func:`atomic_path` in ``folder`` whose writer is gone.

    Only files written from this machine (the host in their name) by a process that no longer
    exists are removed; a writer still running, on this machine or another that shares the
    folder, keeps its file. Returns the removed paths.
    """
    folder = Path(folder)
    host = host_token()
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMPORARY_NAME.fullmatch(entry.name)
        if match is None or match["host"] != host or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            os.unlink(entry.path)
            removed.append(Path(entry.path))
            logger.info("removed %s, left by a writer that was stopped (process %d)", entry.path, pid)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` when the block succeeds.

    The data is flushed to the disk before the rename. The temporary name keeps ``path``'s
    suffixes (``.nii.gz``, ``.npz``...) so that writers that pick a format from the name still do.
    On failure the temporary file is removed and ``path`` is left as it was; a temporary file that
    a killed writer left is removed by the next writer into the folder (see the module's docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder_key = os.path.abspath(path.parent)
    if folder_key not in _swept_folders:
        remove_stale_temporaries(path.parent)
        _swept_folders.add(folder_key)
    suffix = "".join(path.suffixes)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.{host_token()}-{os.getpid()}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    # mkstemp creates the file readable by its owner only; give it the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary_path, 0o666 & ~umask)
    try:
        yield temporary_path
        # on disk before it takes the name: else a crash of the machine can leave the new name
        # on an empty or truncated file (the rename may reach the disk before the data)
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, path)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
