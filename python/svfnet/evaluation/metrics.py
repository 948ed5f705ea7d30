"""Registration metrics in millimetres on anisotropic grids, per region of interest.

What a registration of a pair (moving → fixed) is judged by, each computed on the fixed grid:

- **Dice** of a region: ``2 |A ∩ B| / (|A| + |B|)`` between the warped moving labels ``A`` and the
  fixed labels ``B``.
- **Hausdorff distance** between the region's surfaces, symmetric, in mm: the surface of a region is
  its voxels with at least one of their 6 face neighbours outside it (or outside the grid);
  the distance from every surface voxel of ``A`` to the nearest surface voxel of ``B`` comes from
  a Euclidean distance transform with the voxel spacing (``scipy.ndimage.distance_transform_edt``,
  ``sampling=spacing``), and likewise from ``B`` to ``A``. ``hausdorff`` is the largest of all
  these distances; ``hausdorff95`` is the larger of the two directed 95th percentiles (the
  convention of MONAI's ``compute_hausdorff_distance``).
- **Local correlation coefficient (LCC)** between the warped moving image and the fixed image,
  with a Gaussian window: the criterion LCC Log-Demons maximises, defined once here
  (:func:`local_moments`) and used by both.
- **Log-Jacobian spread** inside a region: the variance of ``log det(I + ∇u)`` over the region's
  voxels, and its normalised variance (see :func:`log_jacobian_spread`).
- **Folding fraction**: the fraction of a region's voxels where ``det(I + ∇u) ≤ 0``.

:func:`evaluate_pair` computes all of them for one registered pair and returns one flat row
(a dict) per region, ready for a CSV.

Conventions (README.md, Conventions): volumes ``(I, J, K)``, fields ``(3, I, J, K)`` in voxels, pull-back
(``warped(x) = moving(x + u(x))``), spacing in mm along ``(i, j, k)``. Inputs may be NumPy arrays
or torch tensors; results are Python floats or NumPy arrays.

References:
    Lorenzi, Ayache, Frisoni, Pennec. LCC-Demons: a robust and accurate symmetric diffeomorphic
    registration algorithm. NeuroImage 81 (2013) 470–483.
    Rohé, Datar, Heimann, Sermesant, Pennec. SVF-Net: learning deformable image registration
    using shape matching. MICCAI 2017.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from svfnet.common.arrays import as_numpy, checked_field, checked_spacing, checked_volume
from svfnet.common.workdir import REGIONS
from svfnet.ops import fields, smoothing
from svfnet.ops.smoothing import GAUSSIAN_TRUNCATE
from svfnet.ops.smoothing import positive_number as _positive

__all__ = [
    "DEFAULT_LCC_SIGMA_MM",
    "GAUSSIAN_TRUNCATE",
    "LCC_VARIANCE_FLOOR",
    "METRIC_KEYS",
    "LocalMoments",
    "dice",
    "evaluate_pair",
    "folding_fraction",
    "gaussian_sigma_vox",
    "hausdorff",
    "local_correlation",
    "local_moments",
    "log_jacobian_spread",
    "smooth",
    "standardised",
    "surface_distances",
    "warp_pair",
]

# Gaussian window of the local correlation, standard deviation in mm (LCC Log-Demons' default too).
DEFAULT_LCC_SIGMA_MM = 5.0
# Each local variance is regularised by this fraction of the image's global variance, so that the
# LCC of flat patches (background, outside the field of view) is 0 instead of 0/0.
LCC_VARIANCE_FLOOR = 1e-4
# Row keys of evaluate_pair, in CSV column order.
METRIC_KEYS = (
    "dice",
    "hausdorff_mm",
    "hausdorff95_mm",
    "lcc",
    "log_jacobian_var",
    "log_jacobian_normvar",
    "folding_fraction",
)


# ----------------------------------------------------------------------------- overlap and distances
def dice(mask_a: Any, mask_b: Any) -> float:
    """Dice coefficient ``2 |A ∩ B| / (|A| + |B|)`` of two boolean masks of one grid.

    Args:
        mask_a, mask_b: ``(I, J, K)`` boolean masks (NumPy or torch).

    Returns:
        The Dice in ``[0, 1]``; NaN when either mask is empty (a region absent from one map is
        missing data, not a failed overlap).
    """
    func = "dice"
    a = checked_volume(func, "mask_a", mask_a, kind="mask")
    b = checked_volume(func, "mask_b", mask_b, kind="mask", shape=a.shape, shape_of="mask_a")
    size_a, size_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if size_a == 0 or size_b == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(a & b)) / (size_a + size_b)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it; the grid's outside counts as outside."""
    interior = binary_erosion(mask, structure=generate_binary_structure(3, 1), border_value=0)
    return mask & ~interior


def surface_distances(mask_a: Any, mask_b: Any, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances between the surfaces of two masks, in mm.

    Args:
        mask_a, mask_b: ``(I, J, K)`` boolean masks of one grid, both non-empty.
        spacing: voxel size in mm along ``(i, j, k)``.

    Returns:
        ``(a_to_b, b_to_a)``: float64 arrays, the distance from each surface voxel of ``a`` to the
        nearest surface voxel of ``b`` (centre to centre), and the reverse.

    Raises:
        ValueError: a mask is empty, or the masks are on different grids.
    """
    func = "surface_distances"
    spacing = checked_spacing(func, spacing)
    a = checked_volume(func, "mask_a", mask_a, kind="mask")
    b = checked_volume(func, "mask_b", mask_b, kind="mask", shape=a.shape, shape_of="mask_a")
    for name, mask in (("mask_a", a), ("mask_b", b)):
        if not mask.any():
            raise ValueError(f"{func}(): '{name}' is empty: it has no surface")
    surface_a, surface_b = _surface(a), _surface(b)
    # distance_transform_edt measures the distance to the nearest zero: zeros on the other surface
    to_b = distance_transform_edt(~surface_b, sampling=spacing)
    to_a = distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


def hausdorff(mask_a: Any, mask_b: Any, spacing: Sequence[float], *, percentile: float = 100.0) -> float:
    """Symmetric Hausdorff distance between the surfaces of two masks, in mm.

    Args:
        mask_a, mask_b: ``(I, J, K)`` boolean masks of one grid.
        spacing: voxel size in mm along ``(i, j, k)``.
        percentile: 100 for the Hausdorff distance (the largest surface-to-surface distance);
            e.g. 95 for the larger of the two directed 95th percentiles ("HD95").

    Returns:
        The distance in mm; NaN when either mask is empty (a region absent from one map).
    """
    func = "hausdorff"
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"{func}(): 'percentile' must be in (0, 100], got {percentile!r}")
    a = checked_volume(func, "mask_a", mask_a, kind="mask")
    b = checked_volume(func, "mask_b", mask_b, kind="mask", shape=a.shape, shape_of="mask_a")
    if not a.any() or not b.any():
        return math.nan
    a_to_b, b_to_a = surface_distances(a, b, spacing)
    if percentile >= 100.0:
        return float(max(a_to_b.max(), b_to_a.max()))
    return float(max(np.percentile(a_to_b, percentile), np.percentile(b_to_a, percentile)))


# ----------------------------------------------------------------------------- local correlation
@dataclass(frozen=True)
class LocalMoments:
    """Gaussian-windowed local statistics of two images ``a`` and ``b`` (all ``(I, J, K)`` float32).

    ``mean_x = G * x``; ``var_x = G * x² − mean_x² + floor_x``; ``cov = G * (a b) − mean_a mean_b``;
    ``lcc = cov / sqrt(var_a var_b)``, in ``[-1, 1]``.
    """

    mean_a: np.ndarray
    mean_b: np.ndarray
    var_a: np.ndarray
    var_b: np.ndarray
    cov: np.ndarray
    lcc: np.ndarray


def gaussian_sigma_vox(sigma_mm: float, spacing: Sequence[float]) -> tuple[float, float, float]:
    """Per-axis standard deviation in voxels of a Gaussian of ``sigma_mm`` on a grid of ``spacing``."""
    return tuple(float(sigma_mm) / float(s) for s in spacing)  # type: ignore[return-value]


def smooth(volume: Any, sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing of an ``(I, J, K)`` volume, or of each volume of a ``(..., I, J, K)`` stack.

    Per-axis sigma in voxels, cut at ``GAUSSIAN_TRUNCATE`` sigmas, border replicated: SciPy's
    ``gaussian_filter(volume, sigma_vox, mode="nearest", truncate=GAUSSIAN_TRUNCATE)``, computed by
    svfnet's compiled kernels (:func:`svfnet.ops.smoothing.smooth`). Returns float32 NumPy.
    """
    return np.asarray(smoothing.smooth(as_numpy("smooth", "volume", volume), sigma_vox))


def local_moments(
    a: np.ndarray,
    b: np.ndarray,
    sigma_vox: Sequence[float],
    *,
    floor_a: float | None = None,
    floor_b: float | None = None,
) -> LocalMoments:
    """Local means, variances, covariance and correlation of ``a`` and ``b`` under a Gaussian window.

    This is the one definition of the local correlation coefficient (LCC) in svfnet: the metric
    (:func:`local_correlation`) and LCC Log-Demons' criterion both call it.

    ``Λ(x) = cov(x) / sqrt(var_a(x) var_b(x))``, with, for ``G`` the Gaussian window centred on
    ``x``: ``mean_a = G * a``, ``var_a = G * a² − mean_a² + floor_a``, ``cov = G * (a b) −
    mean_a mean_b``. The images are centred locally, so Λ is invariant to a local affine change
    of intensity of either image (bias fields, scanner gain), and it is 0, not 0/0, on flat
    patches thanks to the variance floors.

    The five windowed sums ``G * a, G * b, G * a², G * b², G * (a b)`` are computed together, in
    float32 passes of svfnet's compiled Gaussian (:func:`svfnet.ops.smoothing.local_moments`), and the
    moments from them in float32 (the rounding negatives of ``G * a² − mean_a²`` clamped to 0 before
    the floor).

    Args:
        a, b: ``(I, J, K)`` images of one grid (NumPy or torch, any real dtype, computed in float32),
            best standardised (:func:`standardised`).
        sigma_vox: window standard deviation in voxels along ``(i, j, k)``.
        floor_a, floor_b: added to the local variances; None: ``LCC_VARIANCE_FLOOR`` × the global
            variance of the image (a constant image gets 1e-12).

    Returns:
        The :class:`LocalMoments` (float32 NumPy views of one array).

    References:
        Lorenzi et al., NeuroImage 2013 (the criterion of LCC-Demons, section 2).
    """
    func = "local_moments"
    a = as_numpy(func, "a", a)
    b = as_numpy(func, "b", b)
    if floor_a is None:
        floor_a = max(LCC_VARIANCE_FLOOR * float(np.var(a)), 1e-12)
    if floor_b is None:
        floor_b = max(LCC_VARIANCE_FLOOR * float(np.var(b)), 1e-12)
    # the five windowed sums in shared passes, then (in float32) the rounding negatives of the
    # variances clamped before the floors
    m = np.asarray(smoothing.local_moments(a, b, sigma_vox, floor_a=floor_a, floor_b=floor_b))
    return LocalMoments(*(m[..., c, :, :, :] for c in range(len(smoothing.LOCAL_MOMENT_NAMES))))


def local_correlation(
    image_a: Any,
    image_b: Any,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    sigma_mm: float = DEFAULT_LCC_SIGMA_MM,
) -> np.ndarray:
    """Map of the local correlation coefficient Λ of two images (see :func:`local_moments`).

    Args:
        image_a, image_b: ``(I, J, K)`` real images of one grid (e.g. warped moving and fixed).
        spacing: voxel size in mm along ``(i, j, k)``.
        sigma_mm: standard deviation of the Gaussian window, in mm (anisotropic in voxels).

    Returns:
        ``(I, J, K)`` float32 map of Λ in ``[-1, 1]``; average it over a region for a score.
    """
    func = "local_correlation"
    spacing = checked_spacing(func, spacing)
    sigma_mm = _positive(func, "sigma_mm", sigma_mm)
    a = checked_volume(func, "image_a", image_a)
    b = checked_volume(func, "image_b", image_b, shape=a.shape, shape_of="image_a")
    return local_moments(standardised(a), standardised(b), gaussian_sigma_vox(sigma_mm, spacing)).lcc


def standardised(image: np.ndarray) -> np.ndarray:
    """``(image − mean) / std`` in float32 (unchanged but centred when constant).

    Λ does not see affine intensity changes, and unit variance keeps the float32 second moments of
    :func:`local_moments` free of cancellation for scanner-range intensities.
    """
    image = np.asarray(image, dtype=np.float64)
    centred = image - image.mean()
    std = float(centred.std())
    return (centred / std if std > 0 else centred).astype(np.float32)


# ----------------------------------------------------------------------------- Jacobian
def log_jacobian_spread(jacobian: Any, mask: Any | None = None) -> tuple[float, float]:
    """Spread of ``log det J`` inside a region: variance and normalised variance.

    With ``L = log det J`` over the region's voxels where ``det J > 0`` (folded voxels have no
    logarithm; count them with :func:`folding_fraction`):

    - ``variance = mean((L − mean L)²)`` (population variance). A uniform volume change of the
      region (``L`` constant) gives 0: it measures how unevenly the region is compressed and
      stretched, not how much.
    - ``normalised variance = variance / mean(L²)``, in ``[0, 1]``: the share of the log-Jacobian's
      second moment that is spread rather than a uniform volume change of the region,
      i.e. ``1 − (mean L)² / mean(L²)``. 0 for a uniform scaling, 1 when the region keeps its
      volume on average. NaN when ``L ≡ 0`` (no volume change anywhere, e.g. the identity).

    Args:
        jacobian: ``(I, J, K)`` determinant ``det(I + ∇u)`` (:func:`svfnet.ops.fields.jacobian_det`).
        mask: ``(I, J, K)`` boolean region (None: the whole grid).

    Returns:
        ``(variance, normalised_variance)``; both NaN when the region is empty or fully folded.
    """
    func = "log_jacobian_spread"
    det = checked_volume(func, "jacobian", jacobian)
    inside = (
        np.ones(det.shape, dtype=bool)
        if mask is None
        else checked_volume(func, "mask", mask, kind="mask", shape=det.shape, shape_of="jacobian")
    )
    values = det[inside & (det > 0)]
    if values.size == 0:
        return math.nan, math.nan
    log_det = np.log(values)
    variance = float(np.var(log_det))
    second_moment = float(np.mean(log_det * log_det))
    normalised = variance / second_moment if second_moment > 0 else math.nan
    return variance, normalised


def folding_fraction(jacobian: Any, mask: Any | None = None) -> float:
    """Fraction of the region's voxels where ``det J ≤ 0`` (the map folds).

    Args:
        jacobian: ``(I, J, K)`` determinant ``det(I + ∇u)``.
        mask: ``(I, J, K)`` boolean region (None: the whole grid).

    Returns:
        The fraction in ``[0, 1]``; NaN when the region is empty.
    """
    func = "folding_fraction"
    det = checked_volume(func, "jacobian", jacobian)
    if mask is None:
        return float(np.count_nonzero(det <= 0)) / det.size
    inside = checked_volume(func, "mask", mask, kind="mask", shape=det.shape, shape_of="jacobian")
    count = int(np.count_nonzero(inside))
    return math.nan if count == 0 else float(np.count_nonzero(det[inside] <= 0)) / count


# ----------------------------------------------------------------------------- one pair
def warp_pair(
    moving_image: Any, moving_labels: Any, disp: Any, *, label_interpolation: str = "nearest"
) -> tuple[np.ndarray, np.ndarray]:
    """Warps a moving image and its labels onto the fixed grid: ``out(x) = moving(x + disp(x))``.

    Args:
        moving_image: ``(I, J, K)`` image.
        moving_labels: ``(I, J, K)`` integer labels.
        disp: ``(3, I, J, K)`` displacement in voxels (``fields.exp(svf)`` for an SVF).
        label_interpolation: "nearest" or "onehot" (see :func:`svfnet.ops.fields.warp_labels`).

    Returns:
        ``(warped_image float32, warped_labels int64)``, NumPy.
    """
    func = "warp_pair"
    image = checked_volume(func, "moving_image", moving_image).astype(np.float32)
    labels = checked_volume(
        func, "moving_labels", moving_labels, kind="labels", shape=image.shape, shape_of="moving_image"
    )
    field = checked_field(func, "disp", disp, image.shape, "moving_image")
    warped_image = np.asarray(fields.warp(image, field))
    warped_labels = np.asarray(fields.warp_labels(labels.astype(np.int32), field, mode=label_interpolation))
    return warped_image, warped_labels.astype(np.int64)


def evaluate_pair(
    moving_image: Any,
    fixed_image: Any,
    moving_labels: Any,
    fixed_labels: Any,
    *,
    spacing: Sequence[float],
    svf: Any | None = None,
    disp: Any | None = None,
    regions: Mapping[int, str] | None = None,
    lcc_sigma_mm: float = DEFAULT_LCC_SIGMA_MM,
    label_interpolation: str = "nearest",
) -> list[dict[str, Any]]:
    """Every metric of one registered pair, one flat row per region (plus one for the whole grid).

    The moving image and labels are warped onto the fixed grid by ``exp(svf)`` (or by ``disp``
    directly: give exactly one of the two; the identity is ``disp = 0``), then compared with the
    fixed ones.

    Args:
        moving_image, fixed_image: ``(I, J, K)`` images of one grid.
        moving_labels, fixed_labels: ``(I, J, K)`` integer label maps of that grid.
        spacing: voxel size in mm along ``(i, j, k)``.
        svf: ``(3, I, J, K)`` stationary velocity field in voxels (SVF-Net's and LCC Log-Demons'
            output); the displacement is ``fields.exp(svf)``.
        disp: ``(3, I, J, K)`` displacement in voxels, for methods that give one.
        regions: label value → name; default :data:`svfnet.common.workdir.REGIONS`.
        lcc_sigma_mm: Gaussian window of the LCC, in mm.
        label_interpolation: how labels are warped: "nearest" or "onehot".

    Returns:
        A list of dicts, one per region in ``regions`` order and a last one for the whole grid
        (``region = 0``, ``name = "whole grid"``: LCC, log-Jacobian spread and folding over all
        voxels; overlap and distances NaN). Keys: ``region``, ``name``, ``status``, ``voxels_fixed``,
        ``voxels_warped``, then :data:`METRIC_KEYS`: ``dice``, ``hausdorff_mm``,
        ``hausdorff95_mm``, ``lcc`` (mean Λ over the fixed region), ``log_jacobian_var``,
        ``log_jacobian_normvar`` and ``folding_fraction`` (over the fixed region, where the
        field lives). ``status`` is

        - ``"ok"``;
        - ``"missing in moving"`` / ``"missing in fixed"`` / ``"missing in both"``: the region is
          absent from an input label map (a dataset without that region): Dice and distances are
          NaN, and metrics over the fixed region are NaN when it is the fixed map that lacks it;
        - ``"lost"``: present in both inputs but absent after warping (the registration failed
          badly): Dice 0, distances NaN.

    Raises:
        ValueError: arrays on different grids, bad shapes or values (the message names the
            argument), both or neither of ``svf`` and ``disp``.
    """
    func = "evaluate_pair"
    spacing = checked_spacing(func, spacing)
    lcc_sigma_mm = _positive(func, "lcc_sigma_mm", lcc_sigma_mm)
    if label_interpolation not in ("nearest", "onehot"):
        raise ValueError(
            f"{func}(): 'label_interpolation' must be 'nearest' or 'onehot', got {label_interpolation!r}"
        )
    moving, fixed, moving_lab, fixed_lab, field = _checked_pair(
        func, moving_image, fixed_image, moving_labels, fixed_labels, svf, disp
    )
    regions = dict(REGIONS if regions is None else regions)

    warped, warped_lab = warp_pair(moving, moving_lab, field, label_interpolation=label_interpolation)
    lcc_map = local_moments(
        standardised(warped), standardised(fixed), gaussian_sigma_vox(lcc_sigma_mm, spacing)
    ).lcc
    jacobian = np.asarray(fields.jacobian_det(field, spacing)).astype(np.float64)
    labels = (moving_lab, fixed_lab, warped_lab)
    rows = [_region_row(value, name, labels, spacing, lcc_map, jacobian) for value, name in regions.items()]
    rows.append(_whole_grid_row(fixed.shape, lcc_map, jacobian))
    return rows


def _checked_pair(
    func: str, moving_image: Any, fixed_image: Any, moving_labels: Any, fixed_labels: Any, svf: Any, disp: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The checked images (float32), labels and displacement (``exp(svf)`` or ``disp``) of one pair."""
    fixed = checked_volume(func, "fixed_image", fixed_image).astype(np.float32)
    grid = fixed.shape
    moving = checked_volume(func, "moving_image", moving_image, shape=grid, shape_of="fixed_image").astype(
        np.float32
    )
    moving_lab = checked_volume(
        func, "moving_labels", moving_labels, kind="labels", shape=grid, shape_of="fixed_image"
    )
    fixed_lab = checked_volume(
        func, "fixed_labels", fixed_labels, kind="labels", shape=grid, shape_of="fixed_image"
    )
    if (svf is None) == (disp is None):
        raise ValueError(f"{func}(): give exactly one of 'svf' and 'disp'")
    if svf is not None:
        field = np.asarray(fields.exp(checked_field(func, "svf", svf, grid, "fixed_image")))
    else:
        field = checked_field(func, "disp", disp, grid, "fixed_image")
    return moving, fixed, moving_lab, fixed_lab, field


def _region_row(
    value: int,
    name: str,
    labels: tuple[np.ndarray, np.ndarray, np.ndarray],
    spacing: Sequence[float],
    lcc_map: np.ndarray,
    jacobian: np.ndarray,
) -> dict[str, Any]:
    """The row of one region: its status, overlap and distances, and the field metrics over it."""
    moving_lab, fixed_lab, warped_lab = labels
    in_moving, in_fixed = bool(np.any(moving_lab == value)), bool(np.any(fixed_lab == value))
    fixed_mask, warped_mask = fixed_lab == value, warped_lab == value
    row: dict[str, Any] = {
        "region": int(value),
        "name": str(name),
        "status": "ok",
        "voxels_fixed": int(np.count_nonzero(fixed_mask)),
        "voxels_warped": int(np.count_nonzero(warped_mask)),
    }
    if not (in_moving and in_fixed):
        row["status"] = (
            "missing in both"
            if not (in_moving or in_fixed)
            else "missing in moving"
            if not in_moving
            else "missing in fixed"
        )
        row.update(dice=math.nan, hausdorff_mm=math.nan, hausdorff95_mm=math.nan)
    elif not warped_mask.any():
        row["status"] = "lost"
        row.update(dice=0.0, hausdorff_mm=math.nan, hausdorff95_mm=math.nan)
    else:
        a_to_b, b_to_a = surface_distances(warped_mask, fixed_mask, spacing)
        row.update(
            dice=dice(warped_mask, fixed_mask),
            hausdorff_mm=float(max(a_to_b.max(), b_to_a.max())),
            hausdorff95_mm=float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))),
        )
    row.update(_field_metrics(lcc_map, jacobian, fixed_mask if in_fixed else None))
    return row


def _whole_grid_row(grid: tuple[int, ...], lcc_map: np.ndarray, jacobian: np.ndarray) -> dict[str, Any]:
    """The last row: the field metrics over the whole grid (no overlap or distances)."""
    whole = {
        "region": 0,
        "name": "whole grid",
        "status": "ok",
        "voxels_fixed": int(np.prod(grid)),
        "voxels_warped": int(np.prod(grid)),
        "dice": math.nan,
        "hausdorff_mm": math.nan,
        "hausdorff95_mm": math.nan,
    }
    whole.update(_field_metrics(lcc_map, jacobian, np.ones(grid, dtype=bool)))
    return whole


def _field_metrics(lcc_map: np.ndarray, jacobian: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    """LCC, log-Jacobian spread and folding over ``mask`` (all NaN for None)."""
    if mask is None:
        return {
            "lcc": math.nan,
            "log_jacobian_var": math.nan,
            "log_jacobian_normvar": math.nan,
            "folding_fraction": math.nan,
        }
    variance, normalised = log_jacobian_spread(jacobian, mask)
    return {
        "lcc": float(np.mean(lcc_map[mask], dtype=np.float64)),
        "log_jacobian_var": variance,
        "log_jacobian_normvar": normalised,
        "folding_fraction": folding_fraction(jacobian, mask),
    }
