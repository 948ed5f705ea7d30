"""What a stage of ``svfnet run`` was run with: the digests of its inputs and its fingerprint.

Each stage records in ``WORKDIR/stages/<stage>.json`` the fingerprint of its configuration section(s)
and of the inputs it actually reads (:func:`stage_inputs`); :mod:`svfnet.pipeline` skips a stage whose
fingerprint is unchanged and whose output (:func:`output_present`) is still there, resumes one that
started with the same fingerprint, and reruns the others (the module docstring of
:mod:`svfnet.pipeline` says why by content, not by order).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from svfnet.common.staging import file_digest
from svfnet.common.workdir import WorkDir, prepared_digests, subject_ids
from svfnet.config import DATA_KEYS, PREPARE_KEYS, SECTIONS
from svfnet.data.split import split_path

__all__ = ["dataset_path", "output_present", "read_split", "stage_fingerprint", "stage_inputs"]


def dataset_path(workdir: Path, config: dict[str, dict[str, Any]]) -> Path:
    """The dataset the ``prepare`` stage reads: ``WORKDIR/raw`` for the synthetic cohort, else ``[data] source``."""
    synthetic = config["data"]["source"] == "synthetic"
    return workdir / "raw" if synthetic else Path(config["data"]["source"])


def read_split(workdir: Path) -> dict[str, list[str]]:
    """The work folder's split.json as lists of subject ids per side."""
    data = json.loads(split_path(workdir).read_text())
    return {side: list(data.get(side, [])) for side in ("train", "val", "test")}


def _listing_digest(folder: Path) -> str:
    """The files of a dataset folder as names, sizes and modification times (not their bytes: a
    dataset may be large, and a file rewritten is a file changed)."""
    entries = []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            stat = path.stat()
            entries.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _grid_record(workdir: Path) -> dict[str, Any]:
    """The prepared grid (shape, voxel size) as subjects.json records it."""
    record = json.loads(WorkDir(workdir).subjects_json.read_text())
    return {"shape": record.get("shape"), "spacing_mm": record.get("spacing_mm")}


def stage_inputs(workdir: str | Path, config: dict[str, dict[str, Any]], stage: str) -> dict[str, Any]:
    """Digests of what ``stage`` reads from the work folder (its fingerprint, with its configuration):

    - ``prepare``: the dataset's files (names, sizes, modification times);
    - ``split``: the prepared subjects' ids;
    - ``shapes``: each prepared subject's labels and voxel size;
    - ``references``: the training and validation subjects, their landmarks, the grid;
    - ``train``: those subjects' images and labels, and their reference records (with
      ``targets = "references"``);
    - ``evaluate``: the test subjects' images and labels, and the checkpoint.

    Raises FileNotFoundError where an input is missing.
    """
    workdir = Path(workdir)
    folder = WorkDir(workdir)
    if stage == "data":
        return {}
    if stage == "prepare":
        dataset = dataset_path(workdir, config)
        if not dataset.is_dir():
            raise FileNotFoundError(f"{dataset}: no such dataset folder")
        return {"dataset": _listing_digest(dataset)}
    if stage == "split":
        return {"subjects": subject_ids(workdir)}
    if stage == "shapes":
        return {"prepared": prepared_digests(workdir, parts=("labels",)), "grid": _grid_record(workdir)}
    split = read_split(workdir)
    if stage == "references":
        subjects = sorted(split["train"] + split["val"])
        landmarks = {s: file_digest(folder.shapes / "landmarks" / f"{s}.npz") for s in subjects}
        return {"subjects": subjects, "landmarks": landmarks, "grid": _grid_record(workdir)}
    if stage == "train":
        subjects = sorted(split["train"] + split["val"])
        inputs: dict[str, Any] = {
            "train": split["train"],
            "val": split["val"],
            "prepared": prepared_digests(workdir, subjects),
        }
        if config["train"]["targets"] == "references":
            inputs["references"] = {
                s: file_digest(path)
                for s in subjects
                if (path := folder.references / "pairs" / f"{s}.json").is_file()
            }
        return inputs
    if stage == "evaluate":
        return {
            "test": split["test"],
            "val": split["val"],
            "prepared": prepared_digests(workdir, sorted(split["test"] or split["val"])),
            "checkpoint": file_digest(folder.models / "svfnet" / "checkpoint.pt"),
        }
    raise ValueError(f"stage_inputs(): unknown stage {stage!r}")


def stage_fingerprint(config: dict, stage: str, inputs: dict[str, Any]) -> str:
    """The fingerprint of ``stage``: its configuration section(s) and its inputs' digests, hashed."""
    sections: dict[str, Any] = {s: config[s] for s in SECTIONS[stage]}
    if stage == "prepare":
        sections = {"data": {key: config["data"][key] for key in PREPARE_KEYS}}
    elif stage == "data":
        keys = DATA_KEYS if config["data"]["source"] == "synthetic" else ("source",)
        sections = {"data": {key: config["data"][key] for key in keys}}
    payload = json.dumps({"stage": stage, "sections": sections, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def output_present(workdir: Path, stage: str, config: dict) -> bool:
    """Whether the main output of ``stage`` is in the work folder."""
    folder = WorkDir(workdir)
    return {
        "data": lambda: config["data"]["source"] != "synthetic" or (workdir / "raw").is_dir(),
        "prepare": lambda: folder.subjects_json.is_file(),
        "split": lambda: (workdir / "split.json").is_file(),
        "shapes": lambda: (folder.shapes / "summary.json").is_file(),
        "references": lambda: (folder.references / "pairs").is_dir(),
        "train": lambda: (folder.models / "svfnet" / "checkpoint.pt").is_file(),
        "evaluate": lambda: (folder.evaluation / "evaluation.json").is_file(),
    }[stage]()
