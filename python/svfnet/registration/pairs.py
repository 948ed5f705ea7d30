"""The list of pairs ``svfnet register --pairs FILE`` reads: one CSV row per pair (moving and fixed image,
optional label maps, output prefix), paths relative to the list's folder, checked before any work.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PairFiles:
    """One pair to register, as files.

    Attributes:
        moving, fixed: 3D NIfTI images.
        out_prefix: output prefix (``PREFIX_warped.nii.gz``...; a folder, or a prefix ending in
            ``/``, gets ``folder/warped.nii.gz``...).
        moving_labels, fixed_labels: optional label maps on the images' grids.
    """

    moving: Path
    fixed: Path
    out_prefix: str
    moving_labels: Path | None = None
    fixed_labels: Path | None = None

    def missing_files(self) -> list[Path]:
        return [
            p
            for p in (self.moving, self.fixed, self.moving_labels, self.fixed_labels)
            if p and not p.is_file()
        ]


def read_pairs(path: str | os.PathLike) -> list[PairFiles]:
    """Reads a batch file: CSV with a header ``moving,fixed,out_prefix[,moving_labels,fixed_labels]``.

    ``out`` is accepted for ``out_prefix``; empty label cells mean no labels; relative paths are
    relative to the CSV file's folder; ``#`` starts a comment line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column or cell, an unknown column, or two rows with one output prefix
            (the message gives the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    base = path.parent
    with path.open(newline="") as handle:
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    columns = [c.strip() for c in reader.fieldnames or []]
    aliases = {"out": "out_prefix", "output": "out_prefix", "prefix": "out_prefix"}
    columns = [aliases.get(c, c) for c in columns]
    allowed = {"moving", "fixed", "out_prefix", "moving_labels", "fixed_labels"}
    if unknown := sorted(set(columns) - allowed):
        raise ValueError(f"{path}: unknown columns {unknown} (expected {sorted(allowed)})")
    if missing := sorted({"moving", "fixed", "out_prefix"} - set(columns)):
        raise ValueError(
            f"{path}: the header lacks the columns {missing} "
            "(expected moving,fixed,out_prefix[,moving_labels,fixed_labels])"
        )
    reader.fieldnames = columns

    def resolve(text: str | None) -> Path | None:
        text = (text or "").strip()
        if not text:
            return None
        candidate = Path(text).expanduser()
        return candidate if candidate.is_absolute() else base / candidate

    pairs: list[PairFiles] = []
    seen: dict[str, int] = {}
    for line_number, row in enumerate(reader, start=2):
        if None in row:
            raise ValueError(f"{path}, row {line_number}: more cells than columns")
        cells = {k: resolve(v) for k, v in row.items()}
        for required in ("moving", "fixed", "out_prefix"):
            if cells[required] is None:
                raise ValueError(f"{path}, row {line_number}: the '{required}' cell is empty")
        prefix_text = (row["out_prefix"] or "").strip()
        prefix = str(cells["out_prefix"]) + ("/" if prefix_text.endswith(("/", os.sep)) else "")
        if prefix in seen:
            raise ValueError(
                f"{path}, row {line_number}: output prefix {prefix_text!r} repeats row {seen[prefix]}"
            )
        seen[prefix] = line_number
        pairs.append(
            PairFiles(
                cells["moving"], cells["fixed"], prefix, cells.get("moving_labels"), cells.get("fixed_labels")
            )
        )
    if not pairs:
        raise ValueError(f"{path}: no pairs listed")
    return pairs
