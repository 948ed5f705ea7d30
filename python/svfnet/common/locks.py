"""One writer at a time: a lock file per work folder and per output prefix.

Every command that writes into a work folder (``svfnet prepare``, ``shapes``, ``references``,
``train``, ``evaluate``, ``run``, ``demo``; ``synth`` into its dataset folder) holds
``FOLDER/.svfnet.lock`` while it runs, and ``svfnet register`` holds ``PREFIX.svfnet.lock`` (or
``FOLDER/.svfnet.lock`` for a prefix that names a folder) for each output prefix. The file says who
holds it: process id, host, command and start time. A second writer is refused at once with an
error naming the holder; it never waits.

The lock itself is the kernel's (``flock`` on the open file), so it is released whenever its holder
ends, killed or not: a lock file left behind by a killed run is *stale*, recognised as such by the
next run (which can take the lock) and replaced; it never needs removing by hand. On file systems
without ``flock`` the file is created exclusively instead, and a stale one is recognised by its
holder's process id no longer running on this host.

A process may take the same lock again while it holds it (``svfnet run`` holds the work folder's
lock and calls the stages, which take it too).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LOCK_NAME",
    "FolderLocked",
    "folder_lock",
    "hold_lock",
    "lock_holder",
    "prefix_lock",
    "prefix_lock_path",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".svfnet.lock"

# lock files this process holds: real path -> [file descriptor, depth]
_held: dict[str, list[int]] = {}
_guard = threading.Lock()


class FolderLocked(RuntimeError):
    """Another process holds the lock: its holder is named in the message."""


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that left no record"
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("command"):
        text += f", `{holder['command']}`"
    if holder.get("started"):
        text += f", since {holder['started']}"
    return text


def _read(fd_or_path: int | Path) -> dict | None:
    try:
        if isinstance(fd_or_path, int):
            data = os.pread(fd_or_path, 65536, 0)
        else:
            data = Path(fd_or_path).read_bytes()
        holder = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def lock_holder(lock_file: str | os.PathLike) -> dict | None:
    """What a lock file says of its holder (pid, host, command, started), or None."""
    return _read(Path(lock_file))


def _record() -> bytes:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return (
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": command[:300],
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            }
        ).encode()
        + b"\n"
    )


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy(lock_file: Path, what: str, holder: dict | None) -> FolderLocked:
    note = ""
    if holder and holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
        note = (
            " (that process is gone, but a process it started still holds the lock: stop its "
            "leftover worker processes)"
        )
    return FolderLocked(
        f"{what} is in use by another svfnet process: {_describe(holder)}{note}. Wait for it to finish or "
        f"stop it; two writers would mix their outputs (lock file {lock_file})"
    )


def acquire_flock(lock_file: Path, what: str) -> int:
    """An exclusive ``flock`` on ``lock_file`` (created if missing), as an open descriptor; a folder held
    by a live process raises the busy error naming it, a stale holder is cleared. Raises OSError where
    the file system has no ``flock`` (the caller then falls back to an exclusive create)."""
    import fcntl  # POSIX only

    for _ in range(10):
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise _busy(lock_file, what, holder) from None
        except OSError:
            os.close(fd)
            raise
        # locked: but a holder releasing its lock unlinks the file first; ours must still be the
        # file at that path, else another process may lock the new one
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _read(fd)
        if stale:
            log.info("%s: a stale lock of %s (no longer running) was cleared", lock_file, _describe(stale))
        os.ftruncate(fd, 0)
        os.pwrite(fd, _record(), 0)
        return fd
    raise FolderLocked(f"{what}: could not take the lock {lock_file} (other processes keep replacing it)")


def _acquire_exclusive(lock_file: Path, what: str) -> int:
    """Without flock: the file created exclusively; a stale one (holder gone on this host) removed."""
    for _ in range(3):
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(lock_file)
            if holder and holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
                log.info(
                    "%s: a stale lock of %s (no longer running) was cleared", lock_file, _describe(holder)
                )
                lock_file.unlink(missing_ok=True)
                continue
            raise _busy(lock_file, what, holder) from None
        os.write(fd, _record())
        return fd
    raise FolderLocked(f"{what}: could not take the lock {lock_file}")


def _make_folder(folder: Path) -> list[Path]:
    """Creates ``folder`` and its missing parents; the ones created, deepest first."""
    created = []
    path = folder
    while not path.exists() and path != path.parent:
        created.append(path)
        path = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


@contextlib.contextmanager
def hold_lock(lock_file: str | os.PathLike, what: str) -> Iterator[Path]:
    """Holds ``lock_file`` for the block (see the module's description); ``what`` names the
    protected thing in the error a second writer gets.

    Folders created to hold the lock file are removed again at the end if they are still empty
    (a refused command leaves nothing behind).

    Raises:
        FolderLocked: another process holds it.
        PermissionError: the folder cannot be written (named in the message).
    """
    lock_file = Path(lock_file).absolute()
    try:
        created = _make_folder(lock_file.parent)
    except PermissionError:
        raise PermissionError(
            errno.EACCES, "cannot create the folder (permission denied)", str(lock_file.parent)
        ) from None
    key = os.path.realpath(lock_file)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    fd = None
    if entry is None:
        try:
            try:
                fd = acquire_flock(lock_file, what)
            except PermissionError:
                raise PermissionError(
                    errno.EACCES, "cannot write in this folder (permission denied)", str(lock_file.parent)
                ) from None
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                fd = _acquire_exclusive(lock_file, what)
        except BaseException:
            _remove_empty(created)
            raise
        with _guard:
            _held[key] = [fd, 1]
    try:
        yield lock_file
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last:
            with contextlib.suppress(OSError):
                lock_file.unlink()  # first: a process that locks the old file then sees it is gone
            os.close(entry[0])
            _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def folder_lock(
    folder: str | os.PathLike, what: str | None = None
) -> contextlib.AbstractContextManager[Path]:
    """The lock of a work (or dataset) folder: ``FOLDER/.svfnet.lock``."""
    folder = Path(folder)
    return hold_lock(folder / LOCK_NAME, what or f"the folder {folder}")


def prefix_lock_path(prefix: str | os.PathLike) -> Path:
    """The lock file of an output prefix: ``PREFIX.svfnet.lock``, or ``PREFIX/.svfnet.lock`` for a
    prefix that names a folder (ends with a separator, or is an existing folder)."""
    text = os.fspath(prefix)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        return Path(text) / LOCK_NAME
    return Path(f"{text}.svfnet.lock")


def prefix_lock(prefix: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """The lock of one output prefix (``svfnet register --out PREFIX``)."""
    return hold_lock(prefix_lock_path(prefix), f"the output prefix {os.fspath(prefix)}")
