"""Label maps read at voxel positions of another grid (:func:`sample_labels`), by the one-hot vote of
the compiled core that :func:`svfnet.ops.fields.warp_labels` uses on one grid (``svfcore::vote_label``)."""

from __future__ import annotations

import math

from svfnet.ops.backend import Array, backend_of, labels_int32, require_dtype, require_finite, shape_text

__all__ = ["sample_labels"]


def sample_labels(labels: Array, positions: Array, *, mode: str = "constant") -> Array:
    """Reads a label map at voxel positions of its grid by the one-hot vote of :func:`warp_labels`.

    The same vote (each label's indicator interpolated trilinearly, then the argmax; ties to the smaller
    label) as :func:`svfnet.ops.fields.warp_labels` with ``mode="onehot"``, at positions that may lie on another grid: the original
    image's voxels read in the prepared grid, or the reverse (:mod:`svfnet.data.transform`).

    Args:
        labels: ``(I, J, K)`` integer or bool labels, values within int32.
        positions: ``(3, ...)`` voxel positions in ``labels`` (component order i, j, k), finite; read in
            float32.
        mode: outside the grid's box ``[0, n - 1]`` along an axis, ``"constant"`` reads background (0),
            ``"nearest"`` the nearest point of the box (as SciPy's ``map_coordinates`` modes of those names).

    Returns:
        Labels of shape ``positions.shape[1:]``, with ``labels``'s dtype.
    """
    func = "sample_labels"
    backend = backend_of(func, labels=labels, positions=positions)
    if mode not in ("constant", "nearest"):
        raise ValueError(f"{func}(): 'mode' must be 'constant' or 'nearest', got {mode!r}")
    require_dtype(func, "labels", labels, ("int", "bool"))
    require_dtype(func, "positions", positions, ("float",))
    grid, out_shape = tuple(labels.shape), tuple(positions.shape[1:])
    if len(grid) != 3 or min(grid) == 0:
        raise ValueError(
            f"{func}(): 'labels' must be a non-empty (I, J, K) label map, got {shape_text(grid)}"
        )
    if len(positions.shape) < 2 or positions.shape[0] != 3 or math.prod(out_shape) == 0:
        raise ValueError(
            f"{func}(): 'positions' must be (3, ...) voxel positions, got {shape_text(positions.shape)}"
        )
    count = math.prod(out_shape)
    points = backend.to_compute(func, "positions", positions, "float32").reshape(1, 3, 1, 1, count)
    require_finite(func, "positions", backend, points)
    data = labels_int32(func, backend, labels).reshape(1, 1, *grid)
    out = backend.empty((1, 1, 1, 1, count), "int32")
    backend.launch("sample_labels", [points, data, out], mode == "nearest", 0, *grid)
    result = backend.from_compute(out.reshape(out_shape))
    if result.dtype == labels.dtype:
        return result
    return result.astype(labels.dtype) if backend.kind != "torch" else result.to(labels.dtype)
