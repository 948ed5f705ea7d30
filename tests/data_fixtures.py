"""Small datasets written on the fly for the data tests (plain, nnU-Net/Decathlon and ACDC layouts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from svfnet.data.nifti import write_nifti

SUNNYBROOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-cc0"

# An oblique, anisotropic affine (1.5 mm in plane, 8 mm slices) like a short-axis stack's: a rotation
# times the voxel size, as every NIfTI reader (ITK's included) can represent.
_OBLIQUE_ROTATION = np.linalg.qr(np.array([[1.2, -0.9, 0.14], [0.9, 1.2, -0.05], [-0.03, 0.08, 0.99]]))[0]
OBLIQUE_AFFINE = np.eye(4)
OBLIQUE_AFFINE[:3, :3] = _OBLIQUE_ROTATION * np.sign(np.diag(_OBLIQUE_ROTATION)) @ np.diag([1.5, 1.5, 8.0])
OBLIQUE_AFFINE[:3, 3] = [-40.0, 25.0, 60.0]


def tiny_heart(shape: tuple[int, int, int] = (24, 22, 8), *, rv: bool = True) -> np.ndarray:
    """A small label map in svfnet's values: LV blood pool ringed by myocardium, RV beside it."""
    i, j, k = np.indices(shape, dtype=np.float64)
    ci, cj = shape[0] * 0.45, shape[1] * 0.5
    radius = np.hypot(i - ci, j - cj)
    along = k / (shape[2] - 1)  # 0 at base, 1 at apex: the heart narrows
    taper = np.sqrt(np.clip(1.0 - along**2, 0.05, 1.0))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(radius <= 6.0 * taper) & (k >= 1) & (k <= shape[2] - 2)] = 2
    labels[(radius <= 4.0 * taper) & (k >= 1) & (k <= shape[2] - 3)] = 1
    if rv:
        rv_radius = np.hypot(i - (ci + 7.0), j - cj)
        rv_region = (rv_radius <= 5.0 * taper) & (labels == 0) & (k >= 1) & (k <= shape[2] - 3)
        labels[rv_region] = 3
        wall = (
            (rv_radius <= 6.0 * taper)
            & (rv_radius > 5.0 * taper)
            & (labels == 0)
            & (k >= 1)
            & (k <= shape[2] - 3)
        )
        labels[wall] = 4
    return labels


def image_for(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A bright-blood image matching ``labels`` (int16, with noise)."""
    rng = np.random.default_rng(seed)
    intensity = np.array([120.0, 600.0, 180.0, 580.0, 170.0])[labels]
    return np.clip(intensity + rng.normal(0, 20, labels.shape), 0, None).astype(np.int16)


def to_acdc_values(labels: np.ndarray) -> np.ndarray:
    """svfnet values → ACDC values (1 RV cavity, 2 myocardium, 3 LV cavity; no RV myocardium)."""
    return np.array([0, 3, 2, 1, 0], dtype=np.uint8)[labels]


def write_foreign_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI file as other software may write it, NaN or infinity included (nibabel's defaults:
    the sform set to ``affine``); svfnet's own writer refuses non-finite values."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def write_pair(
    folder: Path,
    name: str,
    labels: np.ndarray,
    *,
    suffix: str = "_gt",
    affine=OBLIQUE_AFFINE,
    seed: int = 0,
    image: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Writes ``name.nii.gz`` and ``name{suffix}.nii.gz``; returns their paths."""
    image_path, labels_path = folder / f"{name}.nii.gz", folder / f"{name}{suffix}.nii.gz"
    write_nifti(image_path, image_for(labels, seed) if image is None else image, affine)
    write_nifti(labels_path, labels, affine)
    return image_path, labels_path


def write_plain(root: Path, names=("case_a", "case_b"), *, suffix: str = "_gt") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        write_pair(root, name, tiny_heart(rv=True), suffix=suffix, seed=n)
    return root


def write_nnunet(
    root: Path, *, style: str = "decathlon", cases=("heart_001", "heart_002"), labels_json=None
) -> Path:
    """nnU-Net v2 (``{"LV": 3}``, images ``CASE_0000``) or Decathlon (``{"3": "LV"}``, images ``CASE``)."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for n, case in enumerate(cases):
        labels = to_acdc_values(tiny_heart())
        image_name = f"{case}_0000.nii.gz" if style == "nnunet" else f"{case}.nii.gz"
        write_nifti(root / "imagesTr" / image_name, image_for(tiny_heart(), n), OBLIQUE_AFFINE)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", labels, OBLIQUE_AFFINE)
    if labels_json is None:
        labels_json = (
            {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
            if style == "nnunet"
            else {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}
        )
    description = {"name": "test", "labels": labels_json, "numTraining": len(cases)}
    if style == "nnunet":
        description.update(channel_names={"0": "cineMRI"}, file_ending=".nii.gz")
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def write_acdc(root: Path, patients: dict[str, tuple[int, int]]) -> Path:
    """ACDC layout; ``patients`` maps a folder name to its (ED, ES) frame numbers. The ED frame has an
    RV, the ES frame none, so tests can tell which frame was read."""
    for n, (patient, (ed, es)) in enumerate(patients.items()):
        folder = root / patient
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Info.cfg").write_text(
            f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n"
        )
        for frame, with_rv in ((ed, True), (es, False)):
            labels = to_acdc_values(tiny_heart(rv=with_rv))
            write_pair(
                folder,
                f"{patient}_frame{frame:02d}",
                labels,
                seed=n,
                image=image_for(tiny_heart(rv=with_rv), n),
            )
    return root


def to_acdc_header(path: Path, spacing_mm=(1.5625, 1.5625, 10.0)) -> Path:
    """Rewrites ``path``'s header as the ACDC release writes its files: qform code 0, sform code 2 with
    ``diag(-1, -1, 1)`` (no voxel size), the voxel size only in pixdim. As ITK reads it, the voxels
    are ``spacing_mm``; nibabel's ``img.affine`` says 1 mm."""
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_zooms(tuple(spacing_mm))
    header.set_xyzt_units("mm")
    rewritten = nib.Nifti1Image(data, None, header=header)
    rewritten.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    rewritten.set_qform(None, code=0)
    rewritten.header["pixdim"][1:4] = spacing_mm
    nib.save(rewritten, str(path))
    return path
