"""Feature-extraction workers for ``radiomics_vs_peers.py``, one per tool.

Run by each tool's own interpreter (the project venv for medai, the peer venvs under
/tmp for PyRadiomics and MIRP), so it imports only the standard library at module
level::

    python radiomics_peer_workers.py {medai|pyradiomics|mirp} JOB.json OUT.json

JOB.json: ``{"rois": [{"name", "image", "mask"}], "bin_number": 32}``; images and masks
are 3D NIfTI files on the same grid (mask: 1 inside the ROI). OUT.json maps each ROI
name to ``{"seconds": float, "features": {name: value}}``. The time covers reading
both files and extracting every feature the tool offers for the original image; one
untimed warm-up call on the first ROI absorbs import and first-call costs.
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


def medai_extractor(bin_number: int) -> Extractor:
    """medai with fixed bin number, every family, 3D aggregations, no resampling."""
    from medai.image import LabelMap, ScalarImage
    from medai.io.nifti import read_nifti
    from medai.radiomics import RadiomicsSettings, extract_features

    settings = RadiomicsSettings(discretisation="fixed_bin_number", bin_number=bin_number)

    def run(image: str, mask: str) -> dict[str, float]:
        img = read_nifti(image, kind=ScalarImage)
        roi = read_nifti(mask, kind=LabelMap)
        return extract_features(img, roi, settings=settings)

    return run


def pyradiomics_extractor(bin_number: int) -> Extractor:
    """PyRadiomics 3.0.1, original image, every feature class, no resampling."""
    import radiomics
    import SimpleITK as sitk  # noqa: N813 (the conventional alias)
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(
        binCount=bin_number, resampledPixelSpacing=None, label=1, force2D=False
    )
    extractor.disableAllImageTypes()
    extractor.enableImageTypeByName("Original")
    extractor.enableAllFeatures()

    def run(image: str, mask: str) -> dict[str, float]:
        result = extractor.execute(sitk.ReadImage(image), sitk.ReadImage(mask), label=1)
        return _clean({k: v for k, v in result.items() if k.startswith("original_")})

    return run


def mirp_extractor(bin_number: int) -> Extractor:
    """MIRP, every base family, 3D averaged + merged texture, no interpolation."""
    logging.disable(logging.INFO)
    from mirp import extract_features

    options: dict[str, Any] = {
        "base_feature_families": "all",
        "base_discretisation_method": "fixed_bin_number",
        "base_discretisation_n_bins": bin_number,
        "ivh_discretisation_method": "fixed_bin_number",
        "ivh_discretisation_n_bins": 1000,  # IBSI advice for MR; medai default
        "glcm_spatial_method": ["3d_average", "3d_volume_merge"],
        "glrlm_spatial_method": ["3d_average", "3d_volume_merge"],
        "glszm_spatial_method": "3d",
        "gldzm_spatial_method": "3d",
        "ngtdm_spatial_method": "3d",
        "ngldm_spatial_method": "3d",
    }

    def run(image: str, mask: str) -> dict[str, float]:
        tables = extract_features(
            image=image, mask=mask, export_features=True, write_features=False, **options
        )
        row = tables[0].iloc[0].to_dict()
        return _clean({k: v for k, v in row.items() if not str(k).startswith("image_")})

    return run


TOOLS: dict[str, Callable[[int], Extractor]] = {
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
    run = TOOLS[argv[1]](int(job["bin_number"]))
    rois = job["rois"]
    run(rois[0]["image"], rois[0]["mask"])  # warm-up, untimed
    results: dict[str, Any] = {}
    for roi in rois:
        start = time.perf_counter()
        values = run(roi["image"], roi["mask"])
        seconds = time.perf_counter() - start
        features = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        results[roi["name"]] = {"seconds": seconds, "features": features}
    with open(argv[3], "w", encoding="utf-8") as fh:
        json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
