"""What every command that writes does around its work, before it starts and when it fails.

``guarded(run, writes="workdir")`` wraps a command's ``run(args)``:

- the flags every command shares are checked first (``--workers``);
- the folder named by ``args.<writes>`` is locked for the command's whole run
  (:mod:`svfnet.common.locks`): a second writer is refused, naming the holder. Under torchrun only
  rank 0 takes it (the other ranks write nothing);
- a replacement that a killed run left half done in that folder is finished or undone
  (:func:`svfnet.common.staging.recover_workdir`);
- an operating-system error (a folder that cannot be written, a full disk) becomes one line naming
  the path, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
from collections.abc import Callable

__all__ = ["CommandError", "guarded", "os_error_text"]


class CommandError(ValueError):
    """A command cannot go on for a reason outside its input (locked folder, unwritable path...);
    a ValueError, so the command line prints it in one line."""


_ADVICE = {
    errno.EACCES: "the folder is not writable by you: choose another output folder or change its permissions",
    errno.EPERM: "the folder is not writable by you: choose another output folder or change its permissions",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.ENOSPC: "the disk is full: free some space (nothing written so far is lost) and run the command again",
    errno.EDQUOT: "your disk quota is exhausted: free some space and run the command again",
}


def os_error_text(error: OSError) -> str:
    """One line for an OSError: the path, what the system said, and what to do."""
    where = error.filename if error.filename is not None else ""
    reason = error.strerror or str(error)
    text = f"{where}: {reason}" if where else reason
    advice = _ADVICE.get(error.errno or 0)
    return f"{text} ({advice})" if advice else text


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def guarded(
    run: Callable[[argparse.Namespace], int],
    *,
    writes: str | None = None,
    what: str = "work folder",
    recover: bool = True,
    beside: bool = False,
) -> Callable[[argparse.Namespace], int]:
    """``run`` with the checks, the lock of ``args.<writes>`` and the error handling above.

    ``beside``: the lock file is ``FOLDER.svfnet.lock`` beside the folder rather than in it (for a
    command that wants its output folder empty).
    """

    def command(args: argparse.Namespace) -> int:
        from svfnet.common.limits import check_workers
        from svfnet.common.locks import FolderLocked, folder_lock, hold_lock, prefix_lock_path
        from svfnet.common.staging import recover_workdir

        check_workers(getattr(args, "workers", None))
        folder = getattr(args, writes, None) if writes else None
        try:
            with contextlib.ExitStack() as stack:
                if folder is not None and _main_rank():
                    if beside:
                        lock_file = prefix_lock_path(os.fspath(folder).rstrip("/" + os.sep) or ".")
                        stack.enter_context(hold_lock(lock_file, f"the {what} {folder}"))
                    else:
                        stack.enter_context(folder_lock(folder, f"the {what} {folder}"))
                    if recover:
                        recover_workdir(folder)
                return run(args)
        except FolderLocked as error:
            raise CommandError(str(error)) from None
        except (FileNotFoundError, FileExistsError):
            raise
        except OSError as error:
            raise CommandError(os_error_text(error)) from None

    command.__wrapped__ = run  # type: ignore[attr-defined]
    return command
