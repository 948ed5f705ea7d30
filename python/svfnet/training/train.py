"""Training SVF-Net on pairs of prepared subjects (``svfnet train WORKDIR``).

Each step draws a batch of (moving, fixed) pairs of training subjects with their target SVF,
shifts each pair and its target by the same small in-plane translation (which keeps the target
exact: if ``fixed(x) ≈ moving(x + v(x))`` then the shifted images obey it with ``v`` shifted
alike), predicts the SVF and takes an Adam step on the squared difference to the target.

Targets come from one of two sources with the same code path:
  - ``"references"``: the reference SVFs of the shapes pipeline (``svfnet references``);
  - ``"random"``: smooth random SVFs ``v``, the pair being (subject, subject warped by exp(v)) —
    for development, and to pre-train before references exist.

Everything needed to continue is checkpointed atomically every ``checkpoint_every`` steps
(model, optimiser, step, every rank's sampling RNG), so ``resume=True`` after a kill reaches the
same weights as an uninterrupted run. Under ``torchrun`` the same call trains data-parallel
(DistributedDataParallel; gloo on CPU, nccl on GPU); rank 0 validates and writes.

Nothing non-finite reaches the loss, and nothing non-finite reaches a checkpoint: every pair is
checked once when the pairs are indexed (finite images, a finite target within
:func:`svfnet.training.pairs.target_problem`'s bound where the loss counts), and refused pairs are logged by name with
the reason; a non-finite loss, gradient, weight or validation prediction stops the run with
:class:`TrainingDiverged` naming the step, before the optimiser step and before any checkpoint, so
the checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from svfnet.common.atomic import write_json
from svfnet.common.limits import check_memory, check_run_name, check_train_config, train_memory_bytes
from svfnet.common.locks import folder_lock
from svfnet.common.workdir import REGIONS, WorkDir
from svfnet.data.split import subject_split
from svfnet.ops import differentiable, fields
from svfnet.registration.arrays import predict_both_directions
from svfnet.training.checkpoints import TrainingLog, resumed_config, write_checkpoint, write_refused
from svfnet.training.consistency import batch_inverse_consistency
from svfnet.training.distributed import Dist, any_process, distributed
from svfnet.training.losses import label_overlap_loss, masked_mse, one_hot_regions
from svfnet.training.model import SVFNet, check_grid, read_checkpoint
from svfnet.training.pairs import Batch, Cohort, RandomTargets, ReferenceTargets, draw_batch, heart_mask
from svfnet.training.train_config import TrainConfig, resolved_precision

__all__ = ["TrainResult", "TrainingDiverged", "dice_per_region", "run_training"]

log = logging.getLogger(__name__)


def step_loss(
    prediction: torch.Tensor, target: torch.Tensor, batch: Batch, config: TrainConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """The recipe's loss of one batch: ``{"loss", "svf_loss"[, "overlap_loss"]}`` (scalars).

    A prediction that is not finite has no exponential: its loss is then the SVF term alone
    (itself not finite), which stops the run at this step, naming it.
    """
    weights = _loss_weights(batch, config.loss_mask, device)
    svf_loss = masked_mse(prediction, target, weights)
    terms = {"loss": svf_loss, "svf_loss": svf_loss}
    finite = bool(torch.isfinite(prediction.detach()).all())
    # exp(prediction), once for both terms that need it
    disp = (
        differentiable.exp(prediction.float())
        if finite and (config.recipe == "overlap" or config.inverse_consistency_weight)
        else None
    )
    if config.recipe == "overlap" and disp is not None:
        overlap = label_overlap_loss(
            prediction.float(),
            one_hot_regions(batch.moving_labels, device),
            one_hot_regions(batch.fixed_labels, device),
            disp=disp,
        )
        terms.update(loss=svf_loss + config.overlap_weight * overlap, overlap_loss=overlap)
    if config.inverse_consistency_weight and disp is not None:
        # the batch is B pairs then their B reverses (draw_batch)
        consistency = batch_inverse_consistency(disp, weights)
        terms.update(
            loss=terms["loss"] + config.inverse_consistency_weight * consistency, consistency_loss=consistency
        )
    return terms


def dice_per_region(warped: np.ndarray, target: np.ndarray) -> dict[int, float]:
    """Dice of each region present in either label map (``REGIONS``)."""
    scores = {}
    for region in REGIONS:
        a, b = warped == region, target == region
        total = int(a.sum() + b.sum())
        if total:
            scores[region] = 2.0 * float(np.logical_and(a, b).sum()) / total
    return scores


# -------------------------------------------------------------------------------- loop
@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    model: SVFNet  # this process's replica, in eval mode
    step: int


class TrainingDiverged(ValueError):
    """Training met a non-finite loss, gradient, weight or prediction and stopped.

    A ValueError (the command line reports it in one line, no traceback); the checkpoint on disk,
    if any, is the last one written before, never the poisoned state.
    """


def run_folder(workdir: str | Path, run: str) -> Path:
    return WorkDir(workdir).models / run


def _inputs(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pair = torch.from_numpy(np.stack([batch.moving, batch.fixed], axis=1)).to(device)
    return pair, torch.from_numpy(batch.target).to(device)


def _loss_weights(batch: Batch, mask: str, device: torch.device) -> torch.Tensor | None:
    if mask == "none":
        return None
    return torch.from_numpy(heart_mask(batch.fixed_labels)[:, None].astype(np.float32)).to(device)


def validate(model: SVFNet, batch: Batch, device: torch.device, loss_mask: str = "none") -> dict[str, float]:
    """Validation loss (with the training's ``loss_mask``) and mean Dice (moving labels warped by
    exp of the SVF registration computes, :func:`svfnet.registration.arrays.predict_svf`'s symmetric
    average) vs identity.

    Raises :class:`TrainingDiverged` where the prediction or the loss is not finite (a NaN field
    has no exponential): the model is broken, and no Dice can say how much.
    """
    model.eval()
    try:
        with torch.no_grad():
            pair, target = _inputs(batch, device)
            prediction, reversed_prediction = (p.float() for p in predict_both_directions(model, pair))
            bad = int((~torch.isfinite(prediction)).sum() + (~torch.isfinite(reversed_prediction)).sum())
            if bad:
                raise TrainingDiverged(
                    f"validate(): the network's prediction on the {len(pair)} validation pairs has {bad} non-finite "
                    f"values (of {2 * prediction.numel()}, both directions): the model's weights or activations "
                    "overflowed"
                )
            loss = float(masked_mse(prediction, target, _loss_weights(batch, loss_mask, device)))
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"validate(): the validation loss is {loss} (the prediction reaches "
                    f"{float(prediction.abs().max()):.3g} voxels)"
                )
            disp = fields.exp(((prediction - reversed_prediction) / 2).cpu())
    finally:
        model.train()
    warped = fields.warp_labels(batch.moving_labels, disp.numpy(), mode="onehot")
    dice = [
        np.mean(list(dice_per_region(w, f).values())) for w, f in zip(warped, batch.fixed_labels, strict=True)
    ]
    identity = [
        np.mean(list(dice_per_region(m, f).values()))
        for m, f in zip(batch.moving_labels, batch.fixed_labels, strict=True)
    ]
    return {"val_loss": loss, "val_dice": float(np.mean(dice)), "identity_dice": float(np.mean(identity))}


def _step_problem(loss: torch.Tensor, model: SVFNet, where: Dist) -> str | None:
    """Why this step must not be taken (a non-finite loss or gradient), or None; after backward.

    Under torchrun every process reaches the same answer (the gradients are already averaged, and
    the loss flags are summed), so that all stop together instead of leaving one waiting.
    """
    gradients = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    gradients_finite = torch.stack([torch.isfinite(g).all() for _, g in gradients]).all()  # one sync, below
    flags = torch.stack([~torch.isfinite(loss.detach()), ~gradients_finite]).float()
    if where.world > 1:
        local_loss_bad = bool(flags[0])
        dist.all_reduce(flags)
    else:
        local_loss_bad = None
    loss_bad, gradient_bad = (bool(flag) for flag in flags.tolist())
    if loss_bad:
        if local_loss_bad is False:
            return "the loss is not finite on another process"
        return f"the loss is {float(loss.detach())}"
    if gradient_bad:
        for name, gradient in gradients:  # the first one, named
            bad = int((~torch.isfinite(gradient)).sum())
            if bad:
                return f"the gradient of '{name}' has {bad} non-finite values (of {gradient.numel()})"
        return "a gradient is not finite on another process"
    return None


def _state_problem(model: SVFNet) -> str | None:
    """A weight or buffer of the model that is not finite, or None."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return f"the model's '{name}' has {bad} non-finite values (of {tensor.numel()})"
    return None


def _check_memory(config: TrainConfig, grid: tuple[int, int, int], subjects: int) -> None:
    """The memory a step and the cohort need (an estimate, :func:`svfnet.common.limits.train_memory_bytes`)
    against this machine's: refused before the first step rather than killed at it."""
    model = config.model
    check_memory(
        train_memory_bytes(grid, model.widths, model.convs_per_level, config.batch_size, subjects),
        f"training on a {'x'.join(map(str, grid))} grid with batches of {config.batch_size} and widths "
        f"{list(model.widths)}",
        "lower --batch-size or --widths",
    )


def _prepared_long_axis(workdir: str | Path, subject_id: str) -> str:
    """How ``svfnet prepare`` found the subject's long axis ("slices" where it left no record)."""
    path = WorkDir(workdir).transform(subject_id)
    record = json.loads(path.read_text()) if path.is_file() else {}
    return str(record.get("frame", {}).get("long_axis_from", "slices"))


def saved_config(workdir: str | Path, run: str = "svfnet") -> TrainConfig | None:
    """The configuration of a run's last checkpoint, or None where it has none."""
    path = run_folder(workdir, run) / "checkpoint.pt"
    if not path.is_file():
        return None
    saved = read_checkpoint(path)
    return (
        TrainConfig.from_dict(json.loads(json.dumps(saved["train_config"])))
        if "train_config" in saved
        else None
    )


def run_training(
    workdir: str | Path,
    config: TrainConfig | None = None,
    *,
    run: str = "svfnet",
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Trains SVF-Net on the work folder's training subjects.

    Args:
        workdir: a prepared work folder (``svfnet prepare``; ``svfnet references`` for reference targets).
        config: training parameters (defaults: :class:`TrainConfig`). The model's grid,
            spacing and long-axis rule are always the prepared subjects'. With ``resume`` the saved configuration is
            used; this one must be None or match it, except for ``steps``, which may grow.
        run: name of the run folder under ``WORKDIR/models/``.
        resume: continue the run from its last checkpoint (to the same result as uninterrupted).
        progress: show a progress bar.
        tensorboard: also log to TensorBoard (needs the ``tensorboard`` package).
        on_step: called with the step number after each step (tests use it to simulate a kill).

    Returns:
        The checkpoint's path and this process's trained model.

    Raises:
        ValueError: bad input, found before the first step; among them, every pair refused
            (non-finite images or reference SVFs, or an SVF beyond :func:`svfnet.training.pairs.target_problem`'s bound).
        TrainingDiverged: a non-finite loss, gradient, weight or validation prediction, naming the
            step; that step is not applied, its ``log.csv`` row says why, and ``checkpoint.pt``
            stays the last one written before.

    ``run`` must be a plain folder name (no ``/``, not starting with a dot): a run stays inside
    ``WORKDIR/models``. The steps, batch size, widths and learning rate are checked against the
    limits of :mod:`svfnet.common.limits`, and the memory training will need against this machine's,
    before anything is written; the work folder is locked meanwhile (rank 0 under torchrun; see
    :mod:`svfnet.common.locks`).

    Outputs in ``WORKDIR/models/<run>/``: ``checkpoint.pt`` (latest), ``config.json``, ``log.csv``,
    ``refused.csv`` (pairs left out, with the reason).
    """
    check_run_name(run)
    if config is not None:
        check_train_config(config)
    main_rank = os.environ.get("RANK", "0") in ("", "0")
    with folder_lock(workdir, f"the work folder {workdir}") if main_rank else contextlib.nullcontext():
        return _train(
            workdir,
            config,
            run=run,
            resume=resume,
            progress=progress,
            tensorboard=tensorboard,
            on_step=on_step,
        )


def _train(
    workdir: str | Path,
    config: TrainConfig | None,
    *,
    run: str,
    resume: bool,
    progress: bool,
    tensorboard: bool,
    on_step: Callable[[int], None] | None,
) -> TrainResult:
    """:func:`run_training`'s work, once its arguments are checked and the work folder locked."""
    folder = run_folder(workdir, run)
    checkpoint_path, config_path, log_path = (
        folder / "checkpoint.pt",
        folder / "config.json",
        folder / "log.csv",
    )
    saved = _saved_state(checkpoint_path, resume)

    where = distributed()
    split = subject_split(workdir)
    train_cohort = Cohort.load(workdir, split.train)
    check_grid(train_cohort.grid, "run_training()")
    config = _run_config(workdir, config, saved, checkpoint_path, train_cohort)
    _check_memory(config, train_cohort.grid, len(split.train) + len(split.val))
    source, validation_source = _target_sources(
        workdir, config, split, train_cohort, folder / "refused.csv", where
    )
    validation_batch = validation_source.validation(config.validation_pairs) if where.main else None

    torch.manual_seed(config.seed)
    model = SVFNet(config.model).to(where.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng([config.seed, where.rank])
    step = _restore(saved, model, optimizer, rng, where, checkpoint_path)
    trained = torch.nn.parallel.DistributedDataParallel(model) if where.world > 1 else model
    autocast = _autocast(config, where)

    writer = TrainingLog(log_path, step, tensorboard) if where.main else None
    if where.main:
        write_json(config_path, config.to_dict())
    bar = _progress_bar(config, step) if progress and where.main else None
    started = time.perf_counter()
    last_checkpoint = int(saved["step"]) if saved is not None else None
    try:
        while step < config.steps:
            batch = draw_batch(source, rng, config, train_cohort.spacing_mm)
            terms, problem = _optimizer_step(trained, model, optimizer, autocast, batch, config, where)
            step += 1
            row = {
                "step": step,
                "seconds": time.perf_counter() - started,
                **{name: float(value.detach()) for name, value in terms.items()},
            }
            checkpointing = step % config.checkpoint_every == 0 or step == config.steps
            problem = _checked(problem, row, step, checkpointing, model, validation_batch, config, where)
            if problem is not None:
                row["error"] = problem
                if writer is not None:
                    writer.write(row)
                raise TrainingDiverged(_stopped(step, problem, last_checkpoint, checkpoint_path, config))
            if writer is not None:  # before the checkpoint: a kill between the two loses no row
                writer.write(row)
            if checkpointing:
                write_checkpoint(checkpoint_path, model, optimizer, step, rng, config, where)
                last_checkpoint = step
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}",
                    **({"val_dice": f"{row['val_dice']:.3f}"} if "val_dice" in row else {}),
                )
            if on_step is not None:
                on_step(step)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return TrainResult(checkpoint_path, model.eval(), step)


def _autocast(config: TrainConfig, where: Dist) -> contextlib.AbstractContextManager:
    """The context of the network's passes: bfloat16 autocast where ``config.precision`` resolves to it on
    this device, else none (rank 0 logs which)."""
    precision = resolved_precision(config.precision, where.device)
    autocast = (
        torch.autocast(where.device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )
    if where.main:
        log.info("training in %s (precision %r)", precision, config.precision)
    return autocast


def _progress_bar(config: TrainConfig, step: int):  # noqa: ANN202 - a tqdm bar (tqdm is imported only when shown)
    """The progress bar of the run, from ``step`` to ``config.steps``."""
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=step, desc="train", unit="step")


def _saved_state(checkpoint_path: Path, resume: bool) -> dict | None:
    """The run's checkpoint where it has one (only with ``resume``; it must hold the training state)."""
    saved = read_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
    if saved is not None and not resume:
        raise FileExistsError(
            f"{checkpoint_path} exists: pass resume=True (--resume) to continue it, or choose another run"
        )
    if saved is not None and "train_config" not in saved:
        raise ValueError(f"{checkpoint_path} holds a model but no training state: it cannot be resumed")
    return saved


def _run_config(
    workdir: str | Path,
    config: TrainConfig | None,
    saved: dict | None,
    checkpoint_path: Path,
    train_cohort: Cohort,
) -> TrainConfig:
    """The configuration this run trains with: the given (or default) one, or the resumed run's, with the
    model's grid, spacing and long-axis rule those of the prepared subjects."""
    if saved is not None:
        saved_config = TrainConfig.from_dict(json.loads(json.dumps(saved["train_config"])))
        trained_on = (tuple(saved_config.model.grid), tuple(float(s) for s in saved_config.model.spacing_mm))
        if trained_on != (tuple(train_cohort.grid), tuple(float(s) for s in train_cohort.spacing_mm)):
            raise ValueError(
                f"{checkpoint_path} was trained on a {saved_config.model.grid} grid of "
                f"{saved_config.model.spacing_mm} mm, the work folder now holds {train_cohort.grid} of "
                f"{train_cohort.spacing_mm} mm (prepared again?): start another run"
            )
        config = resumed_config(saved_config, config, int(saved["step"]), checkpoint_path)
    config = config or TrainConfig()
    # the model works on the prepared grid, and records it: registration prepares new images on
    # exactly this grid and spacing (a model config's own grid and spacing are defaults only)
    return dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model,
            grid=train_cohort.grid,
            spacing_mm=train_cohort.spacing_mm,
            long_axis=_prepared_long_axis(workdir, train_cohort.ids[0]),
        ),
    )


def _target_sources(
    workdir: str | Path, config: TrainConfig, split, train_cohort: Cohort, refused_path: Path, where: Dist
) -> tuple[ReferenceTargets | RandomTargets, ReferenceTargets | RandomTargets]:
    """The training and validation pairs (``config.targets``), every pair checked here, once; refused
    ones are logged (by rank 0), written to ``refused_path`` and never drawn."""
    if config.targets == "references":
        source = ReferenceTargets(workdir, train_cohort, loss_mask=config.loss_mask, log_refused=where.main)
        # validation pairs: every pair with a validation subject on either side
        validation_source = (
            ReferenceTargets(
                workdir,
                Cohort.load(workdir, split.train + split.val),
                involving=split.val,
                loss_mask=config.loss_mask,
                log_refused=where.main,
            )
            if split.val
            else source
        )
        refused = [(m, f, "training", why) for m, f, why in source.refused]
        if validation_source is not source:
            refused += [(m, f, "validation", why) for m, f, why in validation_source.refused]
    else:
        source = RandomTargets(
            train_cohort, config.random_amplitude_vox, config.random_smoothness_vox, log_refused=where.main
        )
        validation_source = RandomTargets(
            Cohort.load(workdir, split.val) if split.val else train_cohort,
            config.random_amplitude_vox,
            config.random_smoothness_vox,
            log_refused=where.main and bool(split.val),
        )
        refused = [(subject, subject, "training", why) for subject, why in source.refused]
        if split.val:
            refused += [(subject, subject, "validation", why) for subject, why in validation_source.refused]
    if where.main:
        write_refused(refused_path, refused)
    return source, validation_source


def _restore(saved: dict | None, model: SVFNet, optimizer, rng, where: Dist, checkpoint_path: Path) -> int:  # noqa: ANN001
    """The step to continue from: 0 for a new run, else the checkpoint's, with the model, the optimiser,
    this rank's sampling RNG and torch's RNG restored from it."""
    if saved is None:
        return 0
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    step = int(saved["step"])
    states = saved["sampling_states"]
    if len(states) != where.world:
        raise ValueError(
            f"{checkpoint_path} was written by {len(states)} processes, resumed with {where.world}"
        )
    rng.bit_generator.state = json.loads(states[where.rank])
    torch.set_rng_state(saved["torch_rng"])
    broken = _state_problem(model)
    if broken:  # written before checkpoints were checked
        raise ValueError(f"{checkpoint_path} cannot be resumed: {broken}; start another run")
    return step


def _optimizer_step(
    trained: torch.nn.Module,
    model: SVFNet,
    optimizer,
    autocast,
    batch: Batch,
    config: TrainConfig,
    where: Dist,  # noqa: ANN001
) -> tuple[dict[str, torch.Tensor], str | None]:
    """One forward and backward pass on ``batch`` and the optimiser's step where every value is finite:
    the loss terms, and why the step was not applied (None where it was)."""
    pair, target = _inputs(batch, where.device)
    with autocast:
        prediction = trained(pair)
    terms = step_loss(prediction.float(), target, batch, config, where.device)
    loss = terms["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # a non-finite loss or gradient is never applied: the weights stay those of the last step
    problem = _step_problem(loss, model, where)
    if problem is None:
        optimizer.step()
    return terms, problem


def _checked(
    problem: str | None,
    row: dict,
    step: int,
    checkpointing: bool,
    model: SVFNet,
    validation_batch: Batch | None,
    config: TrainConfig,
    where: Dist,
) -> str | None:
    """``problem``, or what the validation (``row`` gains its columns) or the weights due for a checkpoint
    find at ``step`` (None where all is finite)."""
    if problem is None and (step % config.validate_every == 0 or step == config.steps):
        if where.main:
            try:
                row.update(validate(model, validation_batch, where.device, config.loss_mask))
            except TrainingDiverged as error:
                problem = str(error)
        problem = any_process(problem, where)
    if problem is None and checkpointing:
        problem = _state_problem(model)  # the replicas are equal: every process finds the same
    return problem


def _stopped(step: int, problem: str, last_checkpoint: int | None, path: Path, config: TrainConfig) -> str:
    """The message of a run stopped by a non-finite value."""
    if last_checkpoint is None:
        kept = f"no checkpoint was written before it (the first was due at step {config.checkpoint_every})"
    else:
        kept = f"the last good checkpoint, step {last_checkpoint}, is kept in {path}"
    return (
        f"training stopped at step {step}: {problem}; {kept}. Try a lower learning rate (now {config.learning_rate}) "
        "in a new run, or look for a broken pair among the reference SVFs"
    )
