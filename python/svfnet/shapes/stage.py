"""The ``svfnet shapes`` stage: a template's landmarks carried into every prepared subject.

For every prepared subject: extract its surfaces, register the template to them by LDDMM in the
space of currents, and store where the template's landmarks land, ``φ_n(p_k)``, in millimetres
of the prepared grid's frame (voxel ``(i, j, k)`` at ``(i, j, k) · spacing``). Layout::

    WORKDIR/shapes/
      config.json             the template (and a digest of its prepared labels) and every setting;
                              a later run must match it
      template.npz            template surfaces (vertices_mm, faces per region) and landmarks
      template.vtk            the template surfaces, for ParaView (cell field "region")
      landmarks/<id>.npz      one file per subject (written atomically): landmarks_mm (K, 3),
                              residuals, momenta, control points, and ``inputs``: a digest of
                              the subject's prepared labels and voxel size and of the template's
      meshes/<id>.vtk         the deformed template (with save_meshes)
      summary.json            residuals of all subjects, outliers flagged

Subjects whose file was computed from their current prepared labels and voxel size and from the
current template are skipped (resume); a subject prepared again (another grid, another dataset
under the same id) is registered again, and a template whose own prepared labels changed, or that
is no longer a prepared subject, makes every subject be registered again. Such a recomputation,
and ``overwrite``, writes beside the old results (``WORKDIR/.staging/shapes/``) and replaces them
only when every subject is done; the work folder is locked meanwhile (:mod:`svfnet.common.locks`).
Registrations run in local processes, or on a Dask cluster (``scheduler``), through
:mod:`svfnet.common.parallel`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import atomic_path, write_json
from svfnet.common.workdir import REGIONS, WorkDir, read_prepared, subject_ids
from svfnet.shapes.parameters import LddmmParameters
from svfnet.shapes.surfaces import ENCLOSED_LABELS, Surface

__all__ = ["ShapesSummary", "choose_template", "farthest_points", "read_landmarks", "run_shapes"]

logger = logging.getLogger(__name__)

# how many subjects the template pre-pass compares each candidate with, at most
_TEMPLATE_PEERS = 64


@dataclass
class ShapesSummary:
    """What a run of the stage left in ``WORKDIR/shapes``.

    Attributes:
        template: the template subject's id.
        computed, skipped: subjects registered by this run, and those found done.
        failed: ``{subject: error message}`` for subjects that could not be registered.
        residuals: per subject ``{initial_distance, final_distance, distance_reduction, ...}``.
        outliers: subjects whose residual is far from the others' (robust z-score above the threshold).
    """

    template: str
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    residuals: dict[str, dict[str, Any]] = field(default_factory=dict)
    outliers: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A plain-text table of the residuals, outliers marked."""
        lines = [f"{'subject':24s} {'d initial':>11s} {'d final':>11s} {'reduction':>9s} {'iter':>5s}  "]
        for subject, r in sorted(self.residuals.items()):
            mark = "OUTLIER" if subject in self.outliers else ("template" if subject == self.template else "")
            lines.append(
                f"{subject:24s} {r['initial_distance']:11.1f} {r['final_distance']:11.1f} "
                f"{100 * r['distance_reduction']:8.1f}% {r['iterations']:5d}  {mark}"
            )
        return "\n".join(lines)


# -------------------------------------------------------------------- helpers
def farthest_points(points: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` points spread over ``points`` ``(N, 3)`` by farthest-point sampling
    (deterministic: starts from the point nearest the centroid)."""
    points = np.asarray(points, dtype=np.float64)
    if count >= len(points):
        return np.arange(len(points))
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    nearest = np.linalg.norm(points - points[chosen[0]], axis=1)
    for n in range(1, count):
        chosen[n] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, np.linalg.norm(points - points[chosen[n]], axis=1))
    return np.sort(chosen)


def _extract(labels, spacing, regions, surface_settings: dict[str, Any], subject: str) -> dict[int, Surface]:
    from svfnet.shapes.surfaces import surfaces_from_labels

    return surfaces_from_labels(
        labels,
        spacing,
        regions=regions,
        target_triangles=surface_settings["target_triangles"],
        smoothing_vox=surface_settings["smoothing_vox"],
        subject=subject,
    )


def choose_template(
    workdir: str | Path,
    subjects: list[str],
    regions: list[int],
    surface_settings: dict[str, Any],
    sigma_w_mm: float,
    *,
    progress: bool = True,
) -> str:
    """The subject whose surfaces are closest, on average, to the others' (currents distance).

    A cheap pre-pass: coarse surfaces (a quarter of the triangles, at least 1000), each subject
    compared with at most 64 others (a fixed random choice when there are more).
    """
    import torch
    from tqdm.auto import tqdm

    from svfnet.ops.kernels import BilinearFormFunction
    from svfnet.shapes.currents import as_currents

    coarse = dict(surface_settings, target_triangles=max(1000, surface_settings["target_triangles"] // 4))
    currents, norms = {}, {}
    for subject in tqdm(subjects, desc="template pre-pass", disable=not progress, unit="subject"):
        prepared = read_prepared(workdir, subject)
        surfaces = _extract(prepared.labels, prepared.spacing_mm, regions, coarse, subject)
        currents[subject] = {
            r: as_currents("choose_template", subject, s, torch.float32) for r, s in surfaces.items()
        }
        norms[subject] = {
            r: float(BilinearFormFunction.apply(c, n, c, n, sigma_w_mm, True))
            for r, (c, n) in currents[subject].items()
        }
    rng = np.random.default_rng(0)
    mean_distance = {}
    for subject in subjects:
        others = [s for s in subjects if s != subject]
        if len(others) > _TEMPLATE_PEERS:
            others = list(rng.choice(others, _TEMPLATE_PEERS, replace=False))
        total = 0.0
        for other in others:
            d2 = 0.0
            for region in regions:
                (ca, na), (cb, nb) = currents[subject][region], currents[other][region]
                cross = float(BilinearFormFunction.apply(ca, na, cb, nb, sigma_w_mm, False))
                d2 += norms[subject][region] - 2 * cross + norms[other][region]
            total += math.sqrt(max(d2, 0.0))
        mean_distance[subject] = total / max(len(others), 1)
    return min(subjects, key=lambda s: (mean_distance[s], s))


def _surfaces_arrays(surfaces: dict[int, Surface]) -> dict[str, np.ndarray]:
    out = {"regions": np.array(sorted(surfaces), dtype=np.int64)}
    for region, surface in surfaces.items():
        out[f"vertices_mm_{region}"] = surface.vertices_mm
        out[f"faces_{region}"] = surface.faces
    return out


def _surfaces_from_arrays(arrays: Any) -> dict[int, Surface]:
    return {
        int(r): Surface(arrays[f"vertices_mm_{int(r)}"], arrays[f"faces_{int(r)}"]) for r in arrays["regions"]
    }


def read_landmarks(workdir: str | Path, subject: str) -> dict[str, Any]:
    """The stage's result for one subject: ``landmarks_mm`` ``(K, 3)`` and its residuals."""
    path = WorkDir(workdir).shapes / "landmarks" / f"{subject}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `svfnet shapes` for this work folder first")
    with np.load(path) as data:
        out = {key: data[key] for key in data.files}
    out["summary"] = json.loads(str(out["summary"]))
    return out


def write_landmarks(
    path: Path, landmarks_mm: np.ndarray, summary: dict[str, Any], extra: dict[str, np.ndarray]
) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(
                handle,
                landmarks_mm=landmarks_mm,
                summary=np.array(json.dumps(summary, sort_keys=True)),
                **extra,
            )


# -------------------------------------------------------------------- the task (runs in workers)
def _register_subject(task: dict[str, Any]) -> dict[str, Any]:
    """Extracts one subject's surfaces, registers the template, returns landmarks and residuals."""
    from svfnet.shapes.lddmm import register_surfaces

    subject = task["subject"]
    subject_surfaces = _extract(
        task["labels"], task["spacing_mm"], task["regions"], task["surface_settings"], subject
    )
    template = _surfaces_from_arrays(task["template"])
    try:
        result = register_surfaces(template, subject_surfaces, task["parameters"])
    except ValueError as error:
        raise ValueError(f"subject {subject}: {error}") from None
    out = {
        "subject": subject,
        "landmarks_mm": result.transform_points(task["landmarks_template_mm"]),
        "summary": result.summary(),
        "momenta": result.momenta,
        "control_points_mm": result.control_points_mm,
    }
    if task["save_meshes"]:
        vertices = np.concatenate([template[r].vertices_mm for r in sorted(template)])
        moved = result.transform_points(vertices)
        deformed, offset = {}, 0
        for region in sorted(template):
            count = len(template[region].vertices_mm)
            deformed[region] = Surface(moved[offset : offset + count], template[region].faces)
            offset += count
        out["deformed"] = _surfaces_arrays(deformed)
    return out


# -------------------------------------------------------------------- the stage
def run_shapes(
    workdir: str | Path,
    *,
    template: str | None = None,
    parameters: LddmmParameters | None = None,
    target_triangles: int = 4000,
    smoothing_vox: float = 0.5,
    landmarks: int | None = 1000,
    regions: Iterable[int] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    save_meshes: bool = False,
    outlier_threshold: float = 3.5,
    progress: bool = True,
) -> ShapesSummary:
    """Registers a template to every prepared subject and stores the landmarks (see the module doc).

    Args:
        workdir: the work folder (``svfnet prepare`` wrote ``WORKDIR/prepared``).
        template: the template subject's id (default: the subject closest on average to the others).
        parameters: LDDMM parameters (:class:`LddmmParameters` defaults otherwise).
        target_triangles: triangles of each subject's surfaces together, about.
        smoothing_vox: smoothing of the region indicators before marching cubes, in voxels.
        landmarks: how many template vertices to carry (farthest-point sampled); None for all.
        regions: the regions to match (default: those every subject has).
        workers: local processes (default: one per core); 1 runs in this process.
        scheduler: a Dask distributed scheduler address; the registrations run there.
        overwrite: recompute everything, even with results of other settings on disk (written
            beside them, swapped in when every subject is done).
        save_meshes: also write each subject's deformed template as ``meshes/<id>.vtk``.
        outlier_threshold: robust z-score (median, MAD) of the final distance and of the relative
            residual above which a subject is flagged.
        progress: show progress bars.

    Returns:
        A :class:`ShapesSummary`.

    Raises:
        ValueError: bad settings, settings that differ from the results on disk (without
            ``overwrite``), or subjects that failed (after the others are stored; rerun to resume).
    """
    from svfnet.common.limits import MAX_LANDMARKS, MAX_TRIANGLES, check_workers
    from svfnet.common.locks import folder_lock
    from svfnet.common.staging import STAGING, recover_replaced, remove_staging, replace_tree

    func = "run_shapes"
    folder = WorkDir(workdir)
    parameters = parameters or LddmmParameters()
    if not isinstance(parameters, LddmmParameters):
        raise TypeError(f"{func}(): 'parameters' must be LddmmParameters, got {type(parameters).__name__}")
    if (
        isinstance(target_triangles, bool)
        or not isinstance(target_triangles, int)
        or not 100 <= target_triangles <= MAX_TRIANGLES
    ):
        raise ValueError(
            f"{func}(): 'target_triangles' must be an integer >= 100 (at most {MAX_TRIANGLES:,}), got {target_triangles!r}"
        )
    if not (isinstance(smoothing_vox, (int, float)) and math.isfinite(smoothing_vox) and smoothing_vox >= 0):
        raise ValueError(f"{func}(): 'smoothing_vox' must be >= 0, got {smoothing_vox!r}")
    if landmarks is not None and (
        isinstance(landmarks, bool) or not isinstance(landmarks, int) or not 1 <= landmarks <= MAX_LANDMARKS
    ):
        raise ValueError(
            f"{func}(): 'landmarks' must be a positive integer (at most {MAX_LANDMARKS:,}) or None (all "
            f"vertices), got {landmarks!r}"
        )
    if not (math.isfinite(outlier_threshold) and outlier_threshold > 0):
        raise ValueError(f"{func}(): 'outlier_threshold' must be positive, got {outlier_threshold!r}")
    check_workers(workers, f"{func}(): 'workers'")
    if scheduler is not None and not isinstance(scheduler, str):
        raise TypeError(f"{func}(): 'scheduler' must be an address string, got {type(scheduler).__name__}")
    subjects = subject_ids(workdir)
    if not subjects:
        raise ValueError(f"{func}(): {folder.subjects_json} lists no subject")
    if template is not None and template not in subjects:
        raise ValueError(f"{func}(): template {template!r} is not a prepared subject of {workdir}")
    surface_settings = {"target_triangles": target_triangles, "smoothing_vox": float(smoothing_vox)}

    # every prepared subject read once: its regions, and the digest of what this stage reads of it
    # (labels and voxel size), which every result records so that a re-prepared subject is redone
    prepared_subjects = {s: read_prepared(workdir, s) for s in subjects}
    present = {s: p.regions for s, p in prepared_subjects.items()}
    digests = {s: _inputs_digest(p) for s, p in prepared_subjects.items()}
    del prepared_subjects
    # regions: given, or those that every subject has (read from the prepared labels)
    if regions is None:
        common = set(ENCLOSED_LABELS)
        for s in subjects:
            common &= set(present[s])
        chosen_regions = sorted(common)
        if not chosen_regions:
            raise ValueError(f"{func}(): no region of {sorted(REGIONS)} is present in every subject")
    else:
        chosen_regions = sorted({int(r) for r in regions})
        unknown = [r for r in chosen_regions if r not in ENCLOSED_LABELS]
        if unknown or not chosen_regions:
            raise ValueError(
                f"{func}(): 'regions' must be among {sorted(ENCLOSED_LABELS)}, got {chosen_regions}"
            )
    settings = {
        "lddmm": parameters.to_dict(),
        "surfaces": surface_settings,
        "regions": chosen_regions,
        "landmarks": landmarks,
    }

    def differing_settings(stored: dict[str, Any]) -> list[str]:
        differing = sorted(k for k in settings if stored.get(k) != json.loads(json.dumps(settings[k])))
        if template is not None and stored.get("template") != template:
            differing.append("template")
        return differing

    def template_current(stored: dict[str, Any]) -> bool:
        """The stored template is still a prepared subject, with the labels it was made from."""
        chosen = stored.get("template")
        return chosen in digests and stored.get("template_inputs") == digests[chosen]

    def stored_config(out: Path) -> dict[str, Any] | None:
        path = out / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None

    with folder_lock(folder.root, f"the work folder {folder.root}"):
        recover_replaced(folder.root)
        # Where the results go: in place (resuming, or updating the subjects whose prepared labels
        # changed), or beside the old results (WORKDIR/.staging/shapes/shapes), swapped in when
        # complete: with `overwrite`, or when the template itself must be recomputed. An unfinished
        # replacement with these settings resumes.
        staging_root = folder.root / STAGING / "shapes"
        staged_out = staging_root / "shapes"
        live_config, staged_config = stored_config(folder.shapes), stored_config(staged_out)
        if (
            staged_config is not None
            and not differing_settings(staged_config)
            and template_current(staged_config)
        ):
            out = staged_out
        elif overwrite:
            out = staged_out if folder.shapes.exists() else folder.shapes
        elif live_config is None:
            out = folder.shapes
        elif differing := differing_settings(live_config):
            raise ValueError(
                f"{func}(): {folder.shapes} holds results computed with other settings "
                f"({', '.join(differing)} "
                "differ); pass overwrite=True (--overwrite) to recompute, or use the same settings to resume"
            )
        elif not template_current(live_config):
            logger.warning(
                "%s: the template %s is no longer a prepared subject or its labels changed (prepared again?): "
                "every subject is registered again, beside the old results, which are replaced when done",
                folder.shapes,
                live_config.get("template"),
            )
            out = staged_out
        else:
            out = folder.shapes
        if out == staged_out and staged_config is None and staging_root.exists():
            shutil.rmtree(staging_root)  # an earlier replacement with other settings: not ours to resume
        summary = _shapes_into(
            workdir,
            out,
            subjects,
            present,
            digests,
            chosen_regions,
            settings,
            template,
            parameters,
            surface_settings,
            landmarks,
            stored_config(out),
            workers,
            scheduler,
            save_meshes,
            outlier_threshold,
            progress,
        )
        if out != folder.shapes and not summary.failed:
            replace_tree(out, folder.shapes)
            remove_staging(folder.root, "shapes")
    if summary.failed:
        lines = "\n  ".join(summary.failed[s] for s in sorted(summary.failed))
        raise ValueError(
            f"{func}(): {len(summary.failed)} subject(s) failed (the others are stored; rerun to "
            f"resume):\n  {lines}"
        )
    return summary


def _inputs_digest(prepared: Any) -> str:
    """What the stage reads of a prepared subject: its labels and voxel size (a digest)."""
    import hashlib

    labels = np.ascontiguousarray(prepared.labels, dtype=np.uint8)
    digest = hashlib.sha256(f"{labels.shape}{[float(np.float32(s)) for s in prepared.spacing_mm]}".encode())
    digest.update(labels.tobytes())
    return digest.hexdigest()[:16]


def _stored_inputs(path: Path) -> str | None:
    """The inputs digest a landmarks file was computed from (None: none recorded, or unreadable)."""
    try:
        with np.load(path) as data:
            return str(data["inputs"]) if "inputs" in data.files else None
    except (OSError, ValueError, KeyError):
        return None


def _shapes_into(
    workdir,
    out: Path,
    subjects,
    present,
    digests,
    chosen_regions,
    settings,
    template,
    parameters,
    surface_settings,
    landmarks,
    stored,
    workers,
    scheduler,
    save_meshes,
    outlier_threshold,
    progress,
) -> ShapesSummary:
    """The stage's work, writing into ``out`` (the work folder's ``shapes/`` or its replacement)."""
    from svfnet.common.parallel import run_tasks

    func = "run_shapes"
    config_path = out / "config.json"
    landmarks_dir = out / "landmarks"
    if stored is not None:
        template = stored["template"]

    # the template: its surfaces and landmarks, stored once
    template_npz = out / "template.npz"
    if template is None:
        template = choose_template(
            workdir, subjects, chosen_regions, surface_settings, parameters.sigma_w_mm, progress=progress
        )
        logger.info("template: %s (closest on average to the others)", template)
    if template_npz.is_file() and stored is not None:
        with np.load(template_npz) as data:
            template_surfaces = _surfaces_from_arrays(data)
            landmark_index = data["landmark_vertex_index"]
    else:
        missing = {r for r in chosen_regions if r not in present[template]}
        if missing:
            raise ValueError(f"{func}(): the template {template} lacks region(s) {sorted(missing)}")
        prepared = read_prepared(workdir, template)
        template_surfaces = _extract(
            prepared.labels, prepared.spacing_mm, chosen_regions, surface_settings, template
        )
        vertices = np.concatenate([template_surfaces[r].vertices_mm for r in chosen_regions])
        landmark_index = farthest_points(vertices, landmarks or len(vertices))
        vertex_region = np.concatenate(
            [np.full(len(template_surfaces[r].vertices_mm), r) for r in chosen_regions]
        )
        arrays = _surfaces_arrays(template_surfaces)
        arrays.update(
            landmark_vertex_index=landmark_index,
            landmarks_mm=vertices[landmark_index],
            landmark_region=vertex_region[landmark_index],
            template=np.array(template),
        )
        from svfnet.shapes.surfaces import save_surfaces

        # the configuration first: a run stopped before template.npz then recomputes it
        write_json(config_path, dict(settings, template=template, template_inputs=digests[template]))
        with atomic_path(template_npz) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
        save_surfaces(out / "template.vtk", template_surfaces)
    all_vertices = np.concatenate([template_surfaces[r].vertices_mm for r in chosen_regions])
    landmarks_template_mm = all_vertices[landmark_index]
    template_arrays = _surfaces_arrays(template_surfaces)

    # a subject is done when its file was computed from its current labels and this template
    def inputs_of(subject: str) -> str:
        return f"{digests[subject]}-{digests[template]}"

    summary = ShapesSummary(template=template)
    todo: list[str] = []
    for subject in subjects:
        path = landmarks_dir / f"{subject}.npz"
        if path.is_file():
            if _stored_inputs(path) == inputs_of(subject):
                summary.skipped.append(subject)
                continue
            logger.info(
                "%s: computed from other prepared labels (prepared again?): registered again", subject
            )
        missing = {r for r in chosen_regions if r not in present[subject]}
        if missing:
            names = ", ".join(f"{r} ({REGIONS[r]})" for r in sorted(missing))
            summary.failed[subject] = f"subject {subject}: region(s) {names} empty in its label map"
            continue
        todo.append(subject)

    # the template itself: identity, nothing to register
    if template in todo:
        todo.remove(template)
        identity = {
            "initial_distance": 0.0, "final_distance": 0.0, "distance_reduction": 1.0, "region_distances": {},
            "kinetic_energy": 0.0, "energy": 0.0, "iterations": 0, "evaluations": 0, "converged": True,
            "message": "the template", "seconds": 0.0, "control_points": 0,
        }  # fmt: skip
        write_landmarks(
            landmarks_dir / f"{template}.npz",
            landmarks_template_mm,
            identity,
            {"inputs": np.array(inputs_of(template))},
        )
        summary.computed.append(template)

    def tasks() -> list[dict[str, Any]]:
        tasks_ = []
        for subject in todo:
            prepared = read_prepared(workdir, subject)
            tasks_.append(
                {
                    "subject": subject,
                    "labels": prepared.labels,
                    "spacing_mm": prepared.spacing_mm,
                    "regions": chosen_regions,
                    "surface_settings": surface_settings,
                    "template": template_arrays,
                    "parameters": parameters,
                    "landmarks_template_mm": landmarks_template_mm,
                    "save_meshes": save_meshes,
                }
            )
        return tasks_

    for outcome in run_tasks(
        _register_subject,
        tasks(),
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        description="shapes",
    ):
        subject = todo[outcome.index]
        if outcome.error is not None:
            summary.failed[subject] = str(outcome.error)
            logger.warning("%s", outcome.error)
            continue
        value = outcome.value
        extra = {
            "momenta": value["momenta"],
            "control_points_mm": value["control_points_mm"],
            "inputs": np.array(inputs_of(subject)),
        }
        write_landmarks(landmarks_dir / f"{subject}.npz", value["landmarks_mm"], value["summary"], extra)
        if "deformed" in value:
            from svfnet.shapes.surfaces import save_surfaces

            save_surfaces(out / "meshes" / f"{subject}.vtk", _surfaces_from_arrays(value["deformed"]))
        summary.computed.append(subject)

    # residuals of every subject done, outliers flagged; files of subjects no longer prepared go
    for path in landmarks_dir.glob("*.npz") if landmarks_dir.is_dir() else ():
        if path.stem not in digests:
            logger.info("removing %s: %s is no longer a prepared subject", path, path.stem)
            path.unlink()
    for subject in subjects:
        path = landmarks_dir / f"{subject}.npz"
        if path.is_file() and subject not in summary.failed:
            with np.load(path) as data:
                summary.residuals[subject] = json.loads(str(data["summary"]))
    summary.outliers = _outliers(summary.residuals, template, outlier_threshold)
    write_json(
        out / "summary.json",
        {
            "template": template,
            "subjects": summary.residuals,
            "outliers": summary.outliers,
            "failed": summary.failed,
            "outlier_threshold": outlier_threshold,
        },
    )
    return summary


def _outliers(residuals: dict[str, dict[str, Any]], template: str, threshold: float) -> list[str]:
    """Subjects whose final distance or relative residual (final / initial) has a robust z-score
    (``0.6745 (x - median) / MAD``) above ``threshold``; the template is not judged."""
    subjects = [s for s in residuals if s != template]
    if len(subjects) < 3:
        return []
    flagged = set()
    for key in ("final_distance", "relative"):
        values = np.array(
            [
                residuals[s]["final_distance"] / residuals[s]["initial_distance"]
                if key == "relative" and residuals[s]["initial_distance"] > 0
                else residuals[s]["final_distance"]
                for s in subjects
            ]
        )
        median = np.median(values)
        mad = np.median(np.abs(values - median))
        if mad <= 0:
            continue
        z = 0.6745 * (values - median) / mad
        flagged.update(s for s, score in zip(subjects, z, strict=True) if score > threshold)
    return sorted(flagged)
