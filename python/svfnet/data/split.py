"""Which prepared subjects train, validate and test: decided once per work folder, then kept.

``WORKDIR/split.json`` holds ``{"train": [...], "val": [...], "test": [...], "seed": S}``. The first
stage that needs it (references, train or evaluate) creates it from the prepared subjects with a
seeded shuffle; every later stage reads the same file, so a model is never tested on subjects it
was trained on. Frames of one patient (ids that differ only by an ``_ED``/``_ES`` ending, as the ACDC
and plain readers name them, or a ``_frameNN`` one, as ACDC's files and its nnU-Net conversion do) go
to the same side together: a model tested on a patient's end-systole must not have trained on the
same heart at end-diastole.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svfnet.common.atomic import write_json
from svfnet.common.workdir import WorkDir, subject_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


_PHASE_ENDING = re.compile(r"_(ED|ES|frame\d+)$", re.IGNORECASE)


def patient_of(subject_id: str) -> str:
    """The patient a subject id belongs to: the id without an ``_ED``/``_ES``/``_frameNN`` ending."""
    return _PHASE_ENDING.sub("", subject_id)


def split_path(workdir: str | Path) -> Path:
    return WorkDir(workdir).root / "split.json"


def split_sizes(
    count: int, *, test_fraction: float = 0.25, val_fraction: float = 0.1
) -> tuple[int, int, int]:
    """``(train, val, test)`` subject counts of a split of ``count`` subjects (one subject per
    patient; a patient's frames kept together may shift a side by one)."""
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(
            "subject_split(): 'test_fraction' and 'val_fraction' must be in [0, 1) with a sum below 1"
        )
    if count < 2:
        raise ValueError(f"subject_split(): need at least 2 prepared subjects to train, found {count}")
    n_test = max(round(count * test_fraction), 1 if count >= 4 and test_fraction > 0 else 0)
    n_val = max(round(count * val_fraction), 1 if count >= 4 and val_fraction > 0 else 0)
    while count - n_test - n_val < 2:
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return count - n_test - n_val, n_val, n_test


def plan_split(
    subject_ids: list[str] | tuple[str, ...],
    *,
    test_fraction: float = 0.25,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """The split :func:`subject_split` makes of these subjects, computed without reading or writing
    anything (``svfnet run`` writes it in one atomic step, replacing the old one only then)."""
    known = list(subject_ids)
    count = len(known)
    _, n_val, n_test = split_sizes(count, test_fraction=test_fraction, val_fraction=val_fraction)
    patients: dict[str, list[str]] = {}
    for subject_id in known:
        patients.setdefault(patient_of(subject_id), []).append(subject_id)
    groups = list(patients.values())
    order = np.random.default_rng(seed).permutation(len(groups))
    # whole patients, in shuffled order, fill test then validation, as long as two subjects are left
    # to train; with one subject per patient this is a plain shuffle of the subjects
    sides: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    for index in order:
        group = groups[index]
        fits = count - len(sides["test"]) - len(sides["val"]) - len(group) >= 2
        if fits and len(sides["test"]) < n_test:  # a patient's last frames may take a side one over
            side = "test"
        elif fits and len(sides["val"]) < n_val:
            side = "val"
        else:
            side = "train"
        sides[side] += group
    return Split(
        train=tuple(sorted(sides["train"])),
        val=tuple(sorted(sides["val"])),
        test=tuple(sorted(sides["test"])),
    )


def subject_split(
    workdir: str | Path, *, test_fraction: float = 0.25, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """The work folder's split, created on first use (see module docstring).

    With N subjects, ``round(N · test_fraction)`` test and ``round(N · val_fraction)`` validation
    subjects (at least one of each from 4 subjects on), the rest train (at least two). Patients go
    whole: a side may get a frame or two more than its count, and a patient who would leave fewer
    than two subjects to train goes to train, so with few patients validation (then test) may be
    smaller or empty (4 subjects of 2 patients: 2 test, 2 train).
    """
    path = split_path(workdir)
    known = subject_ids(workdir)
    if path.is_file():
        data = json.loads(path.read_text())
        split = Split(tuple(data["train"]), tuple(data["val"]), tuple(data["test"]))
        unknown = set(split.train + split.val + split.test) - set(known)
        if unknown:
            raise ValueError(
                f"{path} names subjects that are not prepared: {sorted(unknown)[:5]}; remove it to re-split"
            )
        tested = {patient_of(subject_id) for subject_id in split.test}
        leaked = sorted(tested & {patient_of(subject_id) for subject_id in split.train + split.val})
        if leaked:  # a split written before frames were kept together: kept (results depend on it), said
            logger.warning(
                "%s puts frames of one patient both in test and in train/validation (%s): the test is not "
                "on unseen hearts; remove it (and what was trained on it) to re-split by patient",
                path,
                ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""),
            )
        return split
    return run_split(workdir, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)


def run_split(
    workdir: str | Path, *, test_fraction: float = 0.25, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """The split stage: splits the work folder's prepared subjects afresh (:func:`plan_split`) and
    writes ``WORKDIR/split.json``, replacing an old one in one atomic step (``svfnet run`` runs it
    when the split settings or the prepared subjects change; :func:`subject_split` reads the split,
    making it on first use)."""
    split = plan_split(
        subject_ids(workdir), test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
    )
    write_json(
        split_path(workdir),
        {"train": list(split.train), "val": list(split.val), "test": list(split.test), "seed": seed},
    )
    return split
