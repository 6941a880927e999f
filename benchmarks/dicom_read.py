"""Reading a DICOM series: medai's ``read_dicom_series`` against SimpleITK's ``ImageSeriesReader``.

Two 200-slice 512 × 512 series are written by medai's own ``write_dicom_series``
(uncompressed, explicit VR little endian): a CT with integer Hounsfield units (rescale
slope 1) and an MR with real-valued intensities (a non-trivial rescale slope and
intercept). Both readers read the same files, from a warm page cache (one untimed read
each first), alternating, ``--repeats`` times. Timed for SimpleITK: finding the files
of the series (``GetGDCMSeriesFileNames``), ``Execute`` and a numpy view of the voxels;
for medai: ``read_dicom_series`` on the folder (discovery, header checks, geometry
checks, decoding, rescaling to float32).

Agreement, checked on every series before timing: the voxels (SimpleITK's values
against medai's, after rescaling; exact for CT, within float32 rounding for MR) and the
RAS+ affine built from SimpleITK's origin, spacing and direction (to 1e-4 mm).

Usage (one dedicated core, one thread, for published figures)::

    flock /tmp/medai_bench.lock taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/dicom_read.py --json read.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813
from numpy.typing import NDArray

import medai
from medai.image import ScalarImage
from medai.io import read_dicom_series, write_dicom_series
from medai.io.dicom_geometry import LPS_TO_RAS


def make_series(root: Path, *, slices: int, size: int) -> dict[str, Path]:
    """Write the CT and MR test series under ``root``; return their folders."""
    rng = np.random.default_rng(0)
    affine = np.array(
        [
            [-0.7, 0.0, 0.0, 180.0],
            [0.0, -0.7, 0.0, 170.0],
            [0.0, 0.0, 1.25, -120.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    ct = rng.integers(-1024, 2000, (size, size, slices)).astype(np.int16)
    mr = rng.gamma(2.0, 150.0, (size, size, slices)).astype(np.float32)
    folders = {}
    for name, data in (("CT", ct), ("MR", mr)):
        folder = root / name
        write_dicom_series(
            ScalarImage(data, affine),
            folder,
            modality=name,
            patient_id="BENCH",
            patient_name="Bench^Read",
            study_date="20260101",
        )
        folders[name] = folder
    return folders


def read_sitk(folder: Path, *, copy: bool = False) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """SimpleITK's series read: voxels ``(z, y, x)`` and the RAS+ affine.

    Without ``copy`` the voxels are a view valid only while SimpleITK's image lives
    (enough for timing: the view costs nothing, as medai's array is ready to use).
    """
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    image = reader.Execute()
    voxels = sitk.GetArrayFromImage(image) if copy else sitk.GetArrayViewFromImage(image)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return voxels, LPS_TO_RAS @ lps


def read_medai(folder: Path) -> ScalarImage:
    return read_dicom_series(folder)


def check_agreement(folder: Path) -> dict[str, float]:
    """Largest voxel and affine differences between the two readers (raises if too large)."""
    voxels, affine = read_sitk(folder, copy=True)
    image = read_medai(folder)
    theirs = np.asarray(voxels, dtype=np.float64).transpose(2, 1, 0)
    ours = image.array[0].astype(np.float64)
    if ours.shape != theirs.shape:
        raise SystemExit(f"{folder}: shapes differ: medai {ours.shape}, SimpleITK {theirs.shape}")
    voxel_diff = float(np.max(np.abs(ours - theirs)))
    scale = max(float(np.max(np.abs(theirs))), 1.0)
    affine_diff = float(np.max(np.abs(image.affine - affine)))
    if voxel_diff > 1e-6 * scale or affine_diff > 1e-4:
        raise SystemExit(
            f"{folder}: readers disagree: voxels by {voxel_diff:g}, affine by {affine_diff:g} mm"
        )
    return {"max_voxel_diff": voxel_diff, "max_affine_diff_mm": affine_diff}


def _time(fn: Callable[[Path], Any], folder: Path) -> float:
    start = time.perf_counter()
    fn(folder)
    return time.perf_counter() - start


def _summary(seconds: list[float]) -> dict[str, float]:
    q1, median, q3 = np.percentile(seconds, [25, 50, 75])
    return {"median_s": float(median), "q1_s": float(q1), "q3_s": float(q3), "n": len(seconds)}


def bench(folder: Path, repeats: int) -> dict[str, Any]:
    """Alternate medai and SimpleITK reads of ``folder``; median and IQR of each."""
    readers = {"medai": read_medai, "simpleitk": read_sitk}
    for fn in readers.values():  # warm page cache and imports
        fn(folder)
    times: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, fn in readers.items():
            times[name].append(_time(fn, folder))
    result: dict[str, Any] = {name: _summary(values) for name, values in times.items()}
    ratios = [m / s for m, s in zip(times["medai"], times["simpleitk"], strict=True)]
    result["ratio_median"] = result["medai"]["median_s"] / result["simpleitk"]["median_s"]
    result["ratio_paired_median"] = float(statistics.median(ratios))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--workdir", type=Path, help="where to write the series (kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="medai_dicom_read_"))
    try:
        folders = make_series(root, slices=args.slices, size=args.size)
        report: dict[str, Any] = {
            "medai": medai.__version__,
            "simpleitk": sitk.Version_VersionString(),
            "python": platform.python_version(),
            "slices": args.slices,
            "size": args.size,
            "repeats": args.repeats,
            "series": {},
        }
        for name, folder in folders.items():
            entry = {"agreement": check_agreement(folder), **bench(folder, args.repeats)}
            report["series"][name] = entry
            m, s = entry["medai"], entry["simpleitk"]
            print(
                f"{name}: medai {m['median_s']:.3f} s (IQR {m['q1_s']:.3f}-{m['q3_s']:.3f}), "
                f"SimpleITK {s['median_s']:.3f} s (IQR {s['q1_s']:.3f}-{s['q3_s']:.3f}), "
                f"medai/SimpleITK {entry['ratio_median']:.2f}x "
                f"(paired median {entry['ratio_paired_median']:.2f}x); "
                f"max voxel diff {entry['agreement']['max_voxel_diff']:.3g}, "
                f"max affine diff {entry['agreement']['max_affine_diff_mm']:.2g} mm"
            )
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
