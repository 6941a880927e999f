"""A tiny MSD-layout brain-tumour cohort for the segmentation tests (24³ volumes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medai.image import LabelMap, ScalarImage
from medai.io import write_nifti


def phantom(
    rng: np.random.Generator, *, size: int = 24, spacing: float = 2.0, with_et: bool = True
) -> tuple[ScalarImage, LabelMap]:
    """A 4-channel 'brain' ellipsoid with a nested sphere tumour (labels 1, 2, 3)."""
    grid = np.indices((size, size, size)).astype(np.float64)
    centre = np.array([size / 2] * 3)[:, None, None, None]
    brain = ((grid - centre) / np.array([0.45, 0.42, 0.40])[:, None, None, None] / size) ** 2
    brain_mask = brain.sum(0) <= 1.0
    tc = centre + rng.integers(-3, 4, size=3)[:, None, None, None]
    r = np.sqrt(((grid - tc) ** 2).sum(0))
    label = np.zeros((size,) * 3, np.uint8)
    label[(r <= 6) & brain_mask] = 1
    label[r <= 3.5] = 2
    if with_et:
        label[(r <= 3.5) & (r > 2.0)] = 3
    base = np.array([1.0, 0.8, 0.9, 1.1])
    bump = {1: [0.8, -0.1, 0.0, 0.9], 2: [0.3, -0.4, 0.1, 0.5], 3: [0.2, 0.0, 1.2, 0.3]}
    image = np.zeros((4, size, size, size), np.float32)
    for c in range(4):
        chan = base[c] + 0.05 * rng.standard_normal((size,) * 3)
        for lab, deltas in bump.items():
            chan[label == lab] += deltas[c]
        image[c] = np.where(brain_mask, 100 * chan, 0.0)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-size * spacing / 2, -size * spacing / 2, -size * spacing / 2]
    return ScalarImage(image, affine), LabelMap(label, affine)


def make_msd(root: Path, *, cases: int = 4, size: int = 24, seed: int = 0) -> Path:
    """Write an MSD Task01-like folder with ``cases`` phantoms; every third has no ET."""
    rng = np.random.default_rng(seed)
    training = []
    for i in range(cases):
        img, lab = phantom(rng, size=size, with_et=i % 3 != 2)
        name = f"BRATS_{i:03d}.nii.gz"
        write_nifti(img, root / "imagesTr" / name)
        write_nifti(lab, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "tiny",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        },
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


BRAIN_SEMI_AXES_MM = (21.6, 20.2, 19.2)
BASE = (1.0, 0.8, 0.9, 1.1)  # FLAIR, T1w, t1gd, T2w of normal brain (× 100)
BUMPS = {1: (0.8, -0.1, 0.0, 0.9), 2: (0.3, -0.4, 0.1, 0.5), 3: (0.2, 0.0, 1.2, 0.3)}


def grid_affine(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], rotation: np.ndarray
) -> np.ndarray:
    """Affine of a grid whose axes are the columns of ``rotation`` (times ``spacing``),
    centred on the world origin."""
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def world_phantom(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    tumour_mm: tuple[float, float, float] = (4.0, -3.0, 3.0),
    noise: float = 0.02,
    seed: int = 0,
) -> tuple[ScalarImage, LabelMap]:
    """The :func:`phantom` brain and tumour defined in world millimetres, sampled at the
    voxel centres of any grid ``(shape, affine)``: oblique, anisotropic, flipped.

    Radii: whole tumour 12 mm, core 7 mm, enhancing shell 4–7 mm (the default centre
    keeps the tumour, even moved by 2 mm, inside the brain); ``noise`` is the standard
    deviation relative to the normal-brain intensity; intensities are integers (so a
    DICOM round trip is exact), 0 outside the brain.
    """
    ijk = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    brain = sum((world[i] / BRAIN_SEMI_AXES_MM[i]) ** 2 for i in range(3)) <= 1.0
    r = np.sqrt(sum((world[i] - tumour_mm[i]) ** 2 for i in range(3)))
    label = np.zeros(shape, np.uint8)
    label[(r <= 12.0) & brain] = 1
    label[r <= 7.0] = 2
    label[(r <= 7.0) & (r > 4.0)] = 3
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.float32)
    for c in range(4):
        chan = BASE[c] + noise * rng.standard_normal(shape)
        for lab, deltas in BUMPS.items():
            chan[label == lab] += deltas[c]
        image[c] = np.where(brain, np.round(100 * chan), 0.0)
    return ScalarImage(image, affine), LabelMap(label, affine)
