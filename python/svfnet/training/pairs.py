"""The pairs training draws: the prepared subjects in memory (:class:`Cohort`), the target sources
(:class:`ReferenceTargets` from the references stage, :class:`RandomTargets` for development), the
checks that refuse a pair (:func:`target_problem`, :func:`heart_mask` where the loss counts), and one
step's augmented batch (:func:`draw_batch`)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter

from svfnet.common.workdir import read_prepared
from svfnet.ops import fields
from svfnet.references.store import ReferenceStore
from svfnet.training.augment import augment_intensity, rotate_in_plane
from svfnet.training.consistency import augmented_both_directions, reversed_batch
from svfnet.training.train_config import TrainConfig

__all__ = ["Cohort", "RandomTargets", "ReferenceTargets", "heart_mask", "target_problem"]

# refused pairs are logged under the training's logger, as they were before this module was split off
log = logging.getLogger("svfnet.training.train")


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


def draw_batch(source, rng: np.random.Generator, config: TrainConfig, spacing_mm) -> Batch:  # noqa: ANN001
    """One step's augmented batch: ``batch_size`` pairs, or (with inverse consistency) ``batch_size / 2``
    pairs followed by their reverses, each reverse augmented as its pair (:mod:`svfnet.training.consistency`)."""
    if not config.inverse_consistency_weight:
        return augment(source.sample(rng, config.batch_size), rng, config, spacing_mm)
    forward, reverse = source.sample_both_directions(rng, config.batch_size // 2)
    return augmented_both_directions(forward, reverse, rng, lambda b, r: augment(b, r, config, spacing_mm))
