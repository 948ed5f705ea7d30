"""Triangle meshes of the regions of a label map, in millimetres, and their files.

Each region's surface is the boundary of the labels it encloses (:data:`ENCLOSED_LABELS`): the LV
blood pool, the LV epicardium (blood pool and myocardium together), the RV blood pool, the RV
epicardium. It is extracted by marching cubes (scikit-image) at level ½ of the region's indicator,
lightly smoothed on the label grid and resampled on an isotropic grid whose step is chosen so
that the subject's surfaces together have about ``target_triangles`` triangles. Vertices are in
the label grid's millimetre frame: voxel ``(i, j, k)`` at ``(i, j, k) · spacing``. Normals point
out of the enclosed region (the faces' vertex order is counter-clockwise seen from outside).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svfnet.common.atomic import atomic_path
from svfnet.common.workdir import REGIONS

__all__ = [
    "ENCLOSED_LABELS",
    "Surface",
    "load_surfaces",
    "save_surfaces",
    "surfaces_from_labels",
]

# Labels inside each region's surface: the myocardium surfaces are the epicardia (outer walls).
ENCLOSED_LABELS: dict[int, tuple[int, ...]] = {1: (1,), 2: (1, 2), 3: (3,), 4: (3, 4)}
SURFACE_NAMES: dict[int, str] = {
    1: "LV blood pool",
    2: "LV epicardium (LV myocardium outer surface)",
    3: "RV blood pool",
    4: "RV epicardium (RV myocardium outer surface)",
}


@dataclass(frozen=True)
class Surface:
    """A triangle mesh: ``vertices_mm`` ``(V, 3)`` float64 and ``faces`` ``(F, 3)`` int64 vertex indices."""

    vertices_mm: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        vertices = np.asarray(self.vertices_mm, dtype=np.float64)
        faces = np.asarray(self.faces)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"Surface: 'vertices_mm' must be (V, 3), got shape {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3 or (faces.size and faces.dtype.kind not in "iu"):
            raise ValueError(
                f"Surface: 'faces' must be (F, 3) integer vertex indices, got {faces.shape} {faces.dtype}"
            )
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError(
                f"Surface: 'faces' index vertices in [{faces.min()}, {faces.max()}] "
                f"but there are {len(vertices)}"
            )
        object.__setattr__(self, "vertices_mm", np.ascontiguousarray(vertices))
        object.__setattr__(self, "faces", np.ascontiguousarray(faces, dtype=np.int64))

    @property
    def n_triangles(self) -> int:
        return int(self.faces.shape[0])

    def area_mm2(self) -> float:
        a, b, c = (self.vertices_mm[self.faces[:, t]] for t in range(3))
        return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def surfaces_from_labels(
    labels: np.ndarray,
    spacing_mm: Iterable[float],
    *,
    regions: Iterable[int] | None = None,
    target_triangles: int = 4000,
    smoothing_vox: float = 0.5,
    subject: str = "",
) -> dict[int, Surface]:
    """One closed surface per region of a label map, in millimetres.

    Args:
        labels: ``(I, J, K)`` integer label map (0 background, 1 LV blood pool, 2 LV myocardium,
            3 RV blood pool, 4 RV myocardium).
        spacing_mm: voxel size along ``(i, j, k)``.
        regions: the regions to extract (default: every region of :data:`ENCLOSED_LABELS` whose
            labels occur). A requested region whose labels are absent is an error.
        target_triangles: about how many triangles all the surfaces together get (the marching
            cubes step is chosen for it; expect ±15%).
        smoothing_vox: Gaussian smoothing of each region's indicator, in voxels of the label grid
            (per axis), before the surface is taken at level ½; 0 for none.
        subject: a name used in error messages.

    Returns:
        ``{region: Surface}`` in increasing region order.
    """
    from scipy import ndimage
    from skimage.measure import marching_cubes

    func = "surfaces_from_labels"
    where = f" (subject {subject})" if subject else ""
    labels, spacing, chosen = _checked_arguments(
        func, where, labels, spacing_mm, regions, target_triangles, smoothing_vox
    )
    pad = 2
    fields = _indicators(func, where, labels, chosen, pad, smoothing_vox, ndimage)

    def extract(step_mm: float) -> dict[int, Surface]:
        out = {}
        for region, field in fields.items():
            # a step too coarse for a small region can miss it: refine until the surface appears
            step = step_mm
            while (surface := _isosurface(field, spacing, step, pad, ndimage, marching_cubes)) is None:
                step /= 2
            out[region] = surface
        return out

    # a first pass at about the in-plane voxel size tells the total area; the second pass takes
    # the step that gives the target count (triangles scale as area / step²)
    first_step = min(spacing)
    surfaces = extract(first_step)
    count = sum(s.n_triangles for s in surfaces.values())
    step = first_step * math.sqrt(count / target_triangles)
    step = min(max(step, 0.1 * min(spacing)), 4.0 * max(spacing))
    if abs(step - first_step) > 0.05 * first_step:
        surfaces = extract(step)
    return surfaces


def _checked_arguments(func, where, labels, spacing_mm, regions, target_triangles, smoothing_vox):
    """:func:`surfaces_from_labels`' arguments checked: the label map, the spacing and the regions
    to extract (given, or those of :data:`ENCLOSED_LABELS` that occur)."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(
            f"{func}(): 'labels' must be a 3D label map (I, J, K), got shape {labels.shape}{where}"
        )
    if labels.dtype.kind not in "iub":
        raise TypeError(f"{func}(): 'labels' must have an integer dtype, got {labels.dtype}{where}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{func}(): 'spacing_mm' must be three positive numbers, got {spacing_mm!r}")
    if isinstance(target_triangles, bool) or not isinstance(target_triangles, int) or target_triangles < 100:
        raise ValueError(f"{func}(): 'target_triangles' must be an integer >= 100, got {target_triangles!r}")
    if not (math.isfinite(smoothing_vox) and smoothing_vox >= 0):
        raise ValueError(f"{func}(): 'smoothing_vox' must be >= 0, got {smoothing_vox!r}")

    present = set(np.unique(labels).tolist())
    if regions is None:
        chosen = [r for r in ENCLOSED_LABELS if r in present]
        if not chosen:
            raise ValueError(f"{func}(): the label map has none of the regions {sorted(REGIONS)}{where}")
    else:
        chosen = sorted(set(int(r) for r in regions))
        for region in chosen:
            if region not in ENCLOSED_LABELS:
                raise ValueError(f"{func}(): unknown region {region}; regions are {sorted(ENCLOSED_LABELS)}")
            if region not in present:
                raise ValueError(
                    f"{func}(): region {region} ({REGIONS[region]}) is empty in the label map{where}"
                )
    return labels, spacing, chosen


def _indicators(func, where, labels, chosen, pad, smoothing_vox, ndimage) -> dict[int, np.ndarray]:
    """The smoothed indicator of each chosen region, padded by ``pad`` so that every surface closes."""
    fields: dict[int, np.ndarray] = {}
    for region in chosen:
        indicator = np.isin(labels, ENCLOSED_LABELS[region]).astype(np.float32)
        indicator = np.pad(indicator, pad)
        if smoothing_vox > 0:
            indicator = ndimage.gaussian_filter(indicator, sigma=smoothing_vox, mode="constant", truncate=3.0)
        if indicator.max() <= 0.5:
            raise ValueError(
                f"{func}(): region {region} ({REGIONS[region]}) is too thin to give a surface after "
                f"smoothing by {smoothing_vox} voxels{where}"
            )
        fields[region] = indicator
    return fields


def _isosurface(field, spacing, step_mm, pad, ndimage, marching_cubes) -> Surface | None:
    """Level-½ surface of a padded, smoothed indicator sampled on an isotropic grid of ``step_mm``.

    Sampling is by cubic B-spline: a linear interpolant is piecewise linear between the slices
    of thick-slice data, and its level set then has creases at every slice whose area depends on
    the sampling step. None when no sample reaches the level (a step too coarse for the region).
    """
    spacing = np.asarray(spacing)
    inside = np.argwhere(field > 0.01)
    lo_mm = (inside.min(axis=0) - 1) * spacing
    hi_mm = (inside.max(axis=0) + 1) * spacing
    counts = np.ceil((hi_mm - lo_mm) / step_mm).astype(int) + 1
    axes_vox = [(lo_mm[a] + step_mm * np.arange(counts[a])) / spacing[a] for a in range(3)]
    coordinates = np.stack(np.meshgrid(*axes_vox, indexing="ij"))
    resampled = ndimage.map_coordinates(field, coordinates, order=3, mode="constant", cval=0.0)
    if resampled.max() <= 0.5:
        return None
    # a zero border closes every surface, whatever the sampling grid's extent
    resampled = np.pad(resampled, 1)
    vertices, faces, _, _ = marching_cubes(resampled, level=0.5, spacing=(step_mm,) * 3)
    vertices = vertices + lo_mm - step_mm - pad * spacing  # back to the unpadded label grid's frame
    # scikit-image's winding gives (b - a) × (c - a) pointing into the region: reverse it
    faces = _drop_degenerate(vertices, faces[:, ::-1])
    return Surface(vertices, faces)


def _drop_degenerate(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, t]] for t in range(3))
    area2 = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    return faces[area2 > 1e-12 * max(float(area2.max(initial=0.0)), 1e-300)]


# -------------------------------------------------------------------- files
def save_surfaces(path: str | Path, surfaces: Mapping[int, Surface] | Surface) -> None:
    """Writes one mesh file (format from the suffix: ``.vtk``, ``.vtu``, ``.ply``...; meshio) atomically.

    Several regions go into one file, with an integer cell field ``region`` (PLY: a face
    property) so that ParaView can colour or threshold them.
    """
    import meshio

    if isinstance(surfaces, Surface):
        surfaces = {0: surfaces}
    if not surfaces:
        raise ValueError("save_surfaces(): no surface to save")
    points, faces, region_of_face, region_of_point, offset = [], [], [], [], 0
    for region, surface in sorted(surfaces.items()):
        points.append(surface.vertices_mm)
        faces.append(surface.faces + offset)
        region_of_face.append(np.full(surface.n_triangles, region, dtype=np.int32))
        region_of_point.append(np.full(len(surface.vertices_mm), region, dtype=np.int32))
        offset += len(surface.vertices_mm)
    file_format = _meshio_format(Path(path))
    # PLY keeps no cell data in meshio: the region goes with the points too (regions share no vertex)
    mesh = meshio.Mesh(
        np.concatenate(points),
        [("triangle", np.concatenate(faces).astype(np.int32))],
        point_data={"region": np.concatenate(region_of_point)},
        cell_data={} if file_format == "ply" else {"region": [np.concatenate(region_of_face)]},
    )
    with atomic_path(path) as temporary:
        meshio.write(temporary, mesh, file_format=file_format)


def load_surfaces(path: str | Path) -> dict[int, Surface]:
    """Reads a file written by :func:`save_surfaces` (or any triangle mesh: then one region, 0)."""
    import meshio

    mesh = meshio.read(path, file_format=_meshio_format(Path(path)))
    triangles = [block.data for block in mesh.cells if block.type == "triangle"]
    if not triangles:
        raise ValueError(f"load_surfaces(): {path} has no triangles")
    faces = np.concatenate(triangles).astype(np.int64)
    regions = np.zeros(len(faces), dtype=np.int64)
    if "region" in mesh.cell_data:
        blocks = [
            data
            for data, block in zip(mesh.cell_data["region"], mesh.cells, strict=True)
            if block.type == "triangle"
        ]
        regions = np.concatenate(blocks).astype(np.int64).reshape(-1)
    elif "region" in mesh.point_data:
        regions = np.asarray(mesh.point_data["region"]).astype(np.int64).reshape(-1)[faces[:, 0]]
    out = {}
    for region in np.unique(regions):
        region_faces = faces[regions == region]
        used, remapped = np.unique(region_faces, return_inverse=True)
        out[int(region)] = Surface(np.asarray(mesh.points, dtype=np.float64)[used], remapped.reshape(-1, 3))
    return out


def _meshio_format(path: Path) -> str:
    formats = {".vtk": "vtk", ".vtu": "vtu", ".ply": "ply", ".stl": "stl", ".obj": "obj", ".off": "off"}
    suffix = path.suffix.lower()
    if suffix not in formats:
        raise ValueError(f"mesh files must end in one of {sorted(formats)}, got {path.name!r}")
    return formats[suffix]
