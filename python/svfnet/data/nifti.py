"""Reading and writing NIfTI volumes, with the checks every reader needs.

Every error names the file: a missing or unreadable file, something that is not NIfTI, a volume
that is not 3D (trailing axes of length 1 are dropped, so ``(I, J, K, 1)`` is fine), a singular
or non-finite affine, NaN or infinite intensities, label values that are not whole numbers.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from svfnet._io import atomic_path

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


def read_affine(path: str | Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """The voxel → world affine ``(4, 4)`` float64 and the 3D shape, from the header only."""
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
    affine = np.asarray(image.affine, dtype=np.float64)
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
        voxel → world (mm) affine.

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
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"write_nifti(): 'affine' must be a finite (4, 4) matrix, got shape {affine.shape}")
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))


NIFTI_INTENT_VECTOR = 1007  # what ITK writes for vector images, and reads back unchanged


def vector_image(field_3ijk: np.ndarray, affine: np.ndarray, *, itk: bool = False, name: str = "") -> nib.Nifti1Image:
    """A vector field ``(3, I, J, K)`` as a NIfTI image with ``affine`` (qform and sform, mm).

    ``itk=False``: svfnet's layout, 4D ``(I, J, K, 3)`` with ``intent_name`` ``name`` (fields in voxels
    along the array axes; deliberately not a 5D vector image, so that no ITK tool mistakes it for a
    displacement in millimetres). ``itk=True``: ITK's layout, 5D ``(I, J, K, 1, 3)`` with intent VECTOR.
    """
    data = np.moveaxis(np.asarray(field_3ijk, np.float32), 0, -1)
    if itk:
        data = data[:, :, :, None, :]
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
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
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim != 4 or data.shape[3] != 3:
        raise ValueError(f"{path}: expected an (I, J, K, 3) vector field, got shape {data.shape}")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), np.asarray(image.affine, dtype=np.float64)
