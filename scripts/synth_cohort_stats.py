"""Label statistics of a generated cohort, as a markdown table (for docs/synthetic_cohort.md).

Usage: .venv/bin/python scripts/synth_cohort_stats.py COHORT_DIR

Volumes are recomputed from the MSD label files (not taken from clinical.csv), so the
table also checks that the files hold what the generator reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def _volumes(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted((root / "Task01_BrainTumour" / "labelsTr").glob("BRATS_*.nii.gz")):
        img = nib.load(path)
        lab = np.asarray(img.dataobj)
        ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        counts = {k: int((lab == k).sum()) * ml for k in (1, 2, 3)}
        rows.append({"ed": counts[1], "core": counts[2], "et": counts[3]})
    table = pd.DataFrame(rows)
    table["wt"] = table[["ed", "core", "et"]].sum(axis=1)
    return table


def _q(values: pd.Series) -> str:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.0f} [{q1:.0f}–{q3:.0f}] ({values.min():.0f}–{values.max():.0f})"


def _frac(values: pd.Series) -> str:
    return f"{100 * values.mean():.0f} ± {100 * values.std():.0f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    vol = _volumes(args.root)
    clinic = pd.read_csv(args.root / "clinical.csv")
    vol["grade"] = clinic["grade"].to_numpy()
    vol["survival_days"] = clinic["survival_days"].to_numpy()
    vol["event"] = clinic["event"].to_numpy()
    groups = {"all": vol, "HGG": vol[vol.grade == "HGG"], "LGG": vol[vol.grade == "LGG"]}
    print("| | " + " | ".join(f"{k} (n={len(g)})" for k, g in groups.items()) + " |")
    print("|---|" + "---|" * len(groups))
    lines = {
        "WT volume, mL: median [IQR] (range)": lambda g: _q(g.wt),
        "TC volume, mL: median [IQR] (range)": lambda g: _q(g.core + g.et),
        "oedema (label 1) / WT": lambda g: _frac(g.ed / g.wt),
        "necrosis + non-enhancing (label 2) / WT": lambda g: _frac(g.core / g.wt),
        "enhancing (label 3) / WT": lambda g: _frac(g.et / g.wt),
        "cases with any enhancing tumour": lambda g: f"{100 * (g.et > 0).mean():.0f} %",
        "largest enhancing volume, mL": lambda g: f"{g.et.max():.1f}",
        "median survival, days (event rate)": lambda g: (
            f"{g.survival_days.median():.0f} ({100 * g.event.mean():.0f} % deaths)"
        ),
    }
    for name, fn in lines.items():
        print(f"| {name} | " + " | ".join(fn(g) for g in groups.values()) + " |")
    sites = clinic["site"].value_counts().sort_index()
    print()
    print("Cases per site: " + ", ".join(f"{s} {n}" for s, n in sites.items()) + ".")


if __name__ == "__main__":
    main()
