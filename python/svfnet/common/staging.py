"""Replacing a stage's outputs without ever losing the old ones first: write beside, then swap.

A stage that recomputes its outputs (``svfnet prepare --force``, ``svfnet shapes --overwrite``, a
stage of ``svfnet run`` whose inputs or configuration changed) writes the new ones into
``WORKDIR/.staging/<stage>/``, a work folder of its own whose other entries are links to the real
work folder's; only when the new outputs are complete does :func:`replace_tree` swap them in. A run
refused, failed or killed before that leaves the old outputs as they were; a run killed during
the swap leaves the old folder beside its place, and :func:`recover_replaced` (called by every
command that writes a work folder, once it holds the folder's lock) puts it back.

Also here: content digests of files (what fingerprints are made of) and a ``.npy`` loader that
names a truncated file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

__all__ = [
    "STAGING",
    "file_digest",
    "load_npy",
    "recover_replaced",
    "recover_workdir",
    "remove_staging",
    "replace_tree",
    "shadow_workdir",
]

STAGING = ".staging"  # WORKDIR/.staging/<stage>/: a stage's outputs while they are being replaced
# A folder replaced by replace_tree() waits under this name beside its successor until the
# successor is in place (then it is removed): a run killed in between finds it there.
_REPLACED = ".{name}.replaced"


def replace_tree(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Puts the complete folder ``new`` in the place of ``dest`` (which may not exist).

    ``dest`` is renamed aside (``.NAME.replaced``), ``new`` renamed onto ``dest``, and only then is
    the old folder removed. Both renames stay on one file system (``new`` must be there too). A
    kill between them leaves ``dest`` missing and the old folder beside it, which
    :func:`recover_replaced` puts back.
    """
    new, dest = Path(new), Path(dest)
    old = dest.with_name(_REPLACED.format(name=dest.name))
    if old.exists():
        shutil.rmtree(old)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        if old.exists() and not dest.exists():
            os.rename(old, dest)
        raise
    _fsync_folder(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_replaced(folder: str | os.PathLike) -> list[Path]:
    """Finishes or undoes the replacements a killed run left in ``folder``: an old folder whose
    successor is in place is removed; one whose successor never arrived is put back. Returns the
    folders put back."""
    folder = Path(folder)
    restored: list[Path] = []
    if not folder.is_dir():
        return restored
    for path in folder.iterdir():
        name = path.name
        if not (name.startswith(".") and name.endswith(".replaced")) or not path.is_dir():
            continue
        dest = folder / name[1 : -len(".replaced")]
        if dest.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, dest)
            restored.append(dest)
    return restored


def recover_workdir(workdir: str | os.PathLike) -> list[Path]:
    """:func:`recover_replaced` for a work folder and its ``models/`` (where runs are replaced)."""
    workdir = Path(workdir)
    return recover_replaced(workdir) + recover_replaced(workdir / "models")


def shadow_workdir(workdir: str | os.PathLike, stage: str, outputs: tuple[str, ...], *, fresh: bool) -> Path:
    """``WORKDIR/.staging/<stage>/``: a work folder that reads what ``workdir`` holds (links to its
    entries) but writes ``outputs`` (paths relative to the work folder, e.g. ``"references"`` or
    ``"models/svfnet"``) into folders of its own, to be swapped in by :func:`replace_tree` when done.

    ``fresh`` removes what an earlier, unfinished replacement left there; otherwise it is kept,
    and the stage resumes from it.
    """
    workdir = Path(workdir).absolute()
    shadow = workdir / STAGING / stage
    if fresh and shadow.exists():
        shutil.rmtree(shadow)
    shadow.mkdir(parents=True, exist_ok=True)
    own = {Path(output).parts[0] for output in outputs}
    for entry in workdir.iterdir():
        name = entry.name
        if name in own or name.startswith(".") or name == "stages":
            continue
        link = shadow / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(os.path.relpath(entry, shadow))
    for top in (
        own
    ):  # the output's own top folder is real; when the output is inside it, its other entries are links
        real = workdir / top
        (shadow / top).mkdir(exist_ok=True)
        if real.is_dir() and top not in outputs:
            for entry in real.iterdir():
                link = shadow / top / entry.name
                if any(Path(output) == Path(top) / entry.name for output in outputs) or entry.name.startswith(
                    "."
                ):
                    continue
                if not link.is_symlink() and not link.exists():
                    link.symlink_to(os.path.relpath(entry, shadow / top))
    return shadow


def remove_staging(workdir: str | os.PathLike, stage: str) -> None:
    """Removes ``WORKDIR/.staging/<stage>/`` (and ``.staging`` itself once empty)."""
    staging = Path(workdir) / STAGING
    shutil.rmtree(staging / stage, ignore_errors=True)
    try:
        staging.rmdir()
    except OSError:
        pass


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike, *, length: int = 16) -> str:
    """SHA-256 of a file's bytes (hex, first ``length`` characters)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def load_npy(path: str | os.PathLike, *, mmap_mode: str | None = "r"):
    """``numpy.load`` of a ``.npy`` file whose header and size are checked first, so that a
    truncated or corrupt file is named in the error (NumPy itself says "mmap length is greater
    than file size", naming nothing).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ``.npy`` file, or shorter than its header says (truncated).
    """
    import numpy as np

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = handle.tell()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(
            f"{path}: not a readable .npy file ({error}); remove it to have it computed again"
        ) from None
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise ValueError(
            f"{path}: truncated ({size:,} bytes where its header announces {expected:,}, a {tuple(shape)} {dtype} "
            "array); remove it to have it computed again"
        )
    return np.load(path, mmap_mode=mmap_mode)
