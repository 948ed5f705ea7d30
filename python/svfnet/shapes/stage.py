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
from svfnet.common.limits import MAX_LANDMARKS, MAX_TRIANGLES, check_workers
from svfnet.common.locks import folder_lock
from svfnet.common.parallel import run_tasks
from svfnet.common.staging import STAGING, recover_replaced, remove_staging, replace_tree
from svfnet.common.workdir import REGIONS, WorkDir, read_prepared, subject_ids
from svfnet.shapes.landmarks import (
    inputs_digest,
    stored_inputs,
    surfaces_arrays,
    surfaces_from_arrays,
    write_landmarks,
)
from svfnet.shapes.lddmm import register_surfaces
from svfnet.shapes.parameters import LddmmParameters
from svfnet.shapes.surfaces import ENCLOSED_LABELS, Surface, save_surfaces
from svfnet.shapes.template import choose_template, extract_surfaces, farthest_points

__all__ = ["ShapesSummary", "run_shapes"]

logger = logging.getLogger(__name__)


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


# -------------------------------------------------------------------- the task (runs in workers)
def _register_subject(task: dict[str, Any]) -> dict[str, Any]:
    """Extracts one subject's surfaces, registers the template, returns landmarks and residuals."""
    subject = task["subject"]
    subject_surfaces = extract_surfaces(
        task["labels"], task["spacing_mm"], task["regions"], task["surface_settings"], subject
    )
    template = surfaces_from_arrays(task["template"])
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
        out["deformed"] = surfaces_arrays(deformed)
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
    func = "run_shapes"
    folder = WorkDir(workdir)
    parameters = parameters or LddmmParameters()
    subjects, present, digests, chosen_regions, surface_settings, settings = _plan_run(
        func, workdir, folder, template, parameters, target_triangles, smoothing_vox, landmarks, regions,
        outlier_threshold, workers, scheduler,
    )  # fmt: skip

    with folder_lock(folder.root, f"the work folder {folder.root}"):
        recover_replaced(folder.root)
        out = _choose_output(func, folder, settings, template, digests, overwrite)
        summary = _shapes_into(
            workdir, out, subjects, present, digests, chosen_regions, settings, template, parameters,
            surface_settings, landmarks, _stored_config(out), workers, scheduler, save_meshes,
            outlier_threshold, progress,
        )  # fmt: skip
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


def _check_settings(
    func, parameters, target_triangles, smoothing_vox, landmarks, outlier_threshold, workers, scheduler
) -> None:
    """Raises on a bad setting of :func:`run_shapes` (the messages name ``func``)."""
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


def _plan_run(
    func, workdir, folder, template, parameters, target_triangles, smoothing_vox, landmarks, regions,
    outlier_threshold, workers, scheduler,
):  # fmt: skip
    """Checks :func:`run_shapes`' settings and reads the prepared subjects: returns the subjects,
    their regions and input digests, the regions to match, the surface settings and the settings
    that a stored config must match."""
    _check_settings(
        func, parameters, target_triangles, smoothing_vox, landmarks, outlier_threshold, workers, scheduler
    )
    subjects, present, digests = _read_subjects(func, workdir, folder, template)
    surface_settings = {"target_triangles": target_triangles, "smoothing_vox": float(smoothing_vox)}
    chosen_regions = _choose_regions(func, subjects, present, regions)
    settings = {
        "lddmm": parameters.to_dict(),
        "surfaces": surface_settings,
        "regions": chosen_regions,
        "landmarks": landmarks,
    }
    return subjects, present, digests, chosen_regions, surface_settings, settings


def _read_subjects(func, workdir, folder: WorkDir, template) -> tuple[list[str], dict, dict[str, str]]:
    """The prepared subjects, each read once: its regions, and the digest of what this stage reads
    of it (labels and voxel size), which every result records so that a re-prepared subject is redone."""
    subjects = subject_ids(workdir)
    if not subjects:
        raise ValueError(f"{func}(): {folder.subjects_json} lists no subject")
    if template is not None and template not in subjects:
        raise ValueError(f"{func}(): template {template!r} is not a prepared subject of {workdir}")
    prepared_subjects = {s: read_prepared(workdir, s) for s in subjects}
    present = {s: p.regions for s, p in prepared_subjects.items()}
    digests = {s: inputs_digest(p) for s, p in prepared_subjects.items()}
    return subjects, present, digests


def _choose_regions(func, subjects, present, regions: Iterable[int] | None) -> list[int]:
    """The regions to match: given, or those that every subject has (read from the prepared labels)."""
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
    return chosen_regions


def _differing_settings(settings, template, stored: dict[str, Any]) -> list[str]:
    """The settings (and the template, when one was asked for) that differ from a stored config."""
    differing = sorted(k for k in settings if stored.get(k) != json.loads(json.dumps(settings[k])))
    if template is not None and stored.get("template") != template:
        differing.append("template")
    return differing


def _template_current(digests, stored: dict[str, Any]) -> bool:
    """The stored template is still a prepared subject, with the labels it was made from."""
    chosen = stored.get("template")
    return chosen in digests and stored.get("template_inputs") == digests[chosen]


def _stored_config(out: Path) -> dict[str, Any] | None:
    path = out / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _choose_output(func, folder: WorkDir, settings, template, digests, overwrite: bool) -> Path:
    """Where the results go: in place (resuming, or updating the subjects whose prepared labels
    changed), or beside the old results (WORKDIR/.staging/shapes/shapes), swapped in when
    complete: with `overwrite`, or when the template itself must be recomputed. An unfinished
    replacement with these settings resumes."""
    staging_root = folder.root / STAGING / "shapes"
    staged_out = staging_root / "shapes"
    live_config, staged_config = _stored_config(folder.shapes), _stored_config(staged_out)
    if (
        staged_config is not None
        and not _differing_settings(settings, template, staged_config)
        and _template_current(digests, staged_config)
    ):
        out = staged_out
    elif overwrite:
        out = staged_out if folder.shapes.exists() else folder.shapes
    elif live_config is None:
        out = folder.shapes
    elif differing := _differing_settings(settings, template, live_config):
        raise ValueError(
            f"{func}(): {folder.shapes} holds results computed with other settings "
            f"({', '.join(differing)} "
            "differ); pass overwrite=True (--overwrite) to recompute, or use the same settings to resume"
        )
    elif not _template_current(digests, live_config):
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
    return out


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
    landmarks_dir = out / "landmarks"
    if stored is not None:
        template = stored["template"]
    if template is None:
        template = choose_template(
            workdir, subjects, chosen_regions, surface_settings, parameters.sigma_w_mm, progress=progress
        )
        logger.info("template: %s (closest on average to the others)", template)
    template_surfaces, landmark_index = _template_into(
        workdir,
        out,
        template,
        present,
        digests,
        chosen_regions,
        settings,
        surface_settings,
        landmarks,
        stored,
    )
    all_vertices = np.concatenate([template_surfaces[r].vertices_mm for r in chosen_regions])
    landmarks_template_mm = all_vertices[landmark_index]

    # a subject is done when its file was computed from its current labels and this template
    def inputs_of(subject: str) -> str:
        return f"{digests[subject]}-{digests[template]}"

    summary = ShapesSummary(template=template)
    todo = _subjects_to_do(subjects, landmarks_dir, inputs_of, present, chosen_regions, summary)

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

    common = {
        "regions": chosen_regions,
        "surface_settings": surface_settings,
        "template": surfaces_arrays(template_surfaces),
        "parameters": parameters,
        "landmarks_template_mm": landmarks_template_mm,
        "save_meshes": save_meshes,
    }
    _register_into(workdir, out, todo, common, inputs_of, summary, workers, scheduler, progress)
    _summarize_into(out, subjects, digests, template, outlier_threshold, summary)
    return summary


def _template_into(
    workdir,
    out: Path,
    template,
    present,
    digests,
    chosen_regions,
    settings,
    surface_settings,
    landmarks,
    stored,
) -> tuple[dict[int, Surface], np.ndarray]:
    """The template's surfaces and landmark vertex indices: read from ``out``, or made and stored
    there once (config.json first, then template.npz and template.vtk)."""
    template_npz = out / "template.npz"
    if template_npz.is_file() and stored is not None:
        with np.load(template_npz) as data:
            return surfaces_from_arrays(data), data["landmark_vertex_index"]
    missing = {r for r in chosen_regions if r not in present[template]}
    if missing:
        raise ValueError(f"run_shapes(): the template {template} lacks region(s) {sorted(missing)}")
    prepared = read_prepared(workdir, template)
    template_surfaces = extract_surfaces(
        prepared.labels, prepared.spacing_mm, chosen_regions, surface_settings, template
    )
    vertices = np.concatenate([template_surfaces[r].vertices_mm for r in chosen_regions])
    landmark_index = farthest_points(vertices, landmarks or len(vertices))
    vertex_region = np.concatenate(
        [np.full(len(template_surfaces[r].vertices_mm), r) for r in chosen_regions]
    )
    arrays = surfaces_arrays(template_surfaces)
    arrays.update(
        landmark_vertex_index=landmark_index,
        landmarks_mm=vertices[landmark_index],
        landmark_region=vertex_region[landmark_index],
        template=np.array(template),
    )

    # the configuration first: a run stopped before template.npz then recomputes it
    write_json(out / "config.json", dict(settings, template=template, template_inputs=digests[template]))
    with atomic_path(template_npz) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
    save_surfaces(out / "template.vtk", template_surfaces)
    return template_surfaces, landmark_index


def _subjects_to_do(subjects, landmarks_dir: Path, inputs_of, present, chosen_regions, summary) -> list[str]:
    """The subjects to register: not done with their current inputs (those go to ``summary.skipped``)
    and with every region (those without go to ``summary.failed``)."""
    todo: list[str] = []
    for subject in subjects:
        path = landmarks_dir / f"{subject}.npz"
        if path.is_file():
            if stored_inputs(path) == inputs_of(subject):
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
    return todo


def _register_into(
    workdir, out: Path, todo, common, inputs_of, summary, workers, scheduler, progress
) -> None:
    """Registers the template to every subject of ``todo`` (tasks: ``common`` plus the subject's
    labels), writing each one's landmarks (and deformed mesh) as it comes back."""

    def tasks() -> list[dict[str, Any]]:
        tasks_ = []
        for subject in todo:
            prepared = read_prepared(workdir, subject)
            tasks_.append(
                {"subject": subject, "labels": prepared.labels, "spacing_mm": prepared.spacing_mm, **common}
            )
        return tasks_

    landmarks_dir = out / "landmarks"
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
            save_surfaces(out / "meshes" / f"{subject}.vtk", surfaces_from_arrays(value["deformed"]))
        summary.computed.append(subject)


def _summarize_into(out: Path, subjects, digests, template, outlier_threshold, summary) -> None:
    """Residuals of every subject done, outliers flagged (summary.json); files of subjects no longer
    prepared go."""
    landmarks_dir = out / "landmarks"
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
