"""Reading and writing NIfTI volumes, with the checks every reader needs.

Geometry is read as ITK reads it (:func:`nifti_geometry`): the voxel size from ``pixdim``,
orientation and origin from the sform or the qform by ITK's rules, never nibabel's ``img.affine``
alone. Where the header's parts disagree, a :class:`HeaderWarning` names the file, the voxel sizes
each part gives and which was used (once per file). Every error names the file: a missing or
unreadable file, something that is not NIfTI, a volume
that is not 3D (trailing axes of length 1 are dropped, so ``(I, J, K, 1)`` is fine), a singular
or non-finite affine, NaN or infinite intensities, label values that are not whole numbers.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from svfnet.common.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti_name(path: str | Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` names (hidden files excluded)."""
    name = Path(path).name
    return not name.startswith(".") and name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """The name without ``.nii.gz`` / ``.nii``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _load_header(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not is_nifti_name(path):
        raise ValueError(f"{path}: not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many kinds for corrupt files; all mean the same here
        raise ValueError(f"{path}: not a readable NIfTI file ({type(error).__name__}: {error})") from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: not a NIfTI file (nibabel read it as {type(image).__name__})")
    return image


# ----------------------------------------------------------------------------- geometry, as ITK reads it
# Why by hand: nibabel's ``img.affine`` is the sform whenever its code is set, even when the sform
# carries no voxel size (ACDC's release: sform code 2, diag(-1, -1, 1), the voxel size only in
# pixdim), and SimpleITK would read the data in ITK's LPS order with its own dtype rules. The rules
# below are ITK's (NiftiImageIO::SetImageIOOrientationFromNIfTI, ITK 5.4), applied to the header
# nibabel parsed; tests compare them with SimpleITK on each style of header met in public data.

NIFTI_XFORM_UNKNOWN = 0
NIFTI_XFORM_SCANNER_ANAT = 1
_UNIT_SCALE_TO_MM = {1: 1000.0, 2: 1.0, 3: 0.001}  # xyzt_units & 7: metre, mm, micron (0: unknown → mm)


class HeaderWarning(UserWarning):
    """A NIfTI header whose parts (sform, qform, pixdim) disagree; the file is read as ITK reads it."""


@dataclass(frozen=True)
class NiftiGeometry:
    """Where a NIfTI file's voxels are, as ITK (and so SimpleITK, ANTs, nnU-Net) reads them.

    Attributes:
        affine: ``(4, 4)`` voxel → world (RAS+, mm) affine: columns are the direction of each array
            axis times its voxel size, the last column the position of voxel ``(0, 0, 0)``.
        spacing_mm: the voxel size along i, j, k (from ``pixdim``, in mm).
        source: what gave orientation and origin: ``"sform"``, ``"qform"`` or ``"pixdim"`` (neither
            code set: ITK's default orientation, LPS axes, origin 0).
        problems: sentences (each naming the file) on the parts of the header that disagree with
            what was used; empty for a consistent header.
    """

    affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    source: str
    problems: tuple[str, ...] = ()


def _qform_matrix(header, pixdim: np.ndarray) -> np.ndarray:
    """The qform's ``(4, 4)`` matrix as nifti_clib computes it (``nifti_quatern_to_mat44``, float64).

    Written out rather than taken from nibabel's ``get_qform``, which refuses negative pixdim
    values that ITK accepts (nifti_clib uses 1 for a non-positive voxel size in this matrix).
    """
    b, c, d = (float(header[name]) for name in ("quatern_b", "quatern_c", "quatern_d"))
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:  # a 180° rotation: renormalise (b, c, d)
        norm = 1.0 / np.sqrt(b * b + c * c + d * d)
        a, b, c, d = 0.0, b * norm, c * norm, d * norm
    else:
        a = np.sqrt(a)
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    sizes = np.where(pixdim[1:4] > 0, pixdim[1:4], 1.0)
    qfac = -1.0 if float(header["pixdim"][0]) < 0 else 1.0
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([sizes[0], sizes[1], sizes[2] * qfac])
    matrix[:3, 3] = [float(header[name]) for name in ("qoffset_x", "qoffset_y", "qoffset_z")]
    return matrix


def _normalised_columns(linear: np.ndarray) -> np.ndarray | None:
    norms = np.linalg.norm(linear, axis=0)
    if not np.all(np.isfinite(linear)) or np.any(norms < 1e-12):
        return None
    return linear / norms


def _sform_is_rigid(sform: np.ndarray) -> bool:
    """ITK's test that the sform decomposes without skew: affine, and orthonormal once normalised."""
    if np.abs(sform[3] - [0.0, 0.0, 0.0, 1.0]).max() > 0.0:
        return False
    directions = _normalised_columns(sform[:3, :3])
    return directions is not None and np.abs(directions @ directions.T - np.eye(3)).max() <= 1e-4


def _same_space(sform: np.ndarray, qform: np.ndarray) -> bool:
    """Whether two matrices describe one space, with ITK's tolerances (in the file's units): voxel
    sizes within 1e-4, axis directions within 1e-4 (about 1e-4 rad), origins within 1e-4, absolute.

    ITK compares the singular values and left singular vectors of the two 3×3 parts; those vectors
    are not unique (their signs always, their directions when two voxel sizes are equal, as in every
    short-axis stack), so ITK's verdict on sform and qform that differ by an axis flip or swap
    depends on its SVD's arbitrary choices. Here the columns are compared directly; on every other
    difference the verdict is ITK's.
    """
    if np.abs(sform[:3, 3] - qform[:3, 3]).max() > 1e-4 or np.abs(sform[3] - qform[3]).max() > 1e-4:
        return False
    sform_sizes = np.linalg.norm(sform[:3, :3], axis=0)
    qform_sizes = np.linalg.norm(qform[:3, :3], axis=0)
    if np.any(sform_sizes < 1e-12) or np.abs(sform_sizes - qform_sizes).max() > 1e-4:
        return False
    return bool(np.abs(sform[:3, :3] / sform_sizes - qform[:3, :3] / qform_sizes).max() <= 1e-4)


def _sizes(matrix: np.ndarray) -> str:
    return " × ".join(f"{s:g}" for s in np.linalg.norm(matrix[:3, :3], axis=0))


def nifti_geometry(header, path: str | Path = "") -> NiftiGeometry:
    """The geometry of a NIfTI header (nibabel's ``Nifti1Header``/``Nifti2Header``), as ITK reads it.

    ITK's rules (``itkNiftiImageIO.cxx``): the voxel size is ``pixdim`` (scaled by ``xyzt_units``);
    orientation and origin come from the sform when its code is set and it is a rotation once its
    columns are normalised, and the qform's code is unknown, or the sform's code is
    ``SCANNER_ANAT``, or both describe the same space; else from the qform when its code is set;
    with neither code set, ITK's default (LPS axes, origin 0). The sform's own column norms never
    give the voxel size: they are only compared with ``pixdim``. Where ITK would refuse the file (an
    sform with shear and no qform), this reads it as ITK does with ``ITK_NIFTI_SFORM_PERMISSIVE``:
    the sform's nearest rotation, and a problem recorded.

    Raises:
        ValueError: a voxel size that is zero or not finite, or a non-finite matrix in use.
    """
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    scale = _UNIT_SCALE_TO_MM.get(int(header["xyzt_units"]) & 7, 1.0)
    spacing_array = np.abs(pixdim[1:4]) * scale
    if not np.all(np.isfinite(spacing_array)) or np.any(spacing_array < 1e-9):
        raise ValueError(
            f"{path}: the header's voxel size (pixdim) is {tuple(pixdim[1:4].tolist())}: not usable"
        )
    spacing = tuple(float(s) for s in spacing_array)
    sizes_text = " × ".join(f"{s:g}" for s in spacing)
    qform_code = int(header["qform_code"])
    sform_code = int(header["sform_code"])
    problems: list[str] = []
    if np.any(pixdim[1:4] < 0):  # ITK's reader makes the size positive and turns the axis round
        problems.append(
            f"{path}: pixdim holds negative voxel sizes {tuple(pixdim[1:4].tolist())}; read as ITK does "
            "(their magnitude, those axes reversed)"
        )
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    if qform_code <= 0 and sform_code <= 0:
        problems.append(
            f"{path}: neither sform nor qform is set: orientation unknown; read as ITK does "
            f"(voxel size {sizes_text} mm from pixdim, LPS axes, origin 0)"
        )
        directions, origin, source = lps_to_ras, np.zeros(3), "pixdim"
    else:
        directions, origin, source = _from_forms(
            header, pixdim, qform_code, sform_code, scale, path, sizes_text, problems
        )
    affine = np.eye(4)
    affine[:3, :3] = directions @ np.diag(np.where(pixdim[1:4] < 0, -spacing_array, spacing_array))
    affine[:3, 3] = origin
    return NiftiGeometry(affine, spacing, source, tuple(problems))


def _from_forms(header, pixdim, qform_code, sform_code, scale, path, sizes_text: str, problems: list[str]):
    """Orientation and origin from the sform or the qform, chosen by ITK's rules (see
    :func:`nifti_geometry`): ``(directions, origin_mm, source)``; problems found are appended."""
    qform = _qform_matrix(header, pixdim) if qform_code > 0 else np.diag([*np.abs(pixdim[1:4]), 1.0])
    sform = np.asarray(header.get_sform(), dtype=np.float64) if sform_code > 0 else np.zeros((4, 4))
    if sform_code > 0 and not np.all(np.isfinite(sform)):
        raise ValueError(f"{path}: the sform holds non-finite values")
    use_sform = bool(
        np.abs(sform[:3, :3] - qform[:3, :3]).max() <= 1e-5
        and np.abs(sform[:3, 3] - qform[:3, 3]).sum() <= 1e-7
        and np.abs(sform[3] - qform[3]).sum() <= 1e-7
    )
    rigid = sform_code > 0 and _sform_is_rigid(sform)
    if rigid:
        if qform_code <= 0 or sform_code == NIFTI_XFORM_SCANNER_ANAT:
            use_sform = True
        else:
            use_sform = _same_space(sform, qform)
    if use_sform:
        source, chosen = "sform", sform
    elif qform_code > 0:
        source, chosen = "qform", qform
    else:  # an sform with shear and no qform: ITK's permissive reading
        if abs(np.linalg.det(sform[:3, :3])) < 1e-9:
            raise ValueError(f"{path}: the affine is singular (its sform, and there is no qform):\n{sform}")
        source, chosen = "sform", sform.copy()
        u, _, vt = np.linalg.svd(sform[:3, :3])
        chosen[:3, :3] = u @ vt
        problems.append(f"{path}: the sform has shear and there is no qform; read with its nearest rotation")
    if qform_code > 0 and sform_code > 0 and not _same_space(sform, qform):
        problems.append(
            f"{path}: sform (code {sform_code}, voxels {_sizes(sform)} mm) and qform (code {qform_code}, "
            f"voxels {_sizes(qform)} mm) describe different spaces; read with the {source} and pixdim's "
            f"{sizes_text} mm, as ITK does"
            + (" (nibabel's affine would be the sform)" if source == "qform" else "")
        )
    elif sform_code > 0 and np.abs(np.linalg.norm(sform[:3, :3], axis=0) - np.abs(pixdim[1:4])).max() > 1e-3:
        # ITK's "unexpected scales in sform" (1e-3 mm), e.g. ACDC's sform without voxel size
        problems.append(
            f"{path}: the sform gives voxels of {_sizes(sform)} mm but pixdim {sizes_text} mm; read with "
            "pixdim's voxel size and the sform's orientation and origin, as ITK does "
            "(nibabel's affine would be the sform)"
        )
    directions = _normalised_columns(chosen[:3, :3])
    if directions is None or not np.all(np.isfinite(chosen[:3, 3])):
        raise ValueError(f"{path}: the header's {source} is singular or not finite:\n{chosen}")
    origin = chosen[:3, 3] * scale
    return directions, origin, source


def _file_geometry(path: Path, image: nib.Nifti1Image | nib.Nifti2Image) -> NiftiGeometry:
    header = image.header
    # nibabel's load makes negative pixdim values positive (with a log line); ITK reads them as
    # axes turned round, so the geometry is taken from the header as stored
    with nib.openers.ImageOpener(str(path)) as stored:
        header = type(header).from_fileobj(stored, check=False)
    return nifti_geometry(header, path)


def _warn_problems(geometry: NiftiGeometry) -> None:
    # one call site, no stack level: Python's default filter then shows each message (it names the
    # file) once per process, whichever reader met the file
    for problem in geometry.problems:
        warnings.warn(problem, HeaderWarning, stacklevel=1)


def read_geometry(path: str | Path) -> tuple[NiftiGeometry, tuple[int, int, int]]:
    """The file's :class:`NiftiGeometry` and 3D shape, from the header only (no warning: the
    problems are in the result, for callers that report them, e.g. ``svfnet inspect``)."""
    path = Path(path)
    image = _load_header(path)
    return _file_geometry(path, image), _shape3(path, tuple(int(n) for n in image.shape))


def read_affine(path: str | Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """The voxel → world affine ``(4, 4)`` float64 (as ITK reads it) and the 3D shape, from the
    header only; warns (:class:`HeaderWarning`) where the header's parts disagree."""
    path = Path(path)
    image = _load_header(path)
    return _checked_affine(path, image), _shape3(path, tuple(int(n) for n in image.shape))


def _shape3(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    while len(shape) > 3 and shape[-1] == 1:  # (I, J, K, 1): a 3D volume stored with a time axis
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 2:
        kind = "4D (or more)" if len(shape) > 3 else "2D"
        raise ValueError(f"{path}: expected a 3D volume, got a {kind} one of shape {shape}")
    return shape  # type: ignore[return-value]


def _checked_affine(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    geometry = _file_geometry(path, image)
    _warn_problems(geometry)
    affine = geometry.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"{path}: the affine is singular or not finite:\n{affine}")
    return affine


def read_nifti(path: str | Path, *, kind: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Reads a 3D NIfTI volume.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        kind: ``"image"`` (returns float32, must be finite) or ``"labels"`` (returns int64, whole
            non-negative values).

    Returns:
        ``(data, affine)``: ``(I, J, K)`` array indexed as nibabel returns it, and the ``(4, 4)``
        voxel → world (RAS+, mm) affine as ITK reads the header (:func:`nifti_geometry`).

    Warns:
        HeaderWarning: the header's sform, qform and pixdim disagree (once per file).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not NIfTI, unreadable, not 3D, bad affine, NaN/inf intensities, non-integer
            or negative labels.
    """
    if kind not in ("image", "labels"):
        raise ValueError(f"read_nifti(): 'kind' must be 'image' or 'labels', got {kind!r}")
    path = Path(path)
    image = _load_header(path)
    shape = _shape3(path, tuple(int(n) for n in image.shape))
    affine = _checked_affine(path, image)
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as error:  # truncated or corrupt data block
        raise ValueError(f"{path}: cannot read the voxel data ({type(error).__name__}: {error})") from error
    data = data.reshape(shape)
    if kind == "image":
        volume = np.asarray(data, dtype=np.float32)
        if not np.all(np.isfinite(volume)):
            raise ValueError(
                f"{path}: the image holds {int(np.count_nonzero(~np.isfinite(volume)))} NaN or "
                "infinite values"
            )
        return volume, affine
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError(f"{path}: a label map must hold whole numbers, found fractional or NaN values")
    elif not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{path}: a label map must hold integers, got dtype {data.dtype}")
    labels = np.asarray(data).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: a label map must not hold negative values (found {int(labels.min())})")
    return labels, affine


def _check_writable_affine(func: str, affine: np.ndarray) -> None:
    """The sform and the qform can be equal only for a rotation times the voxel sizes (no shear)."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{func}(): 'affine' must be a finite (4, 4) matrix, got shape {affine.shape}")
    directions = _normalised_columns(affine[:3, :3])
    if directions is None or np.abs(directions.T @ directions - np.eye(3)).max() > 1e-4:
        raise ValueError(
            f"{func}(): 'affine' must be a rotation times the voxel sizes (a qform cannot hold shear), "
            f"got\n{affine}"
        )


def nifti_image(data: np.ndarray, affine: np.ndarray, *, func: str = "nifti_image") -> nib.Nifti1Image:
    """A NIfTI image as svfnet writes every file: sform and qform both set (code 1, scanner) and
    equal, units mm, so that every reader (ITK, nibabel, FSL) finds the same geometry; never a NaN or
    an infinity (a float32 cast that overflowed included)."""
    affine = np.asarray(affine, dtype=np.float64)
    _check_writable_affine(func, affine)
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):  # after any cast
        raise ValueError(
            f"{func}(): the data hold {int(np.count_nonzero(~np.isfinite(data)))} NaN or infinite values "
            "(nothing written)"
        )
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Writes a 3D volume atomically, with ``affine`` as both qform and sform (units: mm).

    Args:
        path: destination ``.nii.gz`` (or ``.nii``).
        data: ``(I, J, K)`` array; its dtype is kept.
        affine: ``(4, 4)`` voxel → world mm.
    """
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"write_nifti(): 'data' must be (I, J, K), got shape {data.shape}")
    image = nifti_image(data, affine, func="write_nifti")
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))


NIFTI_INTENT_VECTOR = 1007  # what ITK writes for vector images, and reads back unchanged


def vector_image(
    field_3ijk: np.ndarray, affine: np.ndarray, *, itk: bool = False, name: str = ""
) -> nib.Nifti1Image:
    """A vector field ``(3, I, J, K)`` as a NIfTI image with ``affine`` (qform and sform, mm).

    ``itk=False``: svfnet's layout, 4D ``(I, J, K, 3)`` with ``intent_name`` ``name`` (fields in voxels
    along the array axes; deliberately not a 5D vector image, so that no ITK tool mistakes it for a
    displacement in millimetres). ``itk=True``: ITK's layout, 5D ``(I, J, K, 1, 3)`` with intent VECTOR.
    """
    with np.errstate(over="ignore"):  # an overflow to inf is refused below, with a clear message
        data = np.moveaxis(np.asarray(field_3ijk, np.float32), 0, -1)
    if itk:
        data = data[:, :, :, None, :]
    image = nifti_image(np.ascontiguousarray(data), affine, func="vector_image")
    if itk:
        image.header.set_intent(NIFTI_INTENT_VECTOR, name=name)
    else:
        image.header["intent_name"] = name.encode()[:16]
    return image


def read_vector_field(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a field in svfnet's layout (:func:`vector_image`): ``((3, I, J, K) float32, (4, 4) affine)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    image = _load_header(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim != 4 or data.shape[3] != 3:
        raise ValueError(f"{path}: expected an (I, J, K, 3) vector field, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(
            f"{path}: the field holds {int(np.count_nonzero(~np.isfinite(data)))} NaN or infinite values"
        )
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), _checked_affine(path, image)
