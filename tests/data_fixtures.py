"""Tiny datasets in each supported layout, written into a temporary folder.

Each case is a 4-channel 8×8×6 'head' whose channel ``c`` has the constant value
``100 · (c + 1)`` inside a box plus a little seeded noise, so channel order is
visible from intensities alone, and a label map with values 1, 2, 3 in nested boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medai.image import LabelMap, ScalarImage
from medai.io import write_nifti

SHAPE = (8, 8, 6)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
MSD_CHANNELS = ["FLAIR", "T1w", "t1gd", "T2w"]
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def case_arrays(
    seed: int, *, labels: tuple[int, int, int] = (1, 2, 3)
) -> tuple[np.ndarray, np.ndarray]:
    """``(4, x, y, z)`` image with channel c ≈ 100·(c+1) in the head, and its label."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *SHAPE), np.float32)
    for c in range(4):
        image[c, 1:7, 1:7, 1:5] = 100.0 * (c + 1) + rng.normal(0, 2.0, (6, 6, 4))
    label = np.zeros(SHAPE, np.int16)
    label[2:6, 2:6, 1:5] = labels[0]
    label[3:5, 3:5, 2:4] = labels[1]
    label[3, 3, 2] = labels[2]
    return image, label


def write_msd(
    root: Path, n: int = 6, *, labels: dict[str, str] | None = None, clinical: bool = True
) -> Path:
    """An MSD Task01-style folder with ``n`` cases (BRATS_001 ...) and clinical.csv."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    training = []
    for i in range(1, n + 1):
        image, label = case_arrays(i)
        name = f"BRATS_{i:03d}.nii.gz"
        write_nifti(ScalarImage(image, AFFINE), root / "imagesTr" / name)
        write_nifti(LabelMap(label, AFFINE), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "BRATS",
        "description": "tiny test cohort",
        "modality": {str(i): m for i, m in enumerate(MSD_CHANNELS)},
        "labels": labels or MSD_LABELS,
        "numTraining": n,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    if clinical:
        rows = ["patient_id,age,sex,site,grade"]
        rows += [
            f"BRATS_{i:03d},{40 + i},{'F' if i % 2 else 'M'},{'A' if i <= n // 2 else 'B'},"
            f"{'HGG' if i % 3 else 'LGG'}"
            for i in range(1, n + 1)
        ]
        (root / "clinical.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
