"""Benchmark: medai radiomics against PyRadiomics and MIRP on the same tumour ROIs.

Each tool runs in a subprocess under its own interpreter (peers in venvs under /tmp,
built by ``benchmarks/setup_radiomics_peers.sh``), single-threaded, on the same 3D NIfTI
image/mask pairs with the same settings (``CONFIGS``):

- ``plain``: no resampling, no re-segmentation, fixed bin number 32 — all three tools,
  timed over ``--repeats`` runs per ROI.
- the interpolation configs (MIRP only; PyRadiomics does not align grids as IBSI
  does): 2 mm isotropic resampling with trilinear or tricubic spline interpolation, the
  ROI mask interpolated linearly and kept at ≥ 0.5, intensities rounded, a
  re-segmentation range and/or 3σ outlier filtering, fixed bin size or number. MIRP
  runs with ``no_approximation=True`` and without anti-aliasing.

Agreement per shared feature: relative difference ``|a − b| / max(|a|, |b|)`` per ROI,
reported as the median and the worst ROI; NaN values are counted per tool and feature
and never dropped silently (a NaN on one side only is a disagreement). Speed: per ROI
the median of the repeats; per tool the median and IQR over ROIs; per peer the
geometric mean of the per-ROI time ratios with a 95 % t-interval on their logarithms.

Usage (project venv; published timings on one dedicated core, one thread)::

    .venv/bin/medai synth glioma /tmp/cohort15 --cases 10 --spacing 1.5 --seed 0
    flock /tmp/medai_bench.lock taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/radiomics_vs_peers.py --cohort /tmp/cohort15 --json out.json
    .venv/bin/python benchmarks/radiomics_vs_peers.py --blobs 4   # no cohort needed
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

HERE = Path(__file__).resolve().parent
WORKER = HERE / "radiomics_peer_workers.py"
PEER_PYTHON = {
    "pyradiomics": "/tmp/peer_pyrad/bin/python",
    "mirp": "/tmp/peer_mirp/bin/python",
}
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)

# -- name maps: medai (IBSI) name -> peer name ---------------------------------------------
_PYRAD_CLASSES: dict[str, tuple[str, str, dict[str, str]]] = {
    "shape": ("morph", "", {
        "MeshVolume": "volume", "VoxelVolume": "vol_approx", "SurfaceArea": "area_mesh",
        "SurfaceVolumeRatio": "av", "Sphericity": "sphericity", "Maximum3DDiameter": "diam",
        "MajorAxisLength": "pca_major", "MinorAxisLength": "pca_minor",
        "LeastAxisLength": "pca_least", "Elongation": "pca_elongation",
        "Flatness": "pca_flatness",
    }),
    "firstorder": ("stat", "", {
        "Mean": "mean", "Variance": "var", "Skewness": "skew", "Kurtosis": "kurt",
        "Median": "median", "Minimum": "min", "10Percentile": "p10", "90Percentile": "p90",
        "Maximum": "max", "InterquartileRange": "iqr", "Range": "range",
        "MeanAbsoluteDeviation": "mad", "RobustMeanAbsoluteDeviation": "rmad",
        "Energy": "energy", "RootMeanSquared": "rms",
    }),
    "glcm": ("glcm", "_3d_avg", {
        "Autocorrelation": "auto_corr", "JointAverage": "joint_avg",
        "ClusterProminence": "clust_prom", "ClusterShade": "clust_shade",
        "ClusterTendency": "clust_tend", "Contrast": "contrast", "Correlation": "corr",
        "DifferenceAverage": "diff_avg", "DifferenceEntropy": "diff_entr",
        "DifferenceVariance": "diff_var", "JointEnergy": "energy", "JointEntropy": "joint_entr",
        "Imc1": "info_corr1", "Imc2": "info_corr2", "Idm": "inv_diff_mom",
        "Idmn": "inv_diff_mom_norm", "Id": "inv_diff", "Idn": "inv_diff_norm",
        "InverseVariance": "inv_var", "MaximumProbability": "joint_max",
        "SumEntropy": "sum_entr", "SumSquares": "joint_var",
    }),
    "glrlm": ("glrlm", "_3d_avg", {
        "ShortRunEmphasis": "sre", "LongRunEmphasis": "lre", "GrayLevelNonUniformity": "glnu",
        "GrayLevelNonUniformityNormalized": "glnu_norm", "RunLengthNonUniformity": "rlnu",
        "RunLengthNonUniformityNormalized": "rlnu_norm", "RunPercentage": "r_perc",
        "GrayLevelVariance": "gl_var", "RunVariance": "rl_var", "RunEntropy": "rl_entr",
        "LowGrayLevelRunEmphasis": "lgre", "HighGrayLevelRunEmphasis": "hgre",
        "ShortRunLowGrayLevelEmphasis": "srlge", "ShortRunHighGrayLevelEmphasis": "srhge",
        "LongRunLowGrayLevelEmphasis": "lrlge", "LongRunHighGrayLevelEmphasis": "lrhge",
    }),
    "glszm": ("glszm", "_3d", {
        "SmallAreaEmphasis": "sze", "LargeAreaEmphasis": "lze", "GrayLevelNonUniformity": "glnu",
        "GrayLevelNonUniformityNormalized": "glnu_norm", "SizeZoneNonUniformity": "zsnu",
        "SizeZoneNonUniformityNormalized": "zsnu_norm", "ZonePercentage": "z_perc",
        "GrayLevelVariance": "gl_var", "ZoneVariance": "zs_var", "ZoneEntropy": "zs_entr",
        "LowGrayLevelZoneEmphasis": "lgze", "HighGrayLevelZoneEmphasis": "hgze",
        "SmallAreaLowGrayLevelEmphasis": "szlge", "SmallAreaHighGrayLevelEmphasis": "szhge",
        "LargeAreaLowGrayLevelEmphasis": "lzlge", "LargeAreaHighGrayLevelEmphasis": "lzhge",
    }),
    "ngtdm": ("ngtdm", "_3d", {
        "Coarseness": "coarseness", "Contrast": "contrast", "Busyness": "busyness",
        "Complexity": "complexity", "Strength": "strength",
    }),
    "gldm": ("ngldm", "_3d", {
        "SmallDependenceEmphasis": "lde", "LargeDependenceEmphasis": "hde",
        "GrayLevelNonUniformity": "glnu", "DependenceNonUniformity": "dcnu",
        "DependenceNonUniformityNormalized": "dcnu_norm", "GrayLevelVariance": "gl_var",
        "DependenceVariance": "dc_var", "DependenceEntropy": "dc_entr",
        "LowGrayLevelEmphasis": "lgce", "HighGrayLevelEmphasis": "hgce",
        "SmallDependenceLowGrayLevelEmphasis": "ldlge",
        "SmallDependenceHighGrayLevelEmphasis": "ldhge",
        "LargeDependenceLowGrayLevelEmphasis": "hdlge",
        "LargeDependenceHighGrayLevelEmphasis": "hdhge",
    }),
}  # fmt: skip
# PyRadiomics discretised first-order features live in IBSI's histogram family.
_PYRAD_EXTRA = {
    "original_firstorder_Entropy": "ih_entropy",
    "original_firstorder_Uniformity": "ih_uniformity",
}
# Documented PyRadiomics convention differences, corrected before comparing.
_PYRAD_ADJUST = {"stat_kurt": -3.0}  # PyRadiomics reports kurtosis, IBSI excess kurtosis.

_MIRP_PREFIX = {
    "cm": "glcm",
    "rlm": "glrlm",
    "szm": "glszm",
    "dzm": "gldzm",
    "ngt": "ngtdm",
    "ngl": "ngldm",
}
_MIRP_MORPH = {
    "vol_dens_conv_hull": "v_dens_conv_hull", "area_dens_conv_hull": "a_dens_conv_hull",
    "vol_dens_aabb": "v_dens_aabb", "area_dens_aabb": "a_dens_aabb",
    "vol_dens_aee": "v_dens_aee", "area_dens_aee": "a_dens_aee",
    "pca_maj_axis": "pca_major", "pca_min_axis": "pca_minor", "pca_least_axis": "pca_least",
}  # fmt: skip


def pyradiomics_name_map() -> dict[str, str]:
    """medai feature name -> PyRadiomics feature name."""
    out = {ibsi: pyrad for pyrad, ibsi in _PYRAD_EXTRA.items()}
    for cls, (family, suffix, names) in _PYRAD_CLASSES.items():
        for pyrad, ibsi in names.items():
            out[f"{family}_{ibsi}{suffix}"] = f"original_{cls}_{pyrad}"
    return out


def mirp_to_medai(name: str) -> str:
    """MIRP column name -> medai name (drops distance/bin tags, renames families)."""
    name = re.sub(r"_fbn_n\d+$|_fbs_w[\d.]+$", "", name)
    name = re.sub(r"_d1(?=_)|_a0\.0(?=_)", "", name).replace("_3d_v_mrg", "_3d_mrg")
    prefix, _, rest = name.partition("_")
    if prefix == "morph":
        return "morph_" + _MIRP_MORPH.get(rest, rest)
    return f"{_MIRP_PREFIX.get(prefix, prefix)}_{rest}"


# -- configs ---------------------------------------------------------------------------
_RANGE = [250.0, 1000.0]  # re-segmentation range (synthetic T1-Gd units)
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"discretisation": "fbn", "bin_number": 32},
    # like IBSI chapter 1 configs C, D and E, on MR-like intensities
    "lin_round_range_fbs": {
        "spacing": 2.0, "order": 1, "round": True, "range": _RANGE,
        "discretisation": "fbs", "bin_width": 25.0,
    },
    "lin_outlier_fbn": {"spacing": 2.0, "order": 1, "sigma": 3.0, "discretisation": "fbn",
                        "bin_number": 32},
    "cubic_round_range_outlier_fbn": {
        "spacing": 2.0, "order": 3, "round": True, "range": _RANGE, "sigma": 3.0,
        "discretisation": "fbn", "bin_number": 32,
    },
}  # fmt: skip


# -- ROIs ------------------------------------------------------------------------------
def _save_pair(
    folder: Path, name: str, image: np.ndarray, mask: np.ndarray, affine: np.ndarray
) -> dict[str, Any]:
    img_path, mask_path = folder / f"{name}_image.nii.gz", folder / f"{name}_mask.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), img_path)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_path)
    spacing = [round(float(v), 3) for v in np.linalg.norm(affine[:3, :3], axis=0)]
    return {
        "name": name,
        "image": str(img_path),
        "mask": str(mask_path),
        "voxels": int(mask.sum()),
        "spacing": spacing,
    }


def cohort_rois(
    cohort: Path, folder: Path, *, cases: int, channel: int, anisotropic: bool
) -> list[dict[str, Any]]:
    """Whole-tumour ROIs (label > 0) on one MR channel of a ``medai synth glioma`` cohort.

    ``anisotropic`` keeps every second slice along the third axis (e.g. 1.5 × 1.5 × 3 mm).
    """
    datasets = sorted(cohort.glob("**/dataset.json"))
    if not datasets:
        raise SystemExit(f"--cohort {cohort}: no dataset.json found (run medai synth glioma first)")
    task = datasets[0].parent
    entries = json.loads(datasets[0].read_text())["training"][:cases]
    rois = []
    for entry in entries:
        img = nib.load(task / entry["image"])
        lab = np.asarray(nib.load(task / entry["label"]).dataobj)
        data = np.asarray(img.dataobj)
        data = data[..., channel] if data.ndim == 4 else data
        affine = img.affine.copy()
        if anisotropic:
            data, lab = data[:, :, ::2], lab[:, :, ::2]
            affine[:3, 2] *= 2.0
        name = Path(entry["image"]).name.split(".")[0]
        rois.append(_save_pair(folder, name, data, lab > 0, affine))
    return rois


def blob_rois(folder: Path, *, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Textured ellipsoids at 1.5 mm: a stand-in when no cohort is at hand."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    grid = np.indices((60, 60, 52)).astype(np.float64)
    rois = []
    for k in range(count):
        radii = rng.uniform(8.0, 18.0, 3)
        centre = np.array([30.0, 30.0, 26.0]) + rng.uniform(-3, 3, 3)
        dist = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
        texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.shape[1:]), 1.5)
        image = 600.0 + 200.0 * texture / texture.std() + 80.0 * (dist < 0.4)
        rois.append(_save_pair(folder, f"blob_{k:02d}", np.round(image), dist <= 1.0, affine))
    return rois


# -- running tools ---------------------------------------------------------------------
def run_tool(
    tool: str,
    python: str,
    rois: list[dict[str, Any]],
    config: dict[str, Any],
    repeats: int,
    folder: Path,
) -> dict[str, Any]:
    """Run one tool's worker in a subprocess and return its per-ROI results."""
    job, out = folder / f"job_{tool}.json", folder / f"out_{tool}.json"
    job.write_text(json.dumps({"rois": rois, "config": config, "repeats": repeats}))
    env = {**os.environ, **{var: "1" for var in THREAD_VARS}}
    proc = subprocess.run(
        [python, str(WORKER), tool, str(job), str(out)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{tool} worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


# -- agreement -------------------------------------------------------------------------
def _rel_diff(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale < 1e-12 else abs(a - b) / scale


def compare_feature(
    medai: dict[str, Any], peer: dict[str, Any], ours: str, theirs: str, shift: float
) -> dict[str, Any]:
    """Per-ROI agreement of one feature: median, worst ROI and NaN counts (none dropped)."""
    diffs: dict[str, float] = {}
    nan = {"both": 0, "medai": 0, "peer": 0}
    for roi, res in medai.items():
        mine = res["features"].get(ours)
        other = peer.get(roi, {}).get("features", {}).get(theirs)
        if mine is None and other is None:
            nan["both"] += 1
        elif mine is None or other is None:
            nan["medai" if mine is None else "peer"] += 1
        else:
            diffs[roi] = _rel_diff(mine, other + shift)
    worst_roi = max(diffs, key=lambda r: diffs[r]) if diffs else None
    return {
        "pairs": len(diffs),
        "median": statistics.median(diffs.values()) if diffs else math.nan,
        "worst": diffs[worst_roi] if worst_roi else math.nan,
        "worst_roi": worst_roi,
        "nan": nan,
    }


def agreement(
    medai: dict[str, Any], peer: dict[str, Any], mapping: dict[str, str], adjust: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Agreement of every feature both tools report (medai names)."""
    first_medai = next(iter(medai.values()))["features"]
    first_peer = next(iter(peer.values()))["features"]
    return {
        ours: compare_feature(medai, peer, ours, theirs, adjust.get(ours, 0.0))
        for ours, theirs in mapping.items()
        if ours in first_medai and theirs in first_peer
    }


def nan_counts(results: dict[str, Any]) -> dict[str, int]:
    """ROIs on which each feature of one tool is NaN (features never NaN left out)."""
    counts: dict[str, int] = {}
    for res in results.values():
        for name, value in res["features"].items():
            if value is None:
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# -- speed -----------------------------------------------------------------------------
def speed(results: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Median and IQR over ROIs of per-ROI median times; ratio to ``base`` with a 95 % CI."""
    per_roi = {roi: statistics.median(r["seconds"]) for roi, r in results.items()}
    spread = [
        float(np.subtract(*np.percentile(r["seconds"], [75, 25]))) / per_roi[roi]
        for roi, r in results.items()
    ]
    q1, q3 = np.percentile(list(per_roi.values()), [25, 75])
    logs = np.log([per_roi[roi] / statistics.median(base[roi]["seconds"]) for roi in per_roi])
    half = (
        stats.t.ppf(0.975, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size)
        if logs.size > 1
        else math.nan
    )
    return {
        "median_s": statistics.median(per_roi.values()),
        "iqr_s": [float(q1), float(q3)],
        "repeat_iqr_rel_median": statistics.median(spread),
        "ratio_geomean": float(np.exp(logs.mean())),
        "ratio_ci95": [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))],
        "ratio_range": [float(np.exp(logs.min())), float(np.exp(logs.max()))],
        "features": int(statistics.median(len(r["features"]) for r in results.values())),
        "repeats": len(next(iter(results.values()))["seconds"]),
    }


# -- report ----------------------------------------------------------------------------
def _mapping(tool: str, res: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    if tool == "pyradiomics":
        return pyradiomics_name_map(), _PYRAD_ADJUST
    names = next(iter(res.values()))["features"]
    return {mirp_to_medai(n): n for n in names}, {}


def _print_speed(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {tool: speed(res, results["medai"]) for tool, res in results.items()}
    reps = out["medai"]["repeats"]
    print(f"seconds per ROI (read + extract, 1 thread, median of {reps} runs per ROI)")
    print(f"{'tool':<12}{'median s':>9}{'IQR (ROIs)':>16}{'repeat IQR':>11}{'features':>9}"
          f"{'time vs medai [95% CI] (range)':>36}")  # fmt: skip
    for tool, sp in out.items():
        ci, rng = sp["ratio_ci95"], sp["ratio_range"]
        ratio = f"{sp['ratio_geomean']:.2f}x [{ci[0]:.2f}-{ci[1]:.2f}] ({rng[0]:.2f}-{rng[1]:.2f})"
        iqr = f"{sp['iqr_s'][0]:.3f}-{sp['iqr_s'][1]:.3f}"
        rep = 100 * sp["repeat_iqr_rel_median"]
        print(f"{tool:<12}{sp['median_s']:>9.3f}{iqr:>16}{rep:>10.1f}%{sp['features']:>9d}"
              f"{ratio:>36}")  # fmt: skip
    return out


def _print_agreement(tool: str, agree: dict[str, dict[str, Any]], mapping: dict[str, str]) -> None:
    worst = [a["worst"] for a in agree.values() if a["pairs"]]
    med = [a["median"] for a in agree.values() if a["pairs"]]
    one_sided = {k: a["nan"] for k, a in agree.items() if a["nan"]["medai"] or a["nan"]["peer"]}
    both = {k: a["nan"]["both"] for k, a in agree.items() if a["nan"]["both"]}
    print(f"\nmedai vs {tool}: {len(agree)} shared features")
    for label, values in (("median over ROIs", med), ("worst ROI", worst)):
        counts = [sum(v <= tol for v in values) for tol in (1e-6, 1e-3, 0.01, 0.05)]
        print(f"  {label:<17} <=1e-6: {counts[0]}, <=0.1%: {counts[1]}, <=1%: {counts[2]}, "
              f"<=5%: {counts[3]} (of {len(values)} with a finite pair)")  # fmt: skip
    print(f"  NaN on both sides: {both or 'none'}; on one side only: {one_sided or 'none'}")
    for name, a in sorted(agree.items(), key=lambda kv: -np.nan_to_num(kv[1]["worst"])):
        if not a["worst"] > 1e-6:
            break
        print(f"  {name:<34} median {100 * a['median']:>8.4f}%  worst {100 * a['worst']:>8.4f}% "
              f"({a['worst_roi']})  [{mapping[name]}]")  # fmt: skip


def report(results: dict[str, dict[str, Any]], config_name: str, timed: bool) -> dict[str, Any]:
    """Print speed, agreement and NaN tables of one config; return them as a dict."""
    print(f"\n=== config {config_name}: {json.dumps(CONFIGS[config_name])}")
    summary: dict[str, Any] = {"config": CONFIGS[config_name], "agreement": {}, "nan": {}}
    if timed:
        summary["speed"] = _print_speed(results)
    for tool, res in results.items():
        summary["nan"][tool] = nan_counts(res)
        print(f"NaN features of {tool}: {summary['nan'][tool] or 'none'}")
    for tool, res in results.items():
        if tool == "medai":
            continue
        mapping, adjust = _mapping(tool, res)
        agree = agreement(results["medai"], res, mapping, adjust)
        summary["agreement"][tool] = agree
        _print_agreement(tool, agree, mapping)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, help="output folder of `medai synth glioma`")
    parser.add_argument("--cases", type=int, default=10, help="ROIs taken from the cohort")
    parser.add_argument("--channel", type=int, default=2, help="MR channel (2 = T1-Gd)")
    parser.add_argument("--anisotropic", action="store_true", help="every 2nd slice (z × 2)")
    parser.add_argument("--blobs", type=int, default=4, help="synthetic blob ROIs without --cohort")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per ROI (plain)")
    parser.add_argument(
        "--peers", nargs="*", default=["pyradiomics", "mirp"], choices=sorted(PEER_PYTHON)
    )
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args()
    summary: dict[str, Any] = {"configs": {}}
    with tempfile.TemporaryDirectory(prefix="medai_radiomics_bench_") as tmp:
        folder = Path(tmp)
        if args.cohort:
            rois = cohort_rois(
                args.cohort,
                folder,
                cases=args.cases,
                channel=args.channel,
                anisotropic=args.anisotropic,
            )
        else:
            rois = blob_rois(folder, count=args.blobs)
        voxels = [r["voxels"] for r in rois]
        print(f"{len(rois)} ROIs, {min(voxels)}-{max(voxels)} voxels, spacing {rois[0]['spacing']}")
        summary["rois"] = rois
        for name in args.configs:
            timed = name == "plain"
            repeats = args.repeats if timed else 1
            peers = [p for p in args.peers if timed or p == "mirp"]
            results = {"medai": run_tool("medai", sys.executable, rois, CONFIGS[name], repeats,
                                         folder)}  # fmt: skip
            for peer in peers:
                python = PEER_PYTHON[peer]
                if not Path(python).exists():
                    print(
                        f"skip {peer}: {python} missing (bash benchmarks/setup_radiomics_peers.sh)"
                    )
                    continue
                results[peer] = run_tool(peer, python, rois, CONFIGS[name], repeats, folder)
            summary["configs"][name] = report(results, name, timed and repeats > 1)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
