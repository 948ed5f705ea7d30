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
digests of the inputs it actually reads (:func:`stage_inputs`: the dataset's files, the prepared
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

import hashlib
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
from svfnet.common.workdir import WorkDir
from svfnet.config import (
    DATA_KEYS,
    PREPARE_KEYS,
    SECTIONS,
    STAGES,
    reference_parameters,
    render_config,
    shapes_parameters,
    train_config,
    validate_config,
)

__all__ = [
    "run_pipeline",
    "stage_inputs",
]

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


def _dataset_path(ctx: StageContext) -> Path:
    return ctx.workdir / "raw" if ctx.synthetic else Path(ctx.config["data"]["source"])


def _read_dataset(ctx: StageContext):
    from svfnet.data.labels import parse_label_mapping
    from svfnet.data.readers import read_dataset

    data = ctx.config["data"]
    mapping = parse_label_mapping(data["labels"]) if data["labels"] else None
    layout = data["layout"] or ("plain" if ctx.synthetic else None)
    phase = data["phase"].upper() or None  # read_dataset refuses a phase for nnunet, with a clear error
    return read_dataset(_dataset_path(ctx), layout, phase=phase, label_mapping=mapping)


def _stage_data(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    data = ctx.config["data"]
    if not ctx.synthetic:
        source = Path(data["source"])
        if not source.exists():
            raise FileNotFoundError(f"[data] source {source} does not exist")
        return {"dataset": str(source)}
    from svfnet.common.staging import STAGING, remove_staging, replace_tree
    from svfnet.data.synthetic import write_synthetic_dataset

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
    from svfnet.data.prepare import prepare_dataset

    data = ctx.config["data"]
    report = prepare_dataset(
        _read_dataset(ctx),
        ctx.workdir,
        shape=tuple(data["shape"]),
        long_axis=data["long_axis"],
        overwrite=True,
        progress=ctx.progress,
    )  # written beside, then swapped in
    return {"subjects": len(report.entries), "missing_regions": report.with_missing_regions}


def _stage_split(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.common.workdir import subject_ids
    from svfnet.data.split import plan_split, split_path

    settings = ctx.config["split"]
    split = plan_split(subject_ids(ctx.workdir), **settings)
    write_json(
        split_path(ctx.workdir),
        {
            "train": list(split.train),
            "val": list(split.val),
            "test": list(split.test),
            "seed": settings["seed"],
        },
    )  # replaces the old split in one step
    return {"train": len(split.train), "val": len(split.val), "test": len(split.test)}


def _stage_shapes(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.shapes.stage import run_shapes

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
    from svfnet.references.store import STORE_FORMAT

    config_path = folder / "config.json"
    if not config_path.is_file():
        return not any(folder.glob("pairs/*.json"))
    previous = json.loads(config_path.read_text())
    wanted = {key: value for key, value in asdict(parameters).items() if key != "moving_per_task"}
    if previous.get("format", 1) != STORE_FORMAT or {key: previous.get(key) for key in wanted} != wanted:
        return False
    return {path.stem for path in folder.glob("pairs/*.json")} <= set(subjects)


def _stage_references(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.common.staging import STAGING, remove_staging, replace_tree, shadow_workdir
    from svfnet.references.stage import run_references

    parameters = reference_parameters(ctx.config)
    live = WorkDir(ctx.workdir).references
    split = _read_split(ctx.workdir)
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
    from svfnet.common.staging import STAGING, remove_staging, replace_tree, shadow_workdir
    from svfnet.training.train import run_folder, train

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
    result = train(where, None if resume else config, resume=resume, progress=ctx.progress)
    if staged:
        replace_tree(folder, live)
        remove_staging(ctx.workdir, "train")
    return {"checkpoint": str(live / "checkpoint.pt"), "steps": result.step}


def _stage_evaluate(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.evaluation.evaluate import run_evaluation

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
def _read_split(workdir: Path) -> dict[str, list[str]]:
    from svfnet.data.split import split_path

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
    from svfnet.common.staging import file_digest
    from svfnet.common.workdir import prepared_digests, subject_ids

    workdir = Path(workdir)
    folder = WorkDir(workdir)
    ctx = StageContext(workdir, config, False)
    if stage == "data":
        return {}
    if stage == "prepare":
        dataset = _dataset_path(ctx)
        if not dataset.is_dir():
            raise FileNotFoundError(f"{dataset}: no such dataset folder")
        return {"dataset": _listing_digest(dataset)}
    if stage == "split":
        return {"subjects": subject_ids(workdir)}
    if stage == "shapes":
        return {"prepared": prepared_digests(workdir, parts=("labels",)), "grid": _grid_record(workdir)}
    split = _read_split(workdir)
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


def _fingerprint(config: dict, stage: str, inputs: dict[str, Any]) -> str:
    sections: dict[str, Any] = {s: config[s] for s in SECTIONS[stage]}
    if stage == "prepare":
        sections = {"data": {key: config["data"][key] for key in PREPARE_KEYS}}
    elif stage == "data":
        keys = DATA_KEYS if config["data"]["source"] == "synthetic" else ("source",)
        sections = {"data": {key: config["data"][key] for key in keys}}
    payload = json.dumps({"stage": stage, "sections": sections, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Where each stage's main output is, to tell whether it is still there.
def _output_present(workdir: Path, stage: str, config: dict) -> bool:
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
            if need in stages or _output_present(ctx.workdir, need, ctx.config):
                continue
            raise FileNotFoundError(
                f"stage {stage} needs {_MADE[need]}, which {ctx.workdir} does not hold: add the {need} stage "
                f"(--stages {' '.join(s for s in STAGES if s in stages or s == need)})"
            )


def _check_resources(ctx: StageContext, stages: tuple[str, ...]) -> None:
    """The cohort's size, the memory and the disk the requested stages need, against the limits and
    this machine (estimates: :mod:`svfnet.common.limits`)."""
    from svfnet.common.workdir import subject_ids
    from svfnet.data.split import split_sizes

    config, workdir = ctx.config, ctx.workdir
    data = config["data"]
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
            from svfnet.data.prepare import check_preparation

            dataset = _read_dataset(ctx)
            count = len(dataset)
            check_preparation(dataset, grid)
    if count is None and WorkDir(workdir).subjects_json.is_file() and "prepare" not in stages:
        count = len(subject_ids(workdir))
    if count is None:
        return
    if count > limits.MAX_SUBJECTS:
        raise limits.ResourceError(
            f"the cohort has {count:,} subjects, above the limit of {limits.MAX_SUBJECTS:,}"
        )
    split_file = workdir / "split.json"
    if "split" not in stages and split_file.is_file() and "prepare" not in stages:
        split = _read_split(workdir)
        n_train, n_val, n_test = len(split["train"]), len(split["val"]), len(split["test"])
    else:
        try:
            n_train, n_val, n_test = split_sizes(
                count,
                test_fraction=config["split"]["test_fraction"],
                val_fraction=config["split"]["val_fraction"],
            )
        except ValueError as error:
            raise ValueError(f"a cohort of {count} subjects cannot be split: {error}") from None
    if "evaluate" in stages and n_test < 2 and n_val < 2:
        raise ValueError(
            f"stage evaluate needs at least 2 test (or validation) subjects: {count} subjects with [split] "
            f"test_fraction = {config['split']['test_fraction']} give {n_test}; add subjects or raise test_fraction"
        )
    pairs_subjects = n_train + n_val
    if "references" in stages:
        dtype = config["references"]["dtype"]
        limits.check_disk(
            limits.references_disk_bytes(pairs_subjects, grid, dtype),
            workdir,
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
    if "train" in stages:
        model, train = config["model"], config["train"]
        limits.check_memory(
            limits.train_memory_bytes(
                grid, model["widths"], model["convs_per_level"], train["batch_size"], pairs_subjects
            ),
            f"training on a {'x'.join(map(str, grid))} grid with batches of {train['batch_size']} and widths {model['widths']}",
            "use a smaller [train] batch_size, [model] widths or [data] shape",
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
            fingerprint = _fingerprint(ctx.config, stage, stage_inputs(ctx.workdir, ctx.config, stage))
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
    from svfnet.common.locks import folder_lock
    from svfnet.common.staging import recover_workdir

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
            fingerprint = _fingerprint(config, stage, stage_inputs(workdir, config, stage))
            marker = workdir / "stages" / f"{stage}.json"
            state = json.loads(marker.read_text()) if marker.is_file() else {}
            same = state.get("fingerprint") == fingerprint
            if same and state.get("finished") and _output_present(workdir, stage, config):
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
