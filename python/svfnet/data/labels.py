"""Label mappings: from a dataset's own label values to svfnet's regions.

svfnet's regions (README.md, Conventions): 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool,
4 RV myocardium. A mapping is a ``{source value: svfnet value}`` dictionary; source values it
does not list become background (and are reported).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from svfnet.common.workdir import REGIONS

LabelMapping = dict[int, int]

#: svfnet's own values (the synthetic cohort, and the default of the plain layout).
IDENTITY_LABELS: LabelMapping = {1: 1, 2: 2, 3: 3, 4: 4}
#: ACDC (and the Sunnybrook sample, which uses ACDC's values): 1 RV cavity, 2 myocardium, 3 LV cavity.
ACDC_LABELS: LabelMapping = {1: 3, 2: 2, 3: 1}
#: Named mappings accepted wherever a mapping is parsed (``--labels acdc``).
PRESETS: dict[str, LabelMapping] = {
    "svfnet": IDENTITY_LABELS,
    "identity": IDENTITY_LABELS,
    "acdc": ACDC_LABELS,
}


def parse_label_mapping(text: str, *, argument: str = "--labels") -> LabelMapping:
    """Parses ``"SRC:DST,SRC:DST"`` (e.g. ``"3:1,2:2"``) or a preset name (``acdc``, ``svfnet``).

    Raises:
        ValueError: malformed text, a repeated source value, or a destination outside 0–4
            (the message names ``argument``).
    """
    text = text.strip()
    if text.lower() in PRESETS:
        return dict(PRESETS[text.lower()])
    mapping: LabelMapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", item)
        if not match:
            raise ValueError(
                f"{argument}: expected SRC:DST pairs separated by commas (e.g. 3:1,2:2) or one of "
                f"{sorted(PRESETS)}, got {item!r} in {text!r}"
            )
        source, target = int(match.group(1)), int(match.group(2))
        if source in mapping:
            raise ValueError(f"{argument}: source label {source} is mapped twice in {text!r}")
        mapping[source] = target
    if not mapping:
        raise ValueError(f"{argument}: the mapping is empty ({text!r})")
    return check_label_mapping(mapping, argument=argument)


def check_label_mapping(mapping: Mapping[int, int], *, argument: str = "label_mapping") -> LabelMapping:
    """Validates a mapping: non-negative integer sources, destinations in 0–4, at least one region."""
    checked: LabelMapping = {}
    for source, target in mapping.items():
        if int(source) != source or int(source) < 0:
            raise ValueError(f"{argument}: source labels must be non-negative integers, got {source!r}")
        if int(target) != target or int(target) not in (0, *REGIONS):
            raise ValueError(
                f"{argument}: {source}:{target} maps to {target}, but svfnet's labels are 0 "
                f"(background) and {', '.join(f'{v} {n}' for v, n in REGIONS.items())}"
            )
        checked[int(source)] = int(target)
    if not any(target in REGIONS for target in checked.values()):
        raise ValueError(
            f"{argument}: the mapping {format_label_mapping(checked)} gives none of svfnet's regions"
        )
    return checked


def format_label_mapping(mapping: Mapping[int, int]) -> str:
    """``{3: 1, 2: 2}`` → ``"2:2,3:1"`` (the ``--labels`` syntax)."""
    return ",".join(f"{source}:{target}" for source, target in sorted(mapping.items()))


def mapped_regions(mapping: Mapping[int, int]) -> frozenset[int]:
    """The svfnet regions a mapping can provide."""
    return frozenset(target for target in mapping.values() if target in REGIONS)


def label_values(labels: np.ndarray) -> np.ndarray:
    """The distinct values of a non-negative integer volume, sorted (``np.unique``, faster for labels)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    if int(labels.max()) < 1 << 16:
        return np.flatnonzero(np.bincount(labels.reshape(-1)))
    return np.unique(labels)


def apply_label_mapping(labels: np.ndarray, mapping: Mapping[int, int]) -> tuple[np.ndarray, list[int]]:
    """Maps a label volume to svfnet's values.

    Args:
        labels: ``(I, J, K)`` non-negative integers.
        mapping: ``{source: svfnet value}``; other values become 0.

    Returns:
        ``(mapped, unmapped)``: the uint8 volume, and the non-zero source values present in
        ``labels`` that the mapping does not list (they became background).
    """
    present = label_values(labels)
    lookup = np.zeros(int(present.max()) + 1 if present.size else 1, dtype=np.uint8)
    for source, target in mapping.items():
        if source < lookup.size:
            lookup[source] = target
    unmapped = [int(value) for value in present if value != 0 and int(value) not in mapping]
    return lookup[labels], unmapped


# ----------------------------------------------------------------------------- by name
_IGNORED_WORDS = {
    "atrium",
    "atrial",
    "aorta",
    "aortic",
    "artery",
    "arterial",
    "vein",
    "venous",
    "pulmonary",
    "scar",
    "edema",
    "oedema",
    "infarct",
    "fibrosis",
    "papillary",
    "la",
    "ra",
    "ao",
    "pa",
}
_RIGHT_WORDS = {"rv", "rvc", "rvm", "right", "rvbp"}
_LEFT_WORDS = {"lv", "lvc", "lvm", "mlv", "left", "lvbp"}
_MUSCLE_WORDS = {"myo", "myocardium", "myocardial", "mlv", "lvm", "rvm", "wall", "muscle", "epicardium"}
_POOL_WORDS = {
    "cavity",
    "blood",
    "pool",
    "bloodpool",
    "lumen",
    "lvc",
    "rvc",
    "ventricle",
    "ventricular",
    "endocardium",
    "lv",
    "rv",
    "lvbp",
    "rvbp",
}


def region_from_name(name: str) -> int | None:
    """svfnet's region for a label name (``"LV cavity"`` → 1, ``"MYO"`` → 2, ``"right ventricle"`` → 3...).

    Names are matched on their words: a side (left/LV, right/RV; a myocardium with no side is
    the LV's, as in ACDC) and a kind (myocardium/wall, or cavity/blood pool/ventricle). Atria,
    vessels, scar and the like, and anything unrecognised, give ``None``.
    """
    words = set(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())
    if not words or words & _IGNORED_WORDS or words <= {"background", "bg", "0"}:
        return None
    right = bool(words & _RIGHT_WORDS)
    left = bool(words & _LEFT_WORDS) or (not right and bool(words & {"myo", "myocardium", "myocardial"}))
    if right == left:  # no side, or both
        return None
    if words & _MUSCLE_WORDS:
        return 4 if right else 2
    if words & _POOL_WORDS:
        return 3 if right else 1
    return None


def label_mapping_from_names(names: Mapping[int, str]) -> tuple[LabelMapping, dict[int, str]]:
    """Builds a mapping from ``{value: name}`` (as in an nnU-Net / Decathlon ``dataset.json``).

    Returns:
        ``(mapping, ignored)``: the mapping, and the non-zero values whose names match no region.
    """
    mapping: LabelMapping = {}
    ignored: dict[int, str] = {}
    for value, name in names.items():
        if value == 0:
            continue
        region = region_from_name(name)
        if region is None:
            ignored[value] = name
        else:
            mapping[value] = region
    return mapping, ignored
