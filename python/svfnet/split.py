"""Which prepared subjects train, validate and test: decided once per work folder, then kept.

``WORKDIR/split.json`` holds ``{"train": [...], "val": [...], "test": [...], "seed": S}``. The first
stage that needs it (references, train or evaluate) creates it from the prepared subjects with a
seeded shuffle; every later stage reads the same file, so a model is never tested on subjects it
was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svfnet._io import write_json
from svfnet.workdir import WorkDir, subject_ids


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def split_path(workdir: str | Path) -> Path:
    return WorkDir(workdir).root / "split.json"


def subject_split(
    workdir: str | Path, *, test_fraction: float = 0.25, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """The work folder's split, created on first use (see module docstring).

    With N subjects, ``round(N · test_fraction)`` test and ``round(N · val_fraction)`` validation
    subjects (at least one of each from 4 subjects on), the rest train (at least two).
    """
    path = split_path(workdir)
    known = subject_ids(workdir)
    if path.is_file():
        data = json.loads(path.read_text())
        split = Split(tuple(data["train"]), tuple(data["val"]), tuple(data["test"]))
        unknown = set(split.train + split.val + split.test) - set(known)
        if unknown:
            raise ValueError(f"{path} names subjects that are not prepared: {sorted(unknown)[:5]}; remove it to re-split")
        return split
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError("subject_split(): 'test_fraction' and 'val_fraction' must be in [0, 1) with a sum below 1")
    count = len(known)
    if count < 2:
        raise ValueError(f"subject_split(): need at least 2 prepared subjects to train, found {count}")
    n_test = max(round(count * test_fraction), 1 if count >= 4 and test_fraction > 0 else 0)
    n_val = max(round(count * val_fraction), 1 if count >= 4 and val_fraction > 0 else 0)
    while count - n_test - n_val < 2:
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    order = np.random.default_rng(seed).permutation(count)
    shuffled = [known[i] for i in order]
    split = Split(
        train=tuple(sorted(shuffled[n_test + n_val :])),
        val=tuple(sorted(shuffled[n_test : n_test + n_val])),
        test=tuple(sorted(shuffled[:n_test])),
    )
    write_json(path, {"train": list(split.train), "val": list(split.val), "test": list(split.test), "seed": seed})
    return split
