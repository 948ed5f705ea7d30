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
:func:`target_problem`'s bound where the loss counts), and refused pairs are logged by name with
the reason; a non-finite loss, gradient, weight or validation prediction stops the run with
:class:`TrainingDiverged` naming the step, before the optimiser step and before any checkpoint, so
the checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from scipy.ndimage import binary_dilation, gaussian_filter

import svfnet
from svfnet.common.atomic import atomic_path, write_json
from svfnet.common.workdir import REGIONS, WorkDir, read_prepared
from svfnet.data.split import subject_split
from svfnet.ops import differentiable, fields
from svfnet.registration.arrays import predict_both_directions
from svfnet.training.augment import augment_intensity, rotate_in_plane
from svfnet.training.consistency import augmented_both_directions, batch_inverse_consistency, reversed_batch
from svfnet.training.losses import label_overlap_loss, masked_mse, one_hot_regions
from svfnet.training.model import SVFNet, SVFNetConfig, check_grid, read_checkpoint, save_checkpoint

__all__ = [
    "Cohort",
    "RandomTargets",
    "ReferenceTargets",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "dice_per_region",
    "heart_mask",
    "target_problem",
    "train",
]

log = logging.getLogger(__name__)


# The training losses (TrainConfig.recipe; svfnet.training.losses): the paper's, and the paper's with a label-overlap term.
RECIPES = ("paper", "overlap")
PRECISIONS = ("float32", "bfloat16", "auto")
# What a run saved before the recipes existed trained with (its config has none of these keys): the
# paper's loss, no rotation or intensity augmentation, float32 — not today's defaults.
_BEFORE_RECIPES = {
    "recipe": "paper",
    "intensity_augmentation": False,
    "rotation_deg": 0.0,
    "precision": "float32",
}


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters (all saved with the run).

    Attributes:
        steps: optimiser steps.
        batch_size: pairs per step (per process under torchrun).
        learning_rate: Adam's learning rate.
        targets: "references" or "random" (see the module docstring).
        random_amplitude_vox: root-mean-square in-plane component of a random target SVF, in voxels.
        random_smoothness_vox: Gaussian width of random target SVFs, in voxels (in plane; the
            slice axis uses it divided by the slice/in-plane spacing ratio).
        shift_vox: largest in-plane translation of the augmentation, in voxels (0: none).
        loss_mask: "heart" (voxels within 3 voxels in plane and 1 slice of the fixed labels) or
            "none" (whole grid). Far from the heart a reference is the spline's extrapolation,
            large at the corners and not to be read from the images; fitting it there costs the
            network accuracy on the heart (docs/pipeline.md has the measurement).
        recipe: the loss. "paper": the squared difference to the reference SVF (the paper's);
            "overlap" (the default, measured better: README.md): that plus ``overlap_weight`` times
            the soft Dice loss of the moving labels warped by exp(prediction) against the fixed
            labels (:mod:`svfnet.training.losses`).
        overlap_weight: weight of the label-overlap term in the "overlap" recipe (the SVF term
            is in voxel², the overlap term in [0, 1]).
        intensity_augmentation: draw a bias field, a gamma, a contrast change and noise for
            each image of a pair, independently (:func:`svfnet.training.augment.augment_intensity`);
            the target is unchanged.
        rotation_deg: largest in-plane rotation of a pair and its target, degrees (0: none;
            :func:`svfnet.training.augment.rotate_in_plane`).
        inverse_consistency_weight: 0 (the default: off) or the weight of an inverse-consistency
            term (:mod:`svfnet.training.consistency`): each step draws ``batch_size / 2`` pairs and their
            reverses (``batch_size`` inputs, as many as without it; the reverse's target is its own
            reference), augmented alike, and adds this weight times the mean squared residual of
            ``exp(v_ij) ∘ exp(v_ji)`` and ``exp(v_ji) ∘ exp(v_ij)`` against the identity (voxel²,
            where the loss mask counts). Needs an even ``batch_size``.
        precision: the arithmetic of the network's forward and backward passes: "float32", or
            "bfloat16" (torch autocast: convolutions in bfloat16, norms, losses and the weights
            in float32), or "auto": bfloat16 where the device computes it natively (a CPU with
            AVX-512 BF16 or AMX, a GPU of compute capability 8.0 or more), float32 elsewhere.
            Registration always runs in float32.
        validate_every: steps between validations (loss and Dice on the validation pairs).
        validation_pairs: at most this many validation pairs.
        checkpoint_every: steps between checkpoints.
        seed: seeds the model's initialisation, the sampling and the augmentation.
        model: the architecture.
    """

    steps: int = 2000
    batch_size: int = 4
    learning_rate: float = 1e-3
    targets: str = "references"
    random_amplitude_vox: float = 1.5
    random_smoothness_vox: float = 6.0
    shift_vox: int = 3
    loss_mask: str = "heart"
    recipe: str = "overlap"
    overlap_weight: float = 3.0
    intensity_augmentation: bool = False
    rotation_deg: float = 0.0
    inverse_consistency_weight: float = 0.0
    precision: str = "float32"
    validate_every: int = 100
    validation_pairs: int = 16
    checkpoint_every: int = 50
    seed: int = 0
    model: SVFNetConfig = field(default_factory=SVFNetConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "validate_every", "validation_pairs", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig: '{name}' must be a positive integer, got {value!r}")
        # NaN passes no comparison and inf passes "> 0": both would reach Adam and poison the
        # weights at the first step, so every real-valued parameter must be finite
        for name in ("learning_rate", "random_amplitude_vox", "random_smoothness_vox"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"TrainConfig: '{name}' must be a finite number > 0, got {value!r}")
        for name in ("shift_vox", "seed"):  # the seed seeds NumPy, which takes no negative seed
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig: '{name}' must be an integer >= 0, got {value!r}")
        if self.targets not in ("references", "random"):
            raise ValueError(f"TrainConfig: 'targets' must be 'references' or 'random', got {self.targets!r}")
        if self.loss_mask not in ("none", "heart"):
            raise ValueError(f"TrainConfig: 'loss_mask' must be 'none' or 'heart', got {self.loss_mask!r}")
        if self.recipe not in RECIPES:
            raise ValueError(
                f"TrainConfig: 'recipe' must be one of {', '.join(map(repr, RECIPES))}, got {self.recipe!r}"
            )
        for name, high in (
            ("overlap_weight", 1000.0),
            ("rotation_deg", 180.0),
            ("inverse_consistency_weight", 1000.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise ValueError(f"TrainConfig: '{name}' must be a number from 0 to {high:g}, got {value!r}")
        if self.inverse_consistency_weight and self.batch_size % 2:
            raise ValueError(
                "TrainConfig: 'inverse_consistency_weight' > 0 draws pairs with their reverses: 'batch_size' must be "
                f"even, got {self.batch_size}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig: 'precision' must be one of {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}"
            )
        if not isinstance(self.intensity_augmentation, bool):
            raise ValueError(
                f"TrainConfig: 'intensity_augmentation' must be true or false, got {self.intensity_augmentation!r}"
            )

    def summary(self) -> str:
        """What trained a model, in one line (the evaluation report states it)."""
        loss = "the paper's (squared difference to the reference SVF)"
        if self.recipe == "overlap":
            loss = f"overlap (the paper's plus {self.overlap_weight:g} x soft Dice of the warped labels)"
        augmentations = [f"shifts up to {self.shift_vox} voxels"] if self.shift_vox else []
        if self.rotation_deg:
            augmentations.append(f"rotations up to {self.rotation_deg:g} degrees")
        if self.intensity_augmentation:
            augmentations.append("bias field, gamma, contrast and noise")
        if self.inverse_consistency_weight:
            loss += f", plus {self.inverse_consistency_weight:g} x inverse consistency of each pair and its reverse"
        return (
            f"recipe {loss}; {self.steps:,} steps of {self.batch_size} pairs, learning rate {self.learning_rate:g}, "
            f"loss counted {'near the heart' if self.loss_mask == 'heart' else 'on the whole grid'}; augmentation: "
            f"{', '.join(augmentations) or 'none'}; precision {self.precision}; widths "
            f"{'-'.join(map(str, self.model.widths))}"
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        # a run saved before a key existed trained as that key's value in _BEFORE_RECIPES says
        data = {**_BEFORE_RECIPES, **data}
        data["model"] = SVFNetConfig.from_dict(data.get("model", {}))
        return cls(**data)


# -------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Cohort:
    """Prepared subjects held in memory (a 64×64×16 subject is 320 KB)."""

    ids: tuple[str, ...]
    images: np.ndarray  # (S, I, J, K) float32
    labels: np.ndarray  # (S, I, J, K) uint8
    spacing_mm: tuple[float, float, float]

    @classmethod
    def load(cls, workdir: str | Path, subject_ids) -> Cohort:
        subjects = [read_prepared(workdir, subject_id) for subject_id in subject_ids]
        if not subjects:
            raise ValueError("Cohort.load(): no subjects")
        grids = {s.image.shape for s in subjects}
        if len(grids) != 1:
            raise ValueError(
                f"prepared subjects are on different grids {sorted(grids)}: re-run `svfnet prepare`"
            )
        return cls(
            tuple(s.id for s in subjects),
            np.stack([s.image for s in subjects]),
            np.stack([s.labels for s in subjects]),
            subjects[0].spacing_mm,
        )

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def image_problems(self) -> dict[int, str]:
        """Subjects (by index) whose image cannot be a network input, with the reason."""
        problems = {}
        for n, image in enumerate(self.images):
            bad = int(np.count_nonzero(~np.isfinite(image)))
            if bad:
                problems[n] = f"the image of {self.ids[n]!r} has {bad} non-finite values"
        return problems


@dataclass
class Batch:
    """Moving and fixed images ``(B, I, J, K)``, target SVFs ``(B, 3, I, J, K)``, labels."""

    moving: np.ndarray
    fixed: np.ndarray
    target: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray


def heart_mask(labels: np.ndarray) -> np.ndarray:
    """Where ``loss_mask="heart"`` counts the loss: ``labels > 0`` dilated by 3 voxels in plane and
    1 slice. ``labels`` is ``(..., I, J, K)``; the mask has its shape."""
    structure = np.ones((1,) * (labels.ndim - 3) + (7, 7, 3), bool)
    return binary_dilation(labels > 0, structure=structure)


def target_problem(svf: np.ndarray, counted: np.ndarray | None = None) -> str | None:
    """Why a target SVF ``(3, I, J, K)`` (voxels) cannot be trained on, or None where it can.

    Refused:
      - any non-finite value, anywhere on the grid: the loss mask does not protect from it,
        since ``inf × 0`` and ``NaN × 0`` are NaN (float16 stores overflow to inf above 65504);
      - a component beyond the grid's size along its axis, ``|v_a(x)| > n_a`` (64, 64 and 16
        voxels on the default grid), at a voxel ``x`` where the loss counts (``counted``, a
        ``(I, J, K)`` bool mask; None: the whole grid).

    Why that bound: held for the unit time of ``exp``, a velocity of ``n_a`` voxels carries a
    point the whole length of the grid along axis ``a``; from wherever it starts, it ends outside
    the grid, where the moving image shows nothing. Such a target relates nothing the two images
    hold: it comes from a spline extrapolating far from its landmarks or a logarithm gone astray
    (issue 13: stored SVFs reached 492 voxels on a 64-voxel grid), and its square outweighs the
    rest of the loss (one 492-voxel error weighs as much as 240,000 errors of one voxel). The bound
    is deliberately loose: a guard against broken references, not a quality criterion (the
    store's residual checks are that). It is checked only where the loss counts because elsewhere
    a finite target never reaches the loss nor its gradient (its weight is 0): under the default
    heart mask a spline's large values at the grid's corners do not cost a pair.
    """
    bad = int(np.count_nonzero(~np.isfinite(svf)))
    if bad:
        return f"{bad} non-finite values (of {svf.size})"
    for axis, size in enumerate(svf.shape[1:]):
        component = np.abs(svf[axis] if counted is None else svf[axis][counted])
        largest = float(component.max()) if component.size else 0.0
        if largest > size:
            where = "on the grid" if counted is None else "where the loss counts"
            name = "ijk"[axis]
            return (
                f"|v_{name}| up to {largest:.4g} voxels {where}, beyond the grid's {size} along axis {name}"
            )
    return None


class ReferenceTargets:
    """Pairs of subjects with reference SVFs from the references stage."""

    def __init__(
        self,
        workdir: str | Path,
        cohort: Cohort,
        *,
        involving: tuple[str, ...] | None = None,
        loss_mask: str = "none",
        log_refused: bool = True,
    ) -> None:
        """Pairs of ``cohort`` subjects with a usable reference; with ``involving``, only the pairs
        with at least one of those subjects (validation pairs when few subjects are held out).

        Every pair the store offers is checked here, once (the store is memory-mapped: this reads
        each SVF once): its images must be finite and its SVF pass :func:`target_problem` where
        ``loss_mask`` counts the loss. Refused pairs are left out, listed in ``refused`` as
        ``(moving, fixed, reason)`` and, with ``log_refused``, logged as warnings, one a pair.
        ValueError where the store offers no pair, or where every pair is refused.
        """
        from svfnet.references.store import ReferenceStore

        self.cohort = cohort
        self.store = ReferenceStore(workdir)
        index = {subject_id: n for n, subject_id in enumerate(cohort.ids)}
        offered = [
            (index[m], index[f])
            for m, f in self.store.pairs()
            if m in index and f in index and (involving is None or m in involving or f in involving)
        ]
        if not offered:
            raise ValueError(
                f"no reference SVFs between the subjects {list(cohort.ids)[:4]}...: run `svfnet references` first "
                "(or train with targets='random')"
            )
        image_problems = cohort.image_problems()
        counted = heart_mask(cohort.labels) if loss_mask == "heart" else None
        self.pairs: list[tuple[int, int]] = []
        self.refused: list[tuple[str, str, str]] = []
        for m, f in offered:
            problem = image_problems.get(m) or image_problems.get(f)
            if problem is None:
                try:
                    svf = self.store.svf(cohort.ids[m], cohort.ids[f])
                except ValueError as error:  # a store that refuses to return what it holds says why
                    self._refuse(m, f, f"its reference SVF cannot be read: {error}", log_refused)
                    continue
                if tuple(svf.shape) != (3, *cohort.grid):
                    raise ValueError(
                        f"the reference SVFs are {tuple(svf.shape)}, the prepared subjects' grid {cohort.grid}: the "
                        "work folder was prepared again since `svfnet references` ran; run it again"
                    )
                problem = target_problem(svf, None if counted is None else counted[f])
                if problem is not None:
                    problem = f"its reference SVF has {problem}"
            if problem is None:
                self.pairs.append((m, f))
            else:
                self._refuse(m, f, problem, log_refused)
        if not self.pairs:
            examples = "; ".join(f"({m}, {f}): {why}" for m, f, why in self.refused[:3])
            raise ValueError(
                f"all {len(self.refused)} reference pairs offered were refused ({examples}"
                f"{'; ...' if len(self.refused) > 3 else ''}): no pair left to use; recompute the references "
                "(`svfnet references`) or check the prepared images"
            )

    def _refuse(self, moving: int, fixed: int, problem: str, log_refused: bool) -> None:
        moving_id, fixed_id = self.cohort.ids[moving], self.cohort.ids[fixed]
        self.refused.append((moving_id, fixed_id, problem))
        if log_refused:
            log.warning("pair (moving %s, fixed %s) refused for training: %s", moving_id, fixed_id, problem)

    def batch(self, pair_indices) -> Batch:
        moving, fixed = zip(*(self.pairs[p] for p in pair_indices), strict=True)
        target = np.stack(
            [
                self.store.svf(self.cohort.ids[m], self.cohort.ids[f])
                for m, f in zip(moving, fixed, strict=True)
            ]
        )
        c = self.cohort
        return Batch(
            c.images[list(moving)],
            c.images[list(fixed)],
            target,
            c.labels[list(moving)],
            c.labels[list(fixed)],
        )

    def sample(self, rng: np.random.Generator, size: int) -> Batch:
        return self.batch(rng.integers(0, len(self.pairs), size=size))

    def sample_both_directions(self, rng: np.random.Generator, size: int) -> tuple[Batch, Batch]:
        """``size`` pairs whose reverse is usable too, and those reverses with their own references."""
        if not hasattr(self, "_reversible"):
            usable = set(self.pairs)
            self._reversible = [n for n, (m, f) in enumerate(self.pairs) if (f, m) in usable]
            if not self._reversible:
                raise ValueError(
                    "no training pair has a usable reverse: inverse consistency needs both directions"
                )
        chosen = [self._reversible[c] for c in rng.integers(0, len(self._reversible), size=size)]
        forward = self.batch(chosen)
        reverse = np.stack(
            [
                self.store.svf(self.cohort.ids[f], self.cohort.ids[m])
                for m, f in (self.pairs[c] for c in chosen)
            ]
        )
        return forward, reversed_batch(forward, reverse)

    def validation(self, count: int) -> Batch:
        chosen = np.random.default_rng(12345).permutation(len(self.pairs))[:count]
        return self.batch(sorted(chosen))


def random_svf(
    rng: np.random.Generator, grid, spacing_mm, amplitude_vox: float, smoothness_vox: float
) -> np.ndarray:
    """A smooth random SVF ``(3, I, J, K)``: in-plane components of root-mean-square ``amplitude_vox``.

    Normalised by the RMS, not the maximum: a few peaks (often at the border) would otherwise
    leave the heart, in the middle, almost still.
    """
    ratio = spacing_mm[2] / spacing_mm[0]
    sigma = (0, smoothness_vox, smoothness_vox, max(smoothness_vox / ratio, 0.5))
    field_ = gaussian_filter(rng.standard_normal((3, *grid)), sigma=sigma, mode="wrap")
    field_ *= amplitude_vox / np.sqrt(np.mean(field_[:2] ** 2))
    field_[2] /= ratio  # in voxels, the slice axis moves less for the same millimetres
    return field_.astype(np.float32)


class RandomTargets:
    """Pairs (subject, subject warped by exp(v)) with target v, v a smooth random SVF."""

    def __init__(
        self, cohort: Cohort, amplitude_vox: float, smoothness_vox: float, *, log_refused: bool = True
    ) -> None:
        """Subjects whose image is not finite are left out (``refused``: ``(subject, reason)``)."""
        self.cohort, self.amplitude_vox, self.smoothness_vox = cohort, amplitude_vox, smoothness_vox
        problems = cohort.image_problems()
        self.subjects = np.array([n for n in range(len(cohort.ids)) if n not in problems], dtype=np.int64)
        self.refused = [(cohort.ids[n], problem) for n, problem in problems.items()]
        if log_refused:
            for subject, problem in self.refused:
                log.warning("subject %s refused for training: %s", subject, problem)
        if not len(self.subjects):
            reasons = "; ".join(problem for _, problem in self.refused[:3])
            raise ValueError(f"every subject was refused ({reasons}): nothing to train on")

    def _pairs(self, rng: np.random.Generator, subjects) -> Batch:
        c = self.cohort
        target = np.stack(
            [random_svf(rng, c.grid, c.spacing_mm, self.amplitude_vox, self.smoothness_vox) for _ in subjects]
        )
        disp = fields.exp(target)
        moving, labels = c.images[subjects], c.labels[subjects]
        fixed = fields.warp(moving[:, None], disp)[:, 0]
        fixed_labels = fields.warp_labels(labels, disp, mode="onehot")
        return Batch(moving, fixed, target, labels, fixed_labels)

    def sample(self, rng: np.random.Generator, size: int) -> Batch:
        return self._pairs(rng, self.subjects[rng.integers(0, len(self.subjects), size=size)])

    def sample_both_directions(self, rng: np.random.Generator, size: int) -> tuple[Batch, Batch]:
        """``size`` pairs and their reverses: the reverse of (s, s ∘ exp(v)) has the target -v exactly."""
        forward = self.sample(rng, size)
        return forward, reversed_batch(forward, -forward.target)

    def validation(self, count: int) -> Batch:
        rng = np.random.default_rng(12345)
        return self._pairs(rng, self.subjects[np.arange(count) % len(self.subjects)])


def shift_in_plane(batch: Batch, shifts: np.ndarray) -> Batch:
    """Translates each pair and its target by an integer in-plane shift ``(di, dj)``.

    Content moves by +shift; what enters at the border is 0 for images and labels and the
    nearest target vector for the SVF (the target of a region no image shows barely matters).
    """

    def shift(volume: np.ndarray, di: int, dj: int, edge: bool) -> np.ndarray:
        pad = [(0, 0)] * (volume.ndim - 3) + [(max(di, 0), max(-di, 0)), (max(dj, 0), max(-dj, 0)), (0, 0)]
        padded = np.pad(volume, pad, mode="edge" if edge else "constant")
        ni, nj = volume.shape[-3], volume.shape[-2]
        start_i, start_j = max(-di, 0), max(-dj, 0)
        return padded[..., start_i : start_i + ni, start_j : start_j + nj, :]

    out = dataclasses.replace(batch)
    out.moving, out.fixed, out.target = batch.moving.copy(), batch.fixed.copy(), batch.target.copy()
    out.moving_labels, out.fixed_labels = batch.moving_labels.copy(), batch.fixed_labels.copy()
    for n, (di, dj) in enumerate(shifts):
        out.moving[n] = shift(batch.moving[n], di, dj, False)
        out.fixed[n] = shift(batch.fixed[n], di, dj, False)
        out.target[n] = shift(batch.target[n], di, dj, True)
        out.moving_labels[n] = shift(batch.moving_labels[n], di, dj, False)
        out.fixed_labels[n] = shift(batch.fixed_labels[n], di, dj, False)
    return out


def augment(batch: Batch, rng: np.random.Generator, config: TrainConfig, spacing_mm) -> Batch:
    """The configured augmentations of a drawn batch, each keeping its target exact: in-plane
    shifts, then in-plane rotations (pair and target rotated alike), then intensity changes (the
    geometry untouched). Draws from ``rng`` only for the augmentations that are on, so a run
    without them draws what runs before them drew."""
    size = len(batch.moving)
    if config.shift_vox:
        batch = shift_in_plane(batch, rng.integers(-config.shift_vox, config.shift_vox + 1, size=(size, 2)))
    if config.rotation_deg:
        angles = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg, size=size))
        rotated = rotate_in_plane(
            batch.moving,
            batch.fixed,
            batch.target,
            batch.moving_labels,
            batch.fixed_labels,
            angles,
            spacing_mm,
        )
        batch = Batch(*rotated)
    if config.intensity_augmentation:
        batch = dataclasses.replace(
            batch, moving=augment_intensity(batch.moving, rng), fixed=augment_intensity(batch.fixed, rng)
        )
    return batch


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


def draw_batch(source, rng: np.random.Generator, config: TrainConfig, spacing_mm) -> Batch:  # noqa: ANN001
    """One step's augmented batch: ``batch_size`` pairs, or (with inverse consistency) ``batch_size / 2``
    pairs followed by their reverses, each reverse augmented as its pair (:mod:`svfnet.training.consistency`)."""
    if not config.inverse_consistency_weight:
        return augment(source.sample(rng, config.batch_size), rng, config, spacing_mm)
    forward, reverse = source.sample_both_directions(rng, config.batch_size // 2)
    return augmented_both_directions(forward, reverse, rng, lambda b, r: augment(b, r, config, spacing_mm))


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


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _distributed() -> _Dist:
    """Joins the torchrun process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = svfnet.default_device().type == "cuda"  # the one rule: torch's device and svfnet's launchers
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if on_gpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return _Dist(rank, dist.get_world_size() if dist.is_initialized() else 1, device)


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


def _step_problem(loss: torch.Tensor, model: SVFNet, where: _Dist) -> str | None:
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


def _any_process(problem: str | None, where: _Dist) -> str | None:
    """``problem`` from this process, or a note that another process found one (collective)."""
    if where.world == 1:
        return problem
    flag = torch.tensor([problem is not None], dtype=torch.float32, device=where.device)
    dist.all_reduce(flag)
    return problem or ("another process stopped" if bool(flag.item()) else None)


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
    from svfnet.common.limits import check_memory, train_memory_bytes

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


def _resumed_config(saved: TrainConfig, given: TrainConfig | None, step: int, path: Path) -> TrainConfig:
    """The configuration a resumed run continues with: the saved one, or ``given`` where it only
    asks for more steps. The grid and spacing come from the data, so they are not compared."""
    if given is None:
        return saved
    given = dataclasses.replace(
        given,
        model=dataclasses.replace(
            given.model,
            grid=saved.model.grid,
            spacing_mm=saved.model.spacing_mm,
            long_axis=saved.model.long_axis,
        ),
    )
    differing = [
        name for name, value in given.to_dict().items() if name != "steps" and value != saved.to_dict()[name]
    ]
    if differing:
        raise ValueError(
            f"train(): 'config' differs from the run being resumed ({path}) in {differing}; only 'steps' may change"
        )
    if given.steps < step:
        raise ValueError(
            f"train(): 'steps' = {given.steps} is below the {step} steps the run being resumed has done"
        )
    return given


def train(
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
            (non-finite images or reference SVFs, or an SVF beyond :func:`target_problem`'s bound).
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
    from svfnet.common.limits import check_run_name, check_train_config
    from svfnet.common.locks import folder_lock

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
    """:func:`train`'s work, once its arguments are checked and the work folder locked."""
    folder = run_folder(workdir, run)
    checkpoint_path, config_path, log_path = (
        folder / "checkpoint.pt",
        folder / "config.json",
        folder / "log.csv",
    )
    saved = read_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
    if saved is not None and not resume:
        raise FileExistsError(
            f"{checkpoint_path} exists: pass resume=True (--resume) to continue it, or choose another run"
        )
    if saved is not None and "train_config" not in saved:
        raise ValueError(f"{checkpoint_path} holds a model but no training state: it cannot be resumed")

    where = _distributed()
    split = subject_split(workdir)
    train_cohort = Cohort.load(workdir, split.train)
    check_grid(train_cohort.grid, "train()")
    if saved is not None:
        saved_config = TrainConfig.from_dict(json.loads(json.dumps(saved["train_config"])))
        trained_on = (tuple(saved_config.model.grid), tuple(float(s) for s in saved_config.model.spacing_mm))
        if trained_on != (tuple(train_cohort.grid), tuple(float(s) for s in train_cohort.spacing_mm)):
            raise ValueError(
                f"{checkpoint_path} was trained on a {saved_config.model.grid} grid of "
                f"{saved_config.model.spacing_mm} mm, the work folder now holds {train_cohort.grid} of "
                f"{train_cohort.spacing_mm} mm (prepared again?): start another run"
            )
        config = _resumed_config(saved_config, config, int(saved["step"]), checkpoint_path)
    config = config or TrainConfig()
    # the model works on the prepared grid, and records it: registration prepares new images on
    # exactly this grid and spacing (a model config's own grid and spacing are defaults only)
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model,
            grid=train_cohort.grid,
            spacing_mm=train_cohort.spacing_mm,
            long_axis=_prepared_long_axis(workdir, train_cohort.ids[0]),
        ),
    )
    _check_memory(config, train_cohort.grid, len(split.train) + len(split.val))
    # every pair is checked here, once; refused ones are logged (by rank 0) and never drawn
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
        _write_refused(folder / "refused.csv", refused)
    validation_batch = validation_source.validation(config.validation_pairs) if where.main else None

    torch.manual_seed(config.seed)
    model = SVFNet(config.model).to(where.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng([config.seed, where.rank])
    step = 0
    if saved is not None:
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
    trained = torch.nn.parallel.DistributedDataParallel(model) if where.world > 1 else model
    precision = resolved_precision(config.precision, where.device)
    autocast = (
        torch.autocast(where.device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )
    if where.main:
        log.info("training in %s (precision %r)", precision, config.precision)

    writer = _Log(log_path, step, tensorboard) if where.main else None
    if where.main:
        write_json(config_path, config.to_dict())
    bar = None
    if progress and where.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="train", unit="step")
    started = time.perf_counter()
    last_checkpoint = int(saved["step"]) if saved is not None else None
    try:
        while step < config.steps:
            batch = draw_batch(source, rng, config, train_cohort.spacing_mm)
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
            step += 1
            row = {
                "step": step,
                "seconds": time.perf_counter() - started,
                **{name: float(value.detach()) for name, value in terms.items()},
            }
            if problem is None and (step % config.validate_every == 0 or step == config.steps):
                if where.main:
                    try:
                        row.update(validate(model, validation_batch, where.device, config.loss_mask))
                    except TrainingDiverged as error:
                        problem = str(error)
                problem = _any_process(problem, where)
            checkpointing = step % config.checkpoint_every == 0 or step == config.steps
            if problem is None and checkpointing:
                problem = _state_problem(model)  # the replicas are equal: every process finds the same
            if problem is not None:
                row["error"] = problem
                if writer is not None:
                    writer.write(row)
                raise TrainingDiverged(_stopped(step, problem, last_checkpoint, checkpoint_path, config))
            if writer is not None:  # before the checkpoint: a kill between the two loses no row
                writer.write(row)
            if checkpointing:
                _checkpoint(checkpoint_path, model, optimizer, step, rng, config, where)
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


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (else autocast emulates them, slower)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    cpu = torch.cpu
    return any(
        getattr(cpu, name, lambda: False)()
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def resolved_precision(precision: str, device: torch.device) -> str:
    """``TrainConfig.precision`` on ``device``: "float32" or "bfloat16" ("auto" decided by :func:`native_bfloat16`)."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


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


def _write_refused(path: Path, refused: list[tuple[str, str, str, str]]) -> None:
    """``refused.csv``: the pairs left out of this run (moving, fixed, purpose, reason)."""
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("moving", "fixed", "purpose", "reason"))
        writer.writerows(refused)


def _checkpoint(
    path: Path, model: SVFNet, optimizer, step: int, rng, config: TrainConfig, where: _Dist
) -> None:
    state = json.dumps(rng.bit_generator.state)  # a string: loads under weights_only, any size of int
    states = [state]
    if where.world > 1:
        states = [None] * where.world
        dist.all_gather_object(states, state)
    if where.main:
        save_checkpoint(
            path,
            model,
            optimizer=optimizer.state_dict(),
            step=step,
            sampling_states=states,
            torch_rng=torch.get_rng_state(),
            train_config=config.to_dict(),
        )


class _Log:
    """log.csv (rows up to the resumed step kept, later ones dropped) and optional TensorBoard."""

    COLUMNS = (
        "step",
        "loss",
        "val_loss",
        "val_dice",
        "identity_dice",
        "seconds",
        "error",
        "svf_loss",
        "overlap_loss",
        "consistency_loss",
    )

    def __init__(self, path: Path, resumed_step: int, tensorboard: bool) -> None:
        kept = []
        if path.is_file() and resumed_step:
            with path.open(newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= resumed_step]
        with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
            csv_writer = csv.DictWriter(handle, self.COLUMNS)
            csv_writer.writeheader()
            csv_writer.writerows(kept)
        self.handle = path.open("a", newline="")
        self.csv = csv.DictWriter(self.handle, self.COLUMNS)
        self.board = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a killed run logged after its last checkpoint are dropped
            purge = resumed_step + 1 if resumed_step else None
            self.board = SummaryWriter(str(path.parent / "tensorboard"), purge_step=purge)

    def write(self, row: dict) -> None:
        self.csv.writerow({key: row.get(key, "") for key in self.COLUMNS})
        self.handle.flush()
        if self.board is not None:
            for key, value in row.items():
                if key not in ("step", "error"):
                    self.board.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.handle.close()
        if self.board is not None:
            self.board.close()
