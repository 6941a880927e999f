"""Draw one low-grade case under several tumour looks and an out-of-range scanner.

Usage: .venv/bin/python scripts/figure_synth_looks.py [OUT.png] [--index I] [--seed S]

Every column is the same case (same anatomy, volumes and scanner noise draws); only the
look (or, in the last column, the site ranges) changes. Top: FLAIR; bottom: T1 with the
labels.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from medai.data.synth import Appearance, SiteRanges, generate_case

PLAIN = replace(Appearance.narrow(), oedema_wm_preference=(0.8, 0.8))
LOOKS: dict[str, tuple[Appearance, SiteRanges | None]] = {
    "first generator\n(narrow)": (Appearance.narrow(), SiteRanges.narrow()),
    "FLAIR-dark core\n(0.6 of oedema)": (replace(PLAIN, net_flair=(0.6, 0.6)), None),
    "FLAIR-bright core\n(1.15 of oedema)": (replace(PLAIN, net_flair=(1.15, 1.15)), None),
    "cyst\n(35 % of core)": (replace(PLAIN, cyst=1.0, cyst_share=(0.35, 0.35)), None),
    "infiltrative\n(3 mm margin)": (replace(PLAIN, infiltrative=1.0, margin_mm=(3.0, 3.0)), None),
    "oedema follows\ncortex": (replace(PLAIN, oedema_wm_preference=(0.0, 0.0)), None),
    "multifocal\n(30 % satellite)": (
        replace(PLAIN, multifocal=1.0, satellite_share=(0.3, 0.3)),
        None,
    ),
    "out-of-range site\n(γ > 1.25, 7 mm slices)": (PLAIN, SiteRanges.out_of_range()),
}


def _axial(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice in radiological display: anterior up, patient's left on the right."""
    return np.flipud(volume[:, :, k].T)[:, ::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="docs/img/synth_looks.png", type=Path)
    parser.add_argument("--index", type=int, default=2)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--spacing", type=float, default=2.0)
    args = parser.parse_args()
    fig, axes = plt.subplots(2, len(LOOKS), figsize=(2.6 * len(LOOKS), 6.2), facecolor="black")
    colours = ListedColormap(["#00000000", "#2e8b57", "#ffd700", "#ff3030"])
    k = None
    for col, (title, (look, sites)) in enumerate(LOOKS.items()):
        case = generate_case(
            args.index,
            seed=args.seed,
            spacing=args.spacing,
            grade="LGG",
            appearance=look,
            site_ranges=sites,
        )
        label = case.label.array[0]
        if k is None:  # the slice with the most tumour core, kept for every column
            k = int(np.argmax((label == 2).sum(axis=(0, 1))))
        flair, t1 = _axial(case.image.array[0], k), _axial(case.image.array[1], k)
        axes[0, col].imshow(flair, cmap="gray", vmin=0, vmax=np.percentile(flair[flair > 0], 99.5))
        axes[0, col].set_title(title, color="white", fontsize=9)
        axes[1, col].imshow(t1, cmap="gray", vmin=0, vmax=np.percentile(t1[t1 > 0], 99.5))
        lab = np.ma.masked_equal(_axial(label, k), 0)
        axes[1, col].imshow(lab, cmap=colours, vmin=0, vmax=3, alpha=0.45, interpolation="nearest")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(
        f"one low-grade case (index {args.index}, seed {args.seed}, {args.spacing:g} mm), "
        f"axial slice {k}: FLAIR (top), T1 with labels (bottom; green oedema, yellow core)",
        color="white",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90, facecolor="black")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
