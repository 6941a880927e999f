"""Shared pieces of the DICOM SEG / SR / overlay / annotation-import tests.

- :func:`dciodvfy_errors`: the ``Error`` lines dicom3tools' validator prints for a file;
  :func:`dicom_tool` fails the test, naming the packages to install, where a tool is missing.
- :func:`oblique_study`: an oblique (rotated about two axes), anisotropic MR series
  written by medai with a nested three-label "tumour" defined in world millimetres.
- :func:`mr2_series`: the real oblique MR slice of pydicom-data (``MR2_UNCR.dcm``) in a
  folder of its own, with a label map drawn on its grid.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from scipy.spatial.transform import Rotation

from medai.image import LabelMap, ScalarImage
from medai.io import AlgorithmInfo, read_dicom_series, write_dicom_series

ALGO = AlgorithmInfo("test-glioma", "2.1.0", digest="0123456789abcdef" * 4)
BRAIN_REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


def dicom_tool(name: str) -> str:
    """The path of a DICOM command-line tool; fails the test (CI installs them) if missing."""
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(
            f"{name} is not installed; run `apt-get install dicom3tools dcmtk` "
            "(.ci/run installs both)"
        )
    return binary


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of dicom3tools' ``dciodvfy`` output for ``path`` that report an error."""
    run = subprocess.run(
        [dicom_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False
    )
    lines = (run.stdout + run.stderr).splitlines()
    assert lines, f"dciodvfy printed nothing for {path}"
    return [line for line in lines if "Error" in line]


def world_tumour(affine: np.ndarray, shape: tuple[int, int, int], centre: np.ndarray) -> np.ndarray:
    """Labels 1 (shell), 2 (core), 3 (enhancing rim of the core) of nested spheres around
    ``centre`` (RAS mm), evaluated at the voxel centres of the grid ``(affine, shape)``."""
    idx = np.indices(shape).reshape(3, -1)
    world = (affine[:3, :3] @ idx + affine[:3, 3:]).T
    r = np.linalg.norm(world - centre, axis=1).reshape(shape)
    label = np.zeros(shape, np.uint8)
    label[r <= 14.0] = 1
    label[r <= 8.0] = 2
    label[(r <= 8.0) & (r > 5.0)] = 3
    return label


def oblique_affine(
    spacing: tuple[float, float, float] = (0.9, 1.3, 3.5),
    shape: tuple[int, int, int] = (40, 36, 12),
) -> np.ndarray:
    """A double-oblique, anisotropic voxel-to-RAS affine centred near the origin."""
    rot = Rotation.from_euler("xz", [20.0, 30.0], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2.0) + np.array([3.0, -5.0, 10.0])
    return affine


def oblique_study(
    root: Path, *, labels_of: dict[int, int] | None = None
) -> tuple[Path, ScalarImage, LabelMap]:
    """Write an oblique anisotropic MR series to ``root/series``; return the folder, the
    image as medai reads it back and a label map on that grid.

    ``labels_of`` renumbers the labels (e.g. ``{1: 2, 2: 1, 3: 4}`` for BraTS values).
    """
    shape = (40, 36, 12)
    affine = oblique_affine(shape=shape)
    centre = affine[:3, :3] @ np.array([21.0, 17.0, 6.0]) + affine[:3, 3]
    label = world_tumour(affine, shape, centre)
    rng = np.random.default_rng(0)
    values = 100.0 + 40.0 * label + rng.normal(0, 5, shape)
    folder = root / "series"
    write_dicom_series(
        ScalarImage(values.astype(np.float32), affine),
        folder,
        patient_id="OBL001",
        patient_name="Oblique^Test",
        series_description="oblique T1",
        study_date="20240102",
    )
    image = read_dicom_series(folder)
    assert np.allclose(image.affine, affine, atol=1e-4)
    if labels_of:
        label = np.vectorize(lambda v: labels_of.get(int(v), int(v)))(label).astype(np.uint8)
    return folder, image, LabelMap(label, image.affine)


def mr2_series(root: Path) -> tuple[Path, ScalarImage, LabelMap]:
    """pydicom-data's MR2_UNCR (1024², 0.195 mm pixels, 6 mm slice, oblique) in its own
    folder, with a disc (label 1) holding a smaller disc (label 2) on its grid."""
    folder = root / "mr2"
    folder.mkdir(parents=True)
    source = get_testdata_file("MR2_UNCR.dcm")  # from the pydicom-data package
    assert source is not None, "pydicom-data is not installed (it is in requirements.txt)"
    shutil.copy(source, folder / "MR2_UNCR.dcm")
    image = read_dicom_series(folder)
    ii, jj = np.indices(image.shape[:2])
    r = np.hypot(ii - 600, jj - 420)
    label = np.zeros(image.shape, np.uint8)
    label[..., 0][r < 150] = 1
    label[..., 0][r < 60] = 2
    return folder, image, LabelMap(label, image.affine)


def synth_study(root: Path) -> tuple[Path, LabelMap]:
    """One case of the synthetic glioma cohort in its DICOM layout (``medai synth glioma
    --dicom``, 6 mm): the FLAIR series folder and the case's NIfTI label map."""
    from medai.data.synth import generate_cohort
    from medai.io import read_label

    generate_cohort(root, cases=1, spacing=6.0, seed=0, dicom=True)
    (flair,) = sorted(root.glob("dicom/*/flair"))
    label = read_label(root / "Task01_BrainTumour" / "labelsTr" / "BRATS_001.nii.gz")
    assert set(label.labels) == {0, 1, 2, 3}
    return flair, label
