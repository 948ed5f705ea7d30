"""The whole method in one work folder: ``svfnet run CONFIG.toml`` and ``svfnet demo``.

Stages, in order: ``data`` (the built-in synthetic cohort, or a dataset on disk), ``prepare``,
``split``, ``shapes``, ``references``, ``train``, ``evaluate``.

**Everything is checked before anything is touched.** The whole configuration (every section,
each key against its range: :data:`LIMITS`, printed by ``svfnet config --defaults``), the inputs
each requested stage needs (present, or made by a stage before it in this run), the cohort's size
and the memory and disk the stages will need (:mod:`svfnet.common.limits`) are checked first; a run that
fails a check stops with an error before it deletes, overwrites or starts anything. The work folder
is locked for the whole run (:mod:`svfnet.common.locks`).

**Fingerprints by content.** Each stage records in ``WORKDIR/stages/<stage>.json`` the fingerprint
of what it was run with, when it starts and when it finishes: its configuration section(s) and
digests of the inputs it actually reads (:func:`svfnet.fingerprints.stage_inputs`: the dataset's files, the prepared
subjects' content and voxel size, the split, the landmarks, the reference records, the
checkpoint). A stage's fingerprint does not depend on which other stages this run includes:

- finished with the same fingerprint: skipped (up to date), so ``--stages train`` alone skips a
  trained model whose inputs and settings did not change;
- started with the same fingerprint but not finished (interrupted): run again, resuming from what
  is on disk (shapes per subject, references per fixed subject, training from its last checkpoint);
- anything else (a new configuration, or inputs that changed: a re-prepared grid, another
  dataset): run again, which changes its outputs and so the fingerprints of exactly the stages that
  read them.

**Outputs are replaced, never deleted first.** A stage that recomputes writes beside its old
outputs (``WORKDIR/.staging/<stage>/``, :mod:`svfnet.common.staging`) and swaps the new ones in when they
are complete; a refused, failed or killed run leaves the old ones as they were.

Every parameter, with its default and range, is in :data:`DEFAULTS` and :data:`LIMITS`;
``svfnet config --defaults`` prints them as a commented TOML file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from svfnet.common import limits
from svfnet.common.atomic import atomic_path, write_json
from svfnet.common.locks import folder_lock
from svfnet.common.staging import STAGING, recover_workdir, remove_staging, replace_tree, shadow_workdir
from svfnet.common.workdir import WorkDir, subject_ids
from svfnet.config import (
    STAGES,
    reference_parameters,
    render_config,
    shapes_parameters,
    train_config,
    validate_config,
)
from svfnet.data.labels import parse_label_mapping
from svfnet.data.prepare import check_preparation, run_prepare
from svfnet.data.readers import read_dataset
from svfnet.data.split import run_split, split_sizes
from svfnet.data.synthetic import write_synthetic_dataset
from svfnet.evaluation.evaluate import run_evaluation
from svfnet.fingerprints import dataset_path, output_present, read_split, stage_fingerprint, stage_inputs
from svfnet.references.stage import run_references
from svfnet.references.store import STORE_FORMAT
from svfnet.shapes.stage import run_shapes
from svfnet.training.train import run_folder, run_training

__all__ = ["run_pipeline"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- stages
@dataclass
class StageContext:
    workdir: Path
    config: dict[str, dict[str, Any]]
    progress: bool

    @property
    def workers(self) -> int | None:
        return self.config["run"]["workers"] or None

    @property
    def scheduler(self) -> str | None:
        return self.config["run"]["scheduler"] or None

    @property
    def synthetic(self) -> bool:
        return self.config["data"]["source"] == "synthetic"


def _read_dataset(ctx: StageContext):
    data = ctx.config["data"]
    mapping = parse_label_mapping(data["labels"]) if data["labels"] else None
    layout = data["layout"] or ("plain" if ctx.synthetic else None)
    phase = data["phase"].upper() or None  # read_dataset refuses a phase for nnunet, with a clear error
    return read_dataset(dataset_path(ctx.workdir, ctx.config), layout, phase=phase, label_mapping=mapping)


def _stage_data(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    data = ctx.config["data"]
    if not ctx.synthetic:
        source = Path(data["source"])
        if not source.exists():
            raise FileNotFoundError(f"[data] source {source} does not exist")
        return {"dataset": str(source)}

    # the new cohort is written beside the old one and swapped in complete
    staging = ctx.workdir / STAGING / "data"
    if staging.exists():
        shutil.rmtree(staging)
    write_synthetic_dataset(
        staging / "raw",
        data["subjects"],
        data["seed"],
        outlier_fraction=data["outlier_fraction"],
        realism=data["realism"],
        header_style=data["header_style"] or None,
        progress=ctx.progress,
    )
    replace_tree(staging / "raw", ctx.workdir / "raw")
    remove_staging(ctx.workdir, "data")
    return {"dataset": str(ctx.workdir / "raw")}


def _stage_prepare(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    data = ctx.config["data"]
    report = run_prepare(
        ctx.workdir,
        _read_dataset(ctx),
        shape=tuple(data["shape"]),
        long_axis=data["long_axis"],
        overwrite=True,
        progress=ctx.progress,
    )  # written beside, then swapped in
    return {"subjects": len(report.entries), "missing_regions": report.with_missing_regions}


def _stage_split(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    split = run_split(ctx.workdir, **ctx.config["split"])  # replaces the old split in one step
    return {"train": len(split.train), "val": len(split.val), "test": len(split.test)}


def _stage_shapes(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    shapes = ctx.config["shapes"]
    summary = run_shapes(
        ctx.workdir,
        template=shapes["template"] or None,
        parameters=shapes_parameters(ctx.config),
        target_triangles=shapes["target_triangles"],
        landmarks=shapes["landmarks"],
        workers=ctx.workers,
        scheduler=ctx.scheduler,
        overwrite=fresh,
        progress=ctx.progress,
    )
    if summary.failed:
        raise RuntimeError(f"shapes failed for {sorted(summary.failed)}: {summary.failed}")
    return {"template": summary.template, "outliers": list(summary.outliers)}


def _references_compatible(folder: Path, parameters: Any, subjects: list[str]) -> bool:
    """Whether the store in ``folder`` can be brought up to date in place: written with the same
    parameters and store format, and holding no fixed subject outside ``subjects`` (the store itself
    recomputes the fixed subjects whose landmarks or grid changed)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return not any(folder.glob("pairs/*.json"))
    previous = json.loads(config_path.read_text())
    wanted = {key: value for key, value in asdict(parameters).items() if key != "moving_per_task"}
    if previous.get("format", 1) != STORE_FORMAT or {key: previous.get(key) for key in wanted} != wanted:
        return False
    return {path.stem for path in folder.glob("pairs/*.json")} <= set(subjects)


def _stage_references(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    parameters = reference_parameters(ctx.config)
    live = WorkDir(ctx.workdir).references
    split = read_split(ctx.workdir)
    staging = ctx.workdir / STAGING / "references"
    if fresh:
        shutil.rmtree(staging, ignore_errors=True)
        staged = live.exists() and not _references_compatible(
            live, parameters, sorted(split["train"] + split["val"])
        )
    else:
        staged = staging.exists()  # an interrupted replacement resumes
    where = shadow_workdir(ctx.workdir, "references", ("references",), fresh=fresh) if staged else ctx.workdir
    summary = run_references(
        where, parameters=parameters, workers=ctx.workers, scheduler=ctx.scheduler, progress=ctx.progress
    )
    if staged:
        replace_tree(WorkDir(where).references, live)
        remove_staging(ctx.workdir, "references")
    return {
        "pairs": summary.pairs,
        "converged": summary.converged,
        "folded": summary.folded,
        "usable": summary.usable,
        "excluded": summary.excluded,
        "residual_mean": summary.residual_mean,
    }


def _stage_train(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    live = run_folder(ctx.workdir, "svfnet")
    staging = ctx.workdir / STAGING / "train"
    if fresh:
        shutil.rmtree(staging, ignore_errors=True)
        staged = live.exists()  # a model is there: the new one replaces it only when trained
    else:
        staged = staging.exists()  # an interrupted replacement resumes from its checkpoint
    where = shadow_workdir(ctx.workdir, "train", ("models/svfnet",), fresh=fresh) if staged else ctx.workdir
    folder = run_folder(where, "svfnet")
    config = train_config(ctx.config)
    resume = (folder / "checkpoint.pt").is_file()
    result = run_training(where, None if resume else config, resume=resume, progress=ctx.progress)
    if staged:
        replace_tree(folder, live)
        remove_staging(ctx.workdir, "train")
    return {"checkpoint": str(live / "checkpoint.pt"), "steps": result.step}


def _stage_evaluate(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    summary = run_evaluation(
        ctx.workdir,
        WorkDir(ctx.workdir).models / "svfnet" / "checkpoint.pt",
        workers=ctx.workers,
        progress=ctx.progress,
    )
    return summary


STAGE_FUNCTIONS: dict[str, Callable[[StageContext, bool], dict[str, Any]]] = {
    "data": _stage_data,
    "prepare": _stage_prepare,
    "split": _stage_split,
    "shapes": _stage_shapes,
    "references": _stage_references,
    "train": _stage_train,
    "evaluate": _stage_evaluate,
}


# ---------------------------------------------------------------------------------- fingerprints
# ---------------------------------------------------------------------------------- before anything
# what each stage reads, by the stage that makes it
_NEEDS = {
    "prepare": ("data",),
    "split": ("prepare",),
    "shapes": ("prepare",),
    "references": ("prepare", "split", "shapes"),
    "train": ("prepare", "split", "references"),
    "evaluate": ("prepare", "split", "train"),
}
_MADE = {
    "data": "the dataset (WORKDIR/raw for the synthetic cohort)",
    "prepare": "the prepared subjects (WORKDIR/prepared)",
    "split": "the split (WORKDIR/split.json)",
    "shapes": "the landmarks (WORKDIR/shapes)",
    "references": "the reference SVFs (WORKDIR/references)",
    "train": "the model (WORKDIR/models/svfnet/checkpoint.pt)",
}


def _check_inputs(ctx: StageContext, stages: tuple[str, ...]) -> None:
    """Every requested stage finds what it reads, on disk or made earlier in this run."""
    if not ctx.synthetic and ("data" in stages or "prepare" in stages):
        source = Path(ctx.config["data"]["source"])
        if not source.exists():
            raise FileNotFoundError(f"[data] source {source} does not exist")
    for stage in stages:
        for need in _NEEDS.get(stage, ()):
            if need == "references" and ctx.config["train"]["targets"] != "references":
                continue
            if need in stages or output_present(ctx.workdir, need, ctx.config):
                continue
            raise FileNotFoundError(
                f"stage {stage} needs {_MADE[need]}, which {ctx.workdir} does not hold: add the {need} stage "
                f"(--stages {' '.join(s for s in STAGES if s in stages or s == need)})"
            )


def _check_resources(ctx: StageContext, stages: tuple[str, ...]) -> None:
    """The cohort's size, the memory and the disk the requested stages need, against the limits and
    this machine (estimates: :mod:`svfnet.common.limits`)."""
    count = _cohort_size(ctx, stages)
    if count is None:
        return
    if count > limits.MAX_SUBJECTS:
        raise limits.ResourceError(
            f"the cohort has {count:,} subjects, above the limit of {limits.MAX_SUBJECTS:,}"
        )
    config = ctx.config
    n_train, n_val, n_test = _split_sizes(ctx, stages, count)
    if "evaluate" in stages and n_test < 2 and n_val < 2:
        raise ValueError(
            f"stage evaluate needs at least 2 test (or validation) subjects: {count} subjects with [split] "
            f"test_fraction = {config['split']['test_fraction']} give {n_test}; add subjects or raise test_fraction"
        )
    if "references" in stages:
        _check_references_resources(ctx, n_train + n_val)
    if "train" in stages:
        grid = tuple(config["data"]["shape"])
        model, train = config["model"], config["train"]
        limits.check_memory(
            limits.train_memory_bytes(
                grid, model["widths"], model["convs_per_level"], train["batch_size"], n_train + n_val
            ),
            f"training on a {'x'.join(map(str, grid))} grid with batches of {train['batch_size']} and widths {model['widths']}",
            "use a smaller [train] batch_size, [model] widths or [data] shape",
        )


def _cohort_size(ctx: StageContext, stages: tuple[str, ...]) -> int | None:
    """The number of subjects the run will work on (None when nothing tells yet), after checking the
    disk the synthetic cohort and the memory the preparation need."""
    workdir, data = ctx.workdir, ctx.config["data"]
    grid = tuple(data["shape"])
    count = None
    if ctx.synthetic and ("data" in stages or not (workdir / "raw").is_dir()):
        count = data["subjects"]
        if "data" in stages:
            limits.check_disk(
                limits.synthetic_disk_bytes(count, data["realism"]),
                workdir,
                f"the synthetic cohort of {count:,} subjects",
                "lower [data] subjects",
            )
    if "prepare" in stages:
        if ctx.synthetic and "data" in stages:
            largest = 3_000_000 if data["realism"] == "clinical" else 300_000
            limits.check_memory(
                limits.prepare_memory_bytes(grid, largest),
                f"preparing on a {'x'.join(map(str, grid))} grid",
                "use a smaller [data] shape (64 x 64 x 16 needs about 0.3 GB)",
            )
        else:
            dataset = _read_dataset(ctx)
            count = len(dataset)
            check_preparation(dataset, grid)
    if count is None and WorkDir(workdir).subjects_json.is_file() and "prepare" not in stages:
        count = len(subject_ids(workdir))
    return count


def _split_sizes(ctx: StageContext, stages: tuple[str, ...], count: int) -> tuple[int, int, int]:
    """Training, validation and test sizes: the split on disk if this run keeps it, else the one the
    split stage will make of ``count`` subjects."""
    if "split" not in stages and (ctx.workdir / "split.json").is_file() and "prepare" not in stages:
        split = read_split(ctx.workdir)
        return len(split["train"]), len(split["val"]), len(split["test"])
    try:
        return split_sizes(
            count,
            test_fraction=ctx.config["split"]["test_fraction"],
            val_fraction=ctx.config["split"]["val_fraction"],
        )
    except ValueError as error:
        raise ValueError(f"a cohort of {count} subjects cannot be split: {error}") from None


def _check_references_resources(ctx: StageContext, pairs_subjects: int) -> None:
    """The disk the reference SVFs of ``pairs_subjects`` subjects take and the memory the stage needs."""
    config, grid = ctx.config, tuple(ctx.config["data"]["shape"])
    dtype = config["references"]["dtype"]
    limits.check_disk(
        limits.references_disk_bytes(pairs_subjects, grid, dtype),
        ctx.workdir,
        f"the reference SVFs of {pairs_subjects:,} subjects' {pairs_subjects * (pairs_subjects - 1):,} pairs",
        'use fewer subjects, a smaller grid or [references] dtype = "float16"',
    )
    workers = ctx.workers or os.cpu_count() or 1
    limits.check_memory(
        limits.references_memory_bytes(
            config["shapes"]["landmarks"],
            grid,
            workers,
            deformation=config["references"]["deformation"],
            subjects=pairs_subjects,
        ),
        f"the references stage with {config['shapes']['landmarks']:,} landmarks on {workers} workers",
        "use fewer [shapes] landmarks or [run] workers",
    )


def _warn_stale(ctx: StageContext, stages: tuple[str, ...]) -> None:
    """Stages left out of this run whose outputs are older than the configuration or their inputs."""
    for stage in STAGES:
        if stage in stages:
            continue
        marker = ctx.workdir / "stages" / f"{stage}.json"
        if not marker.is_file():
            continue
        try:
            fingerprint = stage_fingerprint(ctx.config, stage, stage_inputs(ctx.workdir, ctx.config, stage))
            state = json.loads(marker.read_text())
        except (OSError, ValueError, KeyError):
            continue
        if state.get("fingerprint") != fingerprint or not state.get("finished"):
            log.warning(
                "stage %s is not up to date with this configuration and its inputs (left out of this run: "
                "--stages)",
                stage,
            )


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    status: str  # "skipped", "resumed", "ran"
    seconds: float
    result: dict[str, Any]


def run_pipeline(
    workdir: str | Path,
    config: dict[str, dict[str, Any]],
    *,
    stages: tuple[str, ...] = STAGES,
    progress: bool = True,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> list[StageOutcome]:
    """Runs the stages in order, skipping those up to date and resuming the interrupted one.

    Before any stage runs: the configuration is validated (:func:`validate_config`), the work folder
    locked (:mod:`svfnet.common.locks`; a second run is refused, naming the holder), replacements a killed
    run left half done are finished or undone, and every requested stage's inputs, the cohort's
    size, and the memory and disk the stages need are checked. Nothing is written before that.
    """
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"run_pipeline(): unknown stages {sorted(unknown)} (known: {', '.join(STAGES)})")
    stages = tuple(stage for stage in STAGES if stage in stages)
    validate_config(config)
    workdir = Path(workdir)
    ctx = StageContext(workdir, config, progress)
    with folder_lock(workdir, f"the work folder {workdir}"):
        recover_workdir(workdir)
        _check_inputs(ctx, stages)
        _check_resources(ctx, stages)
        _warn_stale(ctx, stages)
        write_json(workdir / "config.json", config)
        with atomic_path(workdir / "config.toml") as temporary:
            temporary.write_text(render_config(config))
        outcomes = []
        for stage in stages:
            fingerprint = stage_fingerprint(config, stage, stage_inputs(workdir, config, stage))
            marker = workdir / "stages" / f"{stage}.json"
            state = json.loads(marker.read_text()) if marker.is_file() else {}
            same = state.get("fingerprint") == fingerprint
            if same and state.get("finished") and output_present(workdir, stage, config):
                outcome = StageOutcome(stage, "skipped", 0.0, state.get("result", {}))
            else:
                resumed = same and not state.get("finished")
                write_json(marker, {"fingerprint": fingerprint, "finished": False})
                log.info("stage %s: %s", stage, "resuming" if resumed else "running")
                started = time.perf_counter()
                result = STAGE_FUNCTIONS[stage](ctx, not resumed)
                seconds = time.perf_counter() - started
                write_json(
                    marker,
                    {"fingerprint": fingerprint, "finished": True, "seconds": seconds, "result": result},
                )
                outcome = StageOutcome(stage, "resumed" if resumed else "ran", seconds, result)
            outcomes.append(outcome)
            if on_stage is not None:
                on_stage(outcome)
    return outcomes
