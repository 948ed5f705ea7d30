"""The evaluation's records: one JSON file per pair and method under ``evaluation/records/``, written as
soon as the pair is done and reused on a re-run while the method's settings (their fingerprint) and the
subjects' content (their digests) are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import write_json

logger = logging.getLogger(__name__)

# Bumped when what a record holds changes: older records are then recomputed.
RECORD_VERSION = 1


def subject_digest(subject: Any) -> str:
    """A short fingerprint of a prepared subject as the methods see it (image, labels, spacing)."""
    digest = hashlib.sha256()
    for array in (subject.image, subject.labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(repr(tuple(float(s) for s in subject.spacing_mm)).encode())
    return digest.hexdigest()[:16]


def settings_key(method: str, settings: Mapping[str, Any]) -> str:
    """A short fingerprint of what a method's results depend on (records with another are redone)."""
    payload = json.dumps(
        {"version": RECORD_VERSION, "method": method, **settings}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ records
class Records:
    """The per pair × method result files under ``evaluation/records`` (written atomically).

    A record counts as done for the same method settings (``key``) and the same inputs:
    ``inputs_of(moving, fixed)`` fingerprints the pair's prepared images and labels, so that a
    work folder prepared again under the same subject ids has its pairs computed again.
    """

    def __init__(self, folder: Path, inputs_of: Callable[[str, str], str]) -> None:
        self.folder = folder / "records"
        self.inputs_of = inputs_of

    def path(self, method: str, moving_id: str, fixed_id: str) -> Path:
        return self.folder / method / f"{pair_name(moving_id, fixed_id)}.json"

    def read(self, method: str, moving_id: str, fixed_id: str) -> dict[str, Any] | None:
        path = self.path(method, moving_id, fixed_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable: redo the pair
            logger.warning("ignoring the unreadable record %s", path)
            return None

    def done(self, method: str, moving_id: str, fixed_id: str, key: str) -> bool:
        record = self.read(method, moving_id, fixed_id)
        return (
            record is not None
            and record.get("key") == key
            and (record.get("moving"), record.get("fixed")) == (moving_id, fixed_id)
            and record.get("inputs") == self.inputs_of(moving_id, fixed_id)
            and not record.get("error")
        )

    def write(
        self,
        method: str,
        moving_id: str,
        fixed_id: str,
        key: str,
        *,
        rows: list[dict] | None = None,
        seconds: float | None = None,
        threads: int | None = None,
        error: str | None = None,
    ) -> None:
        write_json(
            self.path(method, moving_id, fixed_id),
            {
                "moving": moving_id,
                "fixed": fixed_id,
                "method": method,
                "key": key,
                "inputs": self.inputs_of(moving_id, fixed_id),
                "seconds": seconds,
                "threads": threads,
                "error": error,
                "rows": rows or [],
            },
        )


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def pair_name(moving_id: str, fixed_id: str) -> str:
    return f"{moving_id}__{fixed_id}"
