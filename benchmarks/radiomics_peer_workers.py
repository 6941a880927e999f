"""Feature-extraction workers for ``radiomics_vs_peers.py``, one per tool.

Run by each tool's own interpreter (the project venv for medai, the peer venvs under
/tmp for PyRadiomics and MIRP), so it imports only the standard library at module
level::

    python radiomics_peer_workers.py {medai|pyradiomics|mirp} JOB.json OUT.json

JOB.json: ``{"rois": [{"name", "image", "mask"}], "config": {...}, "repeats": 5}``;
images and masks are 3D NIfTI files on the same grid (mask: 1 inside the ROI). The
config says what every tool must do, in tool-neutral words:

- ``spacing``: isotropic voxel size (mm) to resample to, or ``null`` for none. Grids
  are centre-aligned (IBSI); the image is interpolated with a spline of ``order``
  (1 trilinear, 3 tricubic), the ROI mask linearly and kept where it is ≥ 0.5; no
  anti-aliasing filter.
- ``round``: round intensities to integers after interpolation (IBSI, as for CT).
- ``range``: ``[low, high]`` re-segmentation range or ``null``; ``sigma``: outlier
  filtering at mean ± sigma·SD of the ROI, or ``null``.
- ``discretisation``: ``"fbn"`` (``bin_number`` bins) or ``"fbs"`` (``bin_width``,
  from the range's lower bound).

OUT.json maps each ROI name to ``{"seconds": [float per repeat], "features": {name:
value or null}}``. Each time covers reading both files and extracting every feature the
tool offers for the original image; one untimed warm-up call on the first ROI absorbs
import and first-call costs. Features come from the first repeat.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

Extractor = Callable[[str, str], dict[str, float]]


def _clean(values: dict[str, Any]) -> dict[str, float]:
    """Numeric features only, as floats (NaN kept as None for JSON)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = number
    return out


def _is_plain(config: dict[str, Any]) -> bool:
    """True when the config asks for no resampling and no re-segmentation."""
    keys = ("spacing", "range", "sigma")
    return not config.get("round") and all(config.get(k) is None for k in keys)


def medai_extractor(config: dict[str, Any]) -> Extractor:
    """medai, every family, 3D aggregations."""
    from medai.image import LabelMap, ScalarImage
    from medai.io.nifti import read_nifti
    from medai.radiomics import RadiomicsSettings, extract_features

    spacing = config.get("spacing")
    fbn = config["discretisation"] == "fbn"
    settings = RadiomicsSettings(
        discretisation="fixed_bin_number" if fbn else "fixed_bin_size",
        bin_number=int(config.get("bin_number", 32)),
        bin_width=float(config.get("bin_width", 25.0)),
        resample_spacing=None if spacing is None else (spacing, spacing, spacing),
        interpolation_order=int(config.get("order", 1)),
        mask_threshold=0.5,
        round_intensities=bool(config.get("round")),
        resegment_range=None if config.get("range") is None else tuple(config["range"]),
        outlier_sigma=config.get("sigma"),
    )

    def run(image: str, mask: str) -> dict[str, float]:
        img = read_nifti(image, kind=ScalarImage)
        roi = read_nifti(mask, kind=LabelMap)
        return extract_features(img, roi, settings=settings)

    return run


def pyradiomics_extractor(config: dict[str, Any]) -> Extractor:
    """PyRadiomics 3.0.1, original image, every feature class (plain configs only)."""
    if not _is_plain(config) or config["discretisation"] != "fbn":
        raise SystemExit("the PyRadiomics worker runs the plain fixed-bin-number config only")
    import radiomics
    import SimpleITK as sitk  # noqa: N813 (the conventional alias)
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(
        binCount=int(config["bin_number"]), resampledPixelSpacing=None, label=1, force2D=False
    )
    extractor.disableAllImageTypes()
    extractor.enableImageTypeByName("Original")
    extractor.enableAllFeatures()

    def run(image: str, mask: str) -> dict[str, float]:
        result = extractor.execute(sitk.ReadImage(image), sitk.ReadImage(mask), label=1)
        return _clean({k: v for k, v in result.items() if k.startswith("original_")})

    return run


def mirp_options(config: dict[str, Any]) -> dict[str, Any]:
    """MIRP keyword arguments for a tool-neutral config (no approximations)."""
    options: dict[str, Any] = {
        "no_approximation": True,  # exact Moran's I / Geary's C on every ROI
        "base_feature_families": "all",
        "ivh_discretisation_method": "fixed_bin_number",
        "ivh_discretisation_n_bins": 1000,  # IBSI advice for MR; medai default
        "glcm_spatial_method": ["3d_average", "3d_volume_merge"],
        "glrlm_spatial_method": ["3d_average", "3d_volume_merge"],
        "glszm_spatial_method": "3d",
        "gldzm_spatial_method": "3d",
        "ngtdm_spatial_method": "3d",
        "ngldm_spatial_method": "3d",
    }
    if config["discretisation"] == "fbn":
        options["base_discretisation_method"] = "fixed_bin_number"
        options["base_discretisation_n_bins"] = int(config["bin_number"])
    else:
        options["base_discretisation_method"] = "fixed_bin_size"
        options["base_discretisation_bin_width"] = float(config["bin_width"])
    if config.get("spacing") is not None:
        options.update(
            new_spacing=float(config["spacing"]),
            spline_order=int(config.get("order", 1)),
            anti_aliasing=False,  # IBSI chapter 1 interpolates without a pre-filter
            roi_spline_order=1,
            roi_interpolation_mask_inclusion_threshold=0.5,
        )
    if config.get("round"):
        options["image_modality"] = "CT"  # MIRP rounds CT intensities after interpolation
    if config.get("range") is not None:
        options["resegmentation_intensity_range"] = [float(v) for v in config["range"]]
    if config.get("sigma") is not None:
        options["resegmentation_sigma"] = float(config["sigma"])
    return options


def mirp_extractor(config: dict[str, Any]) -> Extractor:
    """MIRP, every base family, 3D averaged + merged texture."""
    logging.disable(logging.INFO)
    from mirp import extract_features

    options = mirp_options(config)

    def run(image: str, mask: str) -> dict[str, float]:
        tables = extract_features(
            image=image, mask=mask, export_features=True, write_features=False, **options
        )
        row = tables[0].iloc[0].to_dict()
        return _clean({k: v for k, v in row.items() if not str(k).startswith("image_")})

    return run


TOOLS: dict[str, Callable[[dict[str, Any]], Extractor]] = {
    "medai": medai_extractor,
    "pyradiomics": pyradiomics_extractor,
    "mirp": mirp_extractor,
}


def main(argv: list[str]) -> int:
    """Extract features for every ROI of a job file and write timings and values."""
    if len(argv) != 4 or argv[1] not in TOOLS:
        sys.stderr.write(f"usage: {argv[0]} {{{'|'.join(TOOLS)}}} JOB.json OUT.json\n")
        return 2
    with open(argv[2], encoding="utf-8") as fh:
        job = json.load(fh)
    run = TOOLS[argv[1]](job["config"])
    rois, repeats = job["rois"], max(int(job.get("repeats", 1)), 1)
    run(rois[0]["image"], rois[0]["mask"])  # warm-up, untimed
    results: dict[str, Any] = {}
    for roi in rois:
        seconds, values = [], {}
        for k in range(repeats):
            start = time.perf_counter()
            out = run(roi["image"], roi["mask"])
            seconds.append(time.perf_counter() - start)
            values = out if k == 0 else values
        features = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        results[roi["name"]] = {"seconds": seconds, "features": features}
    with open(argv[3], "w", encoding="utf-8") as fh:
        json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
