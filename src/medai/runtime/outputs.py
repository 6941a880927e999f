"""DICOM results of a prediction on a DICOM study: a SEG and a TID 1500 SR.

Both reference the series whose grid the label map is on (the first channel's), keep
the study, and carry the bundle's name, version and manifest digest as the algorithm
(so their UIDs are the same when the same bundle segments the same instances again).
"""

from __future__ import annotations

from pathlib import Path

from medai.image import ScalarImage
from medai.inference.study import Prediction
from medai.runtime.bundle import Bundle

__all__ = ["write_dicom_results"]


def write_dicom_results(
    prediction: Prediction, image: ScalarImage, bundle: Bundle, out: str | Path
) -> dict[str, Path]:
    """Write ``<out>_seg.dcm`` and ``<out>_sr.dcm`` when ``image`` was read from DICOM.

    Args:
        prediction: The label map on ``image``'s grid, with region volumes.
        image: The study as :func:`medai.inference.read_study` read it (its ``meta``
            names the DICOM folder and series); NIfTI studies give no DICOM results.
        bundle: The bundle that predicted (algorithm identification).
        out: Path prefix of the two files.

    Returns:
        ``{"seg": path, "sr": path}``, or ``{}`` for a study not read from DICOM.
    """
    folder, series_uid = image.meta.get("source"), image.meta.get("series_uid")
    if not folder or not series_uid:
        return {}
    from medai.io import AlgorithmInfo, SourceSeries, write_seg, write_sr

    source = SourceSeries.load(Path(str(folder)), series_uid=str(series_uid))
    algorithm = AlgorithmInfo(bundle.name[:64], bundle.version[:64], digest=bundle.digest)
    prefix = Path(out)
    seg = write_seg(
        prediction.labels, source, regions=bundle.plan.regions, algorithm=algorithm,
        out_path=prefix.with_name(f"{prefix.name}_seg.dcm"),
    )  # fmt: skip
    sr = write_sr(
        prediction.volumes_ml, source, seg=seg, algorithm=algorithm,
        out_path=prefix.with_name(f"{prefix.name}_sr.dcm"),
    )  # fmt: skip
    return {"seg": seg, "sr": sr}
