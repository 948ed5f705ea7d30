"""NIfTI geometry read as ITK reads it: every style of header met in public data, against SimpleITK.

SimpleITK is the independent reference: its ``GetSpacing``/``GetDirection``/``GetOrigin`` (LPS) on
the same file, turned into a RAS+ voxel → world affine, must equal svfnet's.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from svfnet.data.nifti import HeaderWarning, read_affine, read_geometry, read_nifti, write_nifti

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def sitk_affine(path) -> np.ndarray:
    """The RAS+ voxel → world affine of SimpleITK's reading of ``path``."""
    image = sitk.ReadImage(str(path))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return affine


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def affine_of(rotation, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(rotation) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def write_header(
    path, *, pixdim, qform=None, qform_code=0, sform=None, sform_code=0, units=2, shape=(7, 6, 5)
):
    """A NIfTI file whose header is set field by field, as public releases write them."""
    data = np.random.default_rng(1).integers(0, 100, size=shape).astype(np.int16)
    image = nib.Nifti1Image(data, None)
    header = image.header
    if qform is not None:
        header.set_qform(qform, code=qform_code)
    if sform is not None:
        header.set_sform(sform, code=sform_code)
    header["qform_code"], header["sform_code"] = qform_code, sform_code
    stored = header["pixdim"]
    stored[1:4] = pixdim
    header["pixdim"] = stored
    header["xyzt_units"] = units
    nib.save(image, str(path))
    return path


def header_styles(rng: np.random.Generator) -> dict[str, dict]:
    rotation = random_rotation(rng)
    other = random_rotation(rng)
    spacing = tuple(float(s) for s in rng.uniform(0.7, 2.0, size=2)) + (float(rng.uniform(5.0, 10.0)),)
    spacing = (spacing[0], spacing[0], spacing[2])
    origin = rng.uniform(-100, 100, size=3)
    true = affine_of(rotation, spacing, origin)
    acdc_sform = np.diag([-1.0, -1.0, 1.0, 1.0])
    acdc_sform[:3, 3] = origin
    return {
        # ACDC's release: sform code 2 with no voxel size, qform code 0, the voxel size only in pixdim
        "acdc": dict(pixdim=spacing, sform=acdc_sform, sform_code=2),
        "qform only": dict(pixdim=spacing, qform=true, qform_code=1),
        "sform only": dict(pixdim=spacing, sform=true, sform_code=2),
        "both agreeing": dict(pixdim=spacing, qform=true, qform_code=1, sform=true, sform_code=1),
        # both set and different: ITK takes the qform unless the sform's code is SCANNER_ANAT
        "both disagreeing, sform aligned": dict(
            pixdim=spacing,
            qform=true,
            qform_code=1,
            sform=affine_of(other, (2, 2, 5), origin + 7),
            sform_code=2,
        ),
        "both disagreeing, sform scanner": dict(
            pixdim=spacing,
            qform=true,
            qform_code=1,
            sform=affine_of(other, spacing, origin + 7),
            sform_code=1,
        ),
        "oblique, qfac -1": dict(
            pixdim=spacing, qform=affine_of(rotation @ np.diag([1, 1, -1]), spacing, origin), qform_code=1
        ),
        "neither set": dict(pixdim=spacing),
        "metres": dict(
            pixdim=tuple(s / 1000 for s in spacing),
            qform=affine_of(rotation, [s / 1000 for s in spacing], origin / 1000),
            qform_code=1,
            units=1,
        ),
        "sform scale off pixdim": dict(
            pixdim=spacing,
            qform=true,
            qform_code=1,
            sform=affine_of(rotation, (spacing[0], spacing[1], spacing[2] + 1), origin),
            sform_code=1,
        ),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("style", list(header_styles(np.random.default_rng(0))))
def test_geometry_matches_simpleitk(tmp_path, style, seed):
    kwargs = header_styles(np.random.default_rng(seed))[style]
    path = write_header(tmp_path / "image.nii.gz", **kwargs)
    geometry, shape = read_geometry(path)
    assert shape == (7, 6, 5)
    np.testing.assert_allclose(geometry.affine, sitk_affine(path), atol=2e-4)
    np.testing.assert_allclose(geometry.spacing_mm, sitk.ReadImage(str(path)).GetSpacing(), rtol=1e-6)
    consistent = style in ("qform only", "sform only", "both agreeing", "oblique, qfac -1", "metres")
    assert bool(geometry.problems) == (not consistent), geometry.problems


def with_stored_pixdim(path, pixdim):
    """Rewrites ``path`` with ``pixdim[1:4]`` stored as given (nibabel's save would "fix" them)."""
    with nib.openers.ImageOpener(str(path)) as stored:
        header = nib.Nifti1Header.from_fileobj(stored, check=False)
    data = np.asarray(nib.load(str(path)).dataobj)
    header["pixdim"][1:4] = pixdim
    with nib.openers.ImageOpener(str(path), "wb") as stored:
        header.write_to(stored)
        stored.write(b"\0" * (int(header["vox_offset"]) - header.sizeof_hdr))
        stored.write(np.asarray(data, header.get_data_dtype()).tobytes(order="F"))
    return path


def test_negative_pixdim_is_read_as_itk_reads_it(tmp_path):
    rotation = random_rotation(np.random.default_rng(3))
    path = write_header(
        tmp_path / "image.nii.gz",
        pixdim=(1.3, 1.3, 8.0),
        qform=affine_of(rotation, (1.3, 1.3, 8), (1, 2, 3)),
        qform_code=1,
    )
    with_stored_pixdim(path, (-1.3, 1.3, 8.0))
    geometry, _ = read_geometry(path)
    np.testing.assert_allclose(geometry.affine, sitk_affine(path), atol=2e-4)
    assert geometry.spacing_mm[0] == pytest.approx(1.3)
    assert any("negative" in problem for problem in geometry.problems)


def test_acdc_header_gives_the_true_voxel_size_and_warns_once_naming_the_file(tmp_path):
    sform = np.diag([-1.0, -1.0, 1.0, 1.0])
    path = write_header(
        tmp_path / "patient001_frame01.nii.gz", pixdim=(1.5625, 1.5625, 10.0), sform=sform, sform_code=2
    )
    assert np.allclose(np.linalg.norm(nib.load(path).affine[:3, :3], axis=0), 1.0), (
        "nibabel's affine is the sform"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            _, affine = read_nifti(path)
            read_affine(path)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [1.5625, 1.5625, 10.0])
    messages = [str(w.message) for w in caught if issubclass(w.category, HeaderWarning)]
    assert len(messages) == 1, messages
    assert str(path) in messages[0] and "1 × 1 × 1" in messages[0] and "1.5625 × 1.5625 × 10" in messages[0]
    assert "pixdim" in messages[0]


def test_a_consistent_header_does_not_warn(tmp_path):
    path = tmp_path / "ok.nii.gz"
    write_nifti(
        path,
        np.zeros((4, 5, 6), np.float32),
        affine_of(random_rotation(np.random.default_rng(4)), (1.2, 1.2, 7), (3, 4, 5)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeaderWarning)
        read_nifti(path)


def test_written_files_carry_equal_sform_and_qform_and_simpleitk_reads_them_back(tmp_path):
    affine = affine_of(random_rotation(np.random.default_rng(5)), (0.9, 1.1, 6.5), (-20, 33, 12))
    path = tmp_path / "written.nii.gz"
    write_nifti(path, np.zeros((5, 4, 3), np.int16), affine)
    header = nib.load(path).header
    assert int(header["qform_code"]) == int(header["sform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(sitk_affine(path), affine, atol=2e-4)
    geometry, _ = read_geometry(path)
    assert geometry.problems == ()


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (1.0, np.nan, 1.0)])
def test_unusable_voxel_size_is_a_clear_error_naming_the_file(tmp_path, pixdim):
    path = write_header(tmp_path / "bad.nii.gz", pixdim=(1, 1, 1), qform=np.eye(4), qform_code=1)
    with_stored_pixdim(path, pixdim)
    with pytest.raises(ValueError, match=r"bad\.nii\.gz.*pixdim"):
        read_geometry(path)


def test_nothing_non_finite_is_ever_written(tmp_path):
    from svfnet.data.nifti import vector_image

    volume = np.zeros((4, 5, 6), np.float32)
    volume[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        write_nifti(tmp_path / "nan.nii.gz", volume, np.eye(4))
    assert not list(tmp_path.iterdir())
    field = np.zeros((3, 4, 5, 6))
    field[0, 0, 0, 0] = 1e39  # finite in float64, infinite once cast to the file's float32
    with pytest.raises(ValueError, match="NaN or infinite"):
        vector_image(field, np.eye(4))


@pytest.mark.parametrize("difference", ["origin 5e-4 mm", "rotation 3e-4 rad", "rotation 1e-3 rad"])
def test_sform_and_qform_just_apart_are_told_apart_with_itks_absolute_tolerance(tmp_path, difference):
    # both codes set, the sform's not scanner: ITK reads the sform only if both describe the same
    # space within 1e-4 (mm, and about 1e-4 rad); a tolerance growing with the origin's distance
    # (1e-2 at 100 mm) read the sform where ITK reads the qform
    rotation = random_rotation(np.random.default_rng(6))
    qform = affine_of(rotation, (1.3, 1.3, 8.0), (100.0, -60.0, 120.0))
    sform = qform.copy()
    if difference.startswith("origin"):
        sform[:3, 3] += 5e-4
    else:
        angle = float(difference.split()[1])
        turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        sform[:3, :3] = turn @ sform[:3, :3]
    path = tmp_path / "image.nii.gz"
    write_header(path, pixdim=(1.3, 1.3, 8.0), qform=qform, qform_code=1, sform=sform, sform_code=2)
    geometry, _ = read_geometry(path)
    np.testing.assert_allclose(geometry.affine, sitk_affine(path), atol=2e-5)
    assert geometry.source == "qform"
    assert any("different spaces" in problem for problem in geometry.problems), geometry.problems
