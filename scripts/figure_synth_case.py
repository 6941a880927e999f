"""Draw one synthetic glioma case for the README: four contrasts + label overlay.

Usage: .venv/bin/python scripts/figure_synth_case.py [OUT.png] [--index I] [--seed S]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from medai.data.synth import generate_case

TITLES = {
    "FLAIR": "FLAIR\noedema bright, CSF dark",
    "T1w": "T1\ntumour hypo-intense",
    "t1gd": "T1ce (T1gd)\nenhancing rim bright, necrosis dark",
    "T2w": "T2\nCSF and oedema bright",
}


def _axial(volume: np.ndarray, k: int, box: tuple[slice, slice]) -> np.ndarray:
    """Axial slice in radiological display: anterior up, patient's left on the right."""
    return np.flipud(volume[box[0], box[1], k].T)[:, ::-1]


def _brain_box(image: np.ndarray, margin: int = 3) -> tuple[slice, slice]:
    inside = np.argwhere((image > 0).any(axis=(0, 3)))
    lo = np.maximum(inside.min(axis=0) - margin, 0)
    hi = inside.max(axis=0) + margin + 1
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="docs/img/synth_case.png", type=Path)
    parser.add_argument("--index", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=2.0)
    args = parser.parse_args()
    case = generate_case(args.index, seed=args.seed, spacing=args.spacing, grade="HGG")
    label = case.label.array[0]
    # The slice through the most necrosis and enhancement shows the classic ring.
    k = int(np.argmax(case.necrosis.sum(axis=(0, 1)) + 0.5 * (label == 3).sum(axis=(0, 1))))
    channels = case.image.meta["channels"]
    box = _brain_box(case.image.array)
    fig, axes = plt.subplots(1, 5, figsize=(17, 5.0), facecolor="black")
    for ax, (c, name) in zip(axes, enumerate(channels), strict=False):
        sl = _axial(case.image.array[c], k, box)
        ax.imshow(sl, cmap="gray", vmin=0, vmax=np.percentile(sl[sl > 0], 99.5))
        ax.set_title(TITLES[name], color="white", fontsize=10)
    flair = _axial(case.image.array[0], k, box)
    axes[4].imshow(flair, cmap="gray", vmin=0, vmax=np.percentile(flair[flair > 0], 99.5))
    colours = ListedColormap(["#00000000", "#2e8b57", "#ffd700", "#ff3030"])
    lab = np.ma.masked_equal(_axial(label, k, box), 0)
    axes[4].imshow(lab, cmap=colours, vmin=0, vmax=3, alpha=0.55, interpolation="nearest")
    axes[4].set_title(
        "labels on FLAIR: green oedema,\nyellow necrosis/NET, red enhancing",
        color="white",
        fontsize=10,
    )
    for ax in axes:
        ax.axis("off")
    info = case.clinical
    fig.suptitle(
        f"medai synthetic glioma {info['patient_id']} ({info['grade']}, {info['site']}, "
        f"{args.spacing:g} mm): WT {info['wt_ml']:.0f} mL, TC {info['tc_ml']:.0f} mL, "
        f"ET {info['et_ml']:.0f} mL; axial slice {k}",
        color="white",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, facecolor="black")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
