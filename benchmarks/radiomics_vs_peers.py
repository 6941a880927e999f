"""Benchmark: medai radiomics against PyRadiomics and MIRP on the same tumour ROIs.

Each tool runs in a subprocess under its own interpreter (peers in venvs under /tmp,
built by ``benchmarks/setup_radiomics_peers.sh``), single-threaded, on the same 3D NIfTI
image/mask pairs with the same settings: fixed bin number (default 32), no resampling,
no re-segmentation, 3D texture (GLCM/GLRLM averaged over directions and merged).

Printed: seconds per ROI per tool, the speed ratio peer/medai, and agreement on shared
features (relative difference ``|a − b| / max(|a|, |b|)``, median over ROIs), features
matched by a name map from IBSI-style medai names to PyRadiomics and MIRP names.

Usage (project venv)::

    .venv/bin/medai synth glioma /tmp/cohort --cases 10 --spacing 2 --seed 0
    .venv/bin/python benchmarks/radiomics_vs_peers.py --cohort /tmp/cohort --cases 10
    .venv/bin/python benchmarks/radiomics_vs_peers.py --blobs 4   # no cohort needed
"""

from __future__ import annotations

import argparse
import json
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
from scipy import ndimage

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


# -- ROIs ------------------------------------------------------------------------------
def _save_pair(
    folder: Path, name: str, image: np.ndarray, mask: np.ndarray, affine: np.ndarray
) -> dict[str, str]:
    img_path, mask_path = folder / f"{name}_image.nii.gz", folder / f"{name}_mask.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), img_path)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_path)
    return {"name": name, "image": str(img_path), "mask": str(mask_path)}


def cohort_rois(cohort: Path, folder: Path, *, cases: int, channel: int) -> list[dict[str, str]]:
    """Whole-tumour ROIs (label > 0) on one MR channel of a ``medai synth glioma`` cohort."""
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
        name = Path(entry["image"]).name.split(".")[0]
        rois.append(_save_pair(folder, name, data, lab > 0, img.affine))
    return rois


def blob_rois(folder: Path, *, count: int, seed: int = 0) -> list[dict[str, str]]:
    """Textured ellipsoids at 2 mm: a stand-in when no cohort is at hand."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.indices((48, 48, 40)).astype(np.float64)
    rois = []
    for k in range(count):
        radii = rng.uniform(6.0, 14.0, 3)
        centre = np.array([24.0, 24.0, 20.0]) + rng.uniform(-3, 3, 3)
        dist = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
        texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.shape[1:]), 1.5)
        image = 300.0 + 400.0 * texture / texture.std() + 80.0 * (dist < 0.4)
        rois.append(_save_pair(folder, f"blob_{k:02d}", image, dist <= 1.0, affine))
    return rois


# -- running tools ---------------------------------------------------------------------
def run_tool(
    tool: str, python: str, rois: list[dict[str, str]], bins: int, folder: Path
) -> dict[str, Any]:
    """Run one tool's worker in a subprocess and return its per-ROI results."""
    job, out = folder / f"job_{tool}.json", folder / f"out_{tool}.json"
    job.write_text(json.dumps({"rois": rois, "bin_number": bins}))
    env = {**os.environ, **{var: "1" for var in THREAD_VARS}}
    proc = subprocess.run(
        [python, str(WORKER), tool, str(job), str(out)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{tool} worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def _rel_diff(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return float("nan")
    scale = max(abs(a), abs(b))
    return 0.0 if scale < 1e-12 else abs(a - b) / scale


def agreement(
    medai: dict[str, Any], peer: dict[str, Any], mapping: dict[str, str], adjust: dict[str, float]
) -> dict[str, float]:
    """Median relative difference over ROIs per shared feature (medai name)."""
    out: dict[str, float] = {}
    for ours, theirs in mapping.items():
        diffs = []
        for roi, res in medai.items():
            mine, other = res["features"], peer.get(roi, {}).get("features", {})
            if ours not in mine or theirs not in other:
                continue
            value = (
                other[theirs] if other[theirs] is None else other[theirs] + adjust.get(ours, 0.0)
            )
            diffs.append(_rel_diff(mine[ours], value))
        finite = [d for d in diffs if d == d]
        if finite:
            out[ours] = statistics.median(finite)
    return out


def _timing(results: dict[str, Any]) -> tuple[float, float, int]:
    seconds = [r["seconds"] for r in results.values()]
    n_features = statistics.median(len(r["features"]) for r in results.values())
    return statistics.median(seconds), statistics.fmean(seconds), int(n_features)


def report(results: dict[str, dict[str, Any]], rois: list[dict[str, str]]) -> dict[str, Any]:
    """Print timing and agreement tables; return them as a dict."""
    summary: dict[str, Any] = {"rois": len(rois), "tools": {}, "agreement": {}}
    base = _timing(results["medai"])[0]
    print(f"\n{len(rois)} ROIs; seconds per ROI (read + extract, 1 thread, after one warm-up)")
    print(f"{'tool':<12}{'median s':>10}{'mean s':>10}{'features':>10}{'peer/medai':>12}")
    for tool, res in results.items():
        med, mean, nfeat = _timing(res)
        ratio = med / base if base > 0 else float("nan")
        summary["tools"][tool] = {
            "median_s": med,
            "mean_s": mean,
            "features": nfeat,
            "ratio_vs_medai": ratio,
        }
        print(f"{tool:<12}{med:>10.3f}{mean:>10.3f}{nfeat:>10d}{ratio:>11.1f}x")
    for tool, res in results.items():
        if tool == "medai":
            continue
        if tool == "pyradiomics":
            mapping, adjust = pyradiomics_name_map(), _PYRAD_ADJUST
        else:
            names = next(iter(res.values()))["features"]
            mapping, adjust = {mirp_to_medai(n): n for n in names}, {}
        agree = agreement(results["medai"], res, mapping, adjust)
        summary["agreement"][tool] = agree
        values = sorted(agree.items(), key=lambda kv: -kv[1])
        within = {tol: sum(v <= tol for _, v in values) for tol in (1e-6, 0.01, 0.05)}
        print(
            f"\nagreement medai vs {tool}: {len(values)} shared features; median rel. diff "
            f"<=1e-6: {within[1e-6]}, <=1%: {within[0.01]}, <=5%: {within[0.05]}"
        )
        for name, value in values[:12]:
            if value > 0.01:
                print(f"  {name:<34}{100 * value:>9.2f}%  ({mapping[name]})")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, help="output folder of `medai synth glioma`")
    parser.add_argument("--cases", type=int, default=10, help="ROIs taken from the cohort")
    parser.add_argument("--channel", type=int, default=2, help="MR channel (2 = T1-Gd)")
    parser.add_argument("--blobs", type=int, default=4, help="synthetic blob ROIs without --cohort")
    parser.add_argument("--bin-number", type=int, default=32)
    parser.add_argument(
        "--peers", nargs="*", default=["pyradiomics", "mirp"], choices=sorted(PEER_PYTHON)
    )
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medai_radiomics_bench_") as tmp:
        folder = Path(tmp)
        if args.cohort:
            rois = cohort_rois(args.cohort, folder, cases=args.cases, channel=args.channel)
        else:
            rois = blob_rois(folder, count=args.blobs)
        results = {"medai": run_tool("medai", sys.executable, rois, args.bin_number, folder)}
        for peer in args.peers:
            python = PEER_PYTHON[peer]
            if not Path(python).exists():
                print(f"skip {peer}: {python} missing (bash benchmarks/setup_radiomics_peers.sh)")
                continue
            results[peer] = run_tool(peer, python, rois, args.bin_number, folder)
        summary = report(results, rois)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
