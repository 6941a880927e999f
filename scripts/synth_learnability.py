"""Does the synthetic task need learning, and can it be learnt? Two cheap probes.

Usage: .venv/bin/python scripts/synth_learnability.py COHORT_DIR [--train 30]

1. Threshold baseline: per region, the best single channel, direction and threshold
   (each case's brain normalised by its median and IQR) chosen on the first ``--train``
   cases by mean Dice, then applied to the rest.
2. Voxel classifier: gradient-boosted trees on the four normalised channels and their
   Gaussian-smoothed versions (sigma 1 and 2.5 voxels: a little context), trained on
   sampled voxels of the training cases. If trees with this much context reach high
   Dice, a 3D U-Net (which sees far more context) can too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingClassifier

from medai.data.synth.learnability import normalise_brain, threshold_baseline
from medai.image import LabelMap
from medai.io import read_nifti

REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}


def _load(root: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(normalised channels (4, x, y, z), labels, brain mask) per case."""
    cases = []
    for path in sorted((root / "Task01_BrainTumour" / "imagesTr").glob("*.nii.gz")):
        image = read_nifti(path)
        label = read_nifti(str(path).replace("imagesTr", "labelsTr"), kind=LabelMap)
        cases.append(normalise_brain(image, label))
    return cases


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def _features(image: np.ndarray) -> np.ndarray:
    chans = [image[c] for c in range(4)]
    smooth = [ndimage.gaussian_filter(c, s) for c in chans for s in (1.0, 2.5)]
    return np.stack(chans + smooth, axis=-1)


def voxel_classifier(train: list, test: list, *, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for image, label, brain in train:
        feats = _features(image).reshape(-1, 12)
        inside, tumour = np.flatnonzero(brain), np.flatnonzero(label > 0)
        pick = np.concatenate([rng.choice(inside, 20000), rng.choice(tumour, 20000)])
        xs.append(feats[pick])
        ys.append(label.reshape(-1)[pick])
    model = HistGradientBoostingClassifier(max_iter=150, random_state=seed)
    model.fit(np.concatenate(xs), np.concatenate(ys))
    scores: dict[str, list[float]] = {name: [] for name in REGIONS}
    for image, label, brain in test:
        pred = np.zeros(label.shape, dtype=np.uint8)
        pred[brain] = model.predict(_features(image)[brain])
        for name, labels in REGIONS.items():
            scores[name].append(_dice(np.isin(pred, labels), np.isin(label, labels)))
    return {name: float(np.mean(v)) for name, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=30)
    args = parser.parse_args()
    cases = _load(args.root)
    train, test = cases[: args.train], cases[args.train :]
    names = ["FLAIR", "T1w", "t1gd", "T2w"]
    print(f"{len(train)} training cases, {len(test)} test cases")
    for name, rule in threshold_baseline(train, test, REGIONS).items():
        print(
            f"threshold {name}: train Dice {rule.train_dice:.3f}, "
            f"test Dice {rule.test_dice:.3f} ({names[rule.channel]})"
        )
    for name, score in voxel_classifier(train, test).items():
        print(f"voxel classifier {name}: test Dice {score:.3f}")


if __name__ == "__main__":
    main()
