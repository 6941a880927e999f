"""The work behind the job kinds, on images already read: segment, measure, classify.

Each function writes its files into a task's ``out`` folder and returns a
:class:`Result` (outputs relative to ``out``, measurements). DICOM results are made
deterministic: highdicom stamps the current date and time, which this module replaces
with the source series' own content date and time, so a re-run writes the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medai.errors import ConfigError, validation_summary
from medai.fsutil import atomic_path, atomic_write_text
from medai.image import LabelMap, ScalarImage

if TYPE_CHECKING:
    from medai.radiomics import RadiomicsSettings
    from medai.runtime import Bundle, Classifier, Segmenter

__all__ = ["Result", "classify_study", "radiomics_of_seg", "segment_study"]

#: Attributes highdicom sets to "now"; replaced by the source's values (or a fixed epoch).
_DATES = frozenset({"ContentDate", "InstanceCreationDate", "SeriesDate"})
_TIMES = frozenset({"ContentTime", "InstanceCreationTime", "SeriesTime"})
_DATETIMES = frozenset({"ContributionDateTime"})


@dataclass
class Result:
    """What a task produced: output files (relative to ``out``) and measurements."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)

    def add_output(self, out: Path, name: str, kind: str, sop_uid: str | None = None) -> None:
        """Record ``out/name`` (which must exist) as an output of ``kind``."""
        if not (out / name).is_file():
            raise FileNotFoundError(f"output {name} was not written under {out}")
        self.outputs.append({"name": name, "kind": kind, "path": name, "sop_uid": sop_uid})

    def measure(self, name: str, value: float, unit: str = "") -> None:
        """Record one finite number (NaN and infinities are left out: no value)."""
        if math.isfinite(float(value)):
            self.measurements.append({"name": name, "value": float(value), "unit": unit})

    def as_dict(self) -> dict[str, Any]:
        return {"outputs": list(self.outputs), "measurements": list(self.measurements)}


# -- DICOM results ------------------------------------------------------------------------
def _pin_timestamps(path: Path, source: Any) -> str:
    """Replace what highdicom draws at write time in ``path`` (dates, times, the dimension
    organisation UID) by values from the source and the file's own SOPInstanceUID, so a
    re-run writes the same bytes; returns the SOPInstanceUID."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(path)
    date = str(source.get("ContentDate", "") or source.get("StudyDate", "") or "19700101")
    clock = str(source.get("ContentTime", "") or source.get("StudyTime", "") or "000000")
    sop_uid = str(ds.SOPInstanceUID)
    uids: dict[str, str] = {}

    def pin(dataset: Any, element: Any) -> None:
        keyword = element.keyword
        if element.VR == "DA" and keyword in _DATES:
            element.value = date
        elif element.VR == "TM" and keyword in _TIMES:
            element.value = clock
        elif element.VR == "DT" and keyword in _DATETIMES:
            element.value = date + clock
        elif keyword == "DimensionOrganizationUID" and element.value:
            old = str(element.value)
            uids.setdefault(old, generate_uid(entropy_srcs=[sop_uid, "dimensions", str(len(uids))]))
            element.value = uids[old]

    ds.walk(pin)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return sop_uid


def _write_dicom(
    result: Result,
    out: Path,
    image: ScalarImage,
    prediction: Any,
    bundle: Bundle,
    features: Mapping[str, Mapping[str, float]] | None,
) -> None:
    """``seg.dcm`` and ``sr.dcm`` for a study read from DICOM (none for other images)."""
    folder, series_uid = image.meta.get("source"), image.meta.get("series_uid")
    if not folder or not series_uid:
        return
    from medai.io import AlgorithmInfo, SourceSeries, write_seg, write_sr

    source = SourceSeries.load(Path(str(folder)), series_uid=str(series_uid))
    algorithm = AlgorithmInfo(bundle.name[:64], bundle.version[:64], digest=bundle.digest)
    seg = write_seg(
        prediction.labels, source, regions=bundle.plan.regions, algorithm=algorithm,
        out_path=out / "seg.dcm",
    )  # fmt: skip
    uncertainty = prediction.uncertainty
    sr = write_sr(
        prediction.volumes_ml, source, seg=seg, algorithm=algorithm, out_path=out / "sr.dcm",
        features=features or None,
        uncertainty=uncertainty if uncertainty is not None and math.isfinite(uncertainty) else None,
    )  # fmt: skip
    result.add_output(out, "seg.dcm", "seg", _pin_timestamps(seg, source.first))
    result.add_output(out, "sr.dcm", "sr", _pin_timestamps(sr, source.first))


# -- radiomics ----------------------------------------------------------------------------
def _settings(settings: RadiomicsSettings | Mapping[str, Any] | None) -> RadiomicsSettings:
    from pydantic import ValidationError

    from medai.radiomics import RadiomicsSettings

    if isinstance(settings, RadiomicsSettings):
        return settings
    try:
        return RadiomicsSettings.model_validate(dict(settings or {}))
    except ValidationError as error:
        raise ConfigError(f"job option radiomics: {validation_summary(error)}") from error


def _region_features(
    image: ScalarImage, masks: Mapping[str, np.ndarray], settings: RadiomicsSettings
) -> dict[str, dict[str, float]]:
    """IBSI features of ``image`` (one channel) inside each non-empty mask."""
    from medai.radiomics import extract_features

    features: dict[str, dict[str, float]] = {}
    for region, mask in masks.items():
        if not mask.any():
            continue
        label = LabelMap(mask.astype(np.uint8)[None], image.affine)
        features[region] = extract_features(image, label, settings=settings)
    return features


def _write_features(
    result: Result, out: Path, features: Mapping[str, Mapping[str, float]], regions: Sequence[str]
) -> None:
    """``radiomics.csv`` (one row per region, empty regions with status ``empty``) and a
    measurement ``radiomics.<region>.<feature>`` per finite value."""
    names = sorted({name for values in features.values() for name in values})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["region", "status", *names])
    for region in regions:
        values = features.get(region)
        if values is None:
            writer.writerow([region, "empty", *([""] * len(names))])
            continue
        writer.writerow([region, "ok", *(repr(values.get(n, math.nan)) for n in names)])
        for name, value in values.items():
            result.measure(f"radiomics.{region}.{name}", value)
    atomic_write_text(out / "radiomics.csv", buffer.getvalue())
    result.add_output(out, "radiomics.csv", "csv")


def radiomics_of_seg(
    image: ScalarImage,
    segs: Sequence[Path],
    out: Path,
    *,
    settings: RadiomicsSettings | Mapping[str, Any] | None = None,
) -> Result:
    """IBSI features of ``image``'s first channel inside each segment of the DICOM SEG
    file(s) ``segs`` → ``radiomics.csv`` and measurements.

    Raises:
        ValueError: If ``segs`` holds no DICOM SEG.
        GeometryError: If a SEG's frames do not lie on the image's grid.
    """
    from medai.io import read_seg_masks

    chosen = _settings(settings)  # a bad option fails before any work
    masks: dict[str, np.ndarray] = {}
    for path in segs:
        found, _ = read_seg_masks(path, image.channel(0))
        masks.update(found)
    if not segs or not masks:
        raise ValueError("the mask alias holds no DICOM SEG segment; select a SEG series")
    result = Result()
    features = _region_features(image.channel(0), masks, chosen)
    _write_features(result, out, features, list(masks))
    return result


# -- segmentation ---------------------------------------------------------------------------
def segment_study(
    segmenter: Segmenter,
    image: ScalarImage,
    out: Path,
    *,
    tta: bool | None = None,
    radiomics: RadiomicsSettings | Mapping[str, Any] | None = None,
) -> Result:
    """Segment ``image`` (channels in the bundle's order) and write the results.

    Writes ``labels.nii.gz``, ``volumes.json`` (and ``uncertainty.nii.gz`` with TTA),
    ``seg.dcm`` and ``sr.dcm`` for a DICOM study; with ``radiomics`` settings (``{}`` for
    the defaults) also ``radiomics.csv`` of each region on the first channel, whose
    features the SR carries too.
    """
    from medai.inference.study import write_prediction

    bundle = segmenter.loaded
    chosen = None if radiomics is None else _settings(radiomics)  # fails before any work
    prediction = segmenter.predict(image, tta=tta)
    result = Result()
    paths = write_prediction(prediction, out)
    for _, path in sorted(paths.items()):
        result.add_output(out, path.name, "nifti" if path.name.endswith(".nii.gz") else "json")
    for region, volume in prediction.volumes_ml.items():
        result.measure(f"volume_ml.{region}", volume, "mL")
    if prediction.uncertainty is not None:
        result.measure("uncertainty", prediction.uncertainty, "nat")
    features: dict[str, dict[str, float]] | None = None
    if chosen is not None:
        labels = prediction.labels.array[0]
        masks = {r: np.isin(labels, ids) for r, ids in bundle.plan.regions.items()}
        features = _region_features(image.channel(0), masks, chosen)
        _write_features(result, out, features, list(masks))
    _write_dicom(result, out, image, prediction, bundle, features)
    return result


# -- classification -------------------------------------------------------------------------
def classify_study(
    classifier: Classifier, image: ScalarImage, out: Path, *, case_id: str
) -> Result:
    """Classify (or regress) ``image`` → ``prediction.json`` and measurements
    ``probability.<class>`` (classification) or ``prediction`` (regression), and
    ``uncertainty`` when the bundle estimates one."""
    bundle = classifier.loaded
    plan = bundle.plan
    pred = classifier.predict(image, case_id=case_id)
    result = Result()
    output: float | dict[str, float]
    if isinstance(pred.output, tuple):
        output = dict(zip(plan.classes, pred.output, strict=True))
        for name, value in output.items():
            result.measure(f"probability.{name}", value)
    elif pred.decision >= 0:  # binary: the positive (last) class's probability
        output = float(pred.output)
        result.measure(f"probability.{plan.classes[-1]}", output)
    else:
        output = float(pred.output)
        result.measure("prediction", output, plan.classes[0] if plan.classes else "")
    finite = pred.uncertainty == pred.uncertainty
    if finite:
        result.measure("uncertainty", pred.uncertainty)
    doc = {
        "case": case_id,
        "bundle": {"name": bundle.name, "version": bundle.version, "digest": bundle.digest},
        "task": plan.task.value,
        "output": output,
        "decision": pred.decision,
        "decision_label": plan.classes[pred.decision] if pred.decision >= 0 else None,
        "uncertainty": pred.uncertainty if finite else None,
        "uncertainty_method": classifier.uncertainty.value,
        "needs_review": pred.needs_review,
        "logits": list(pred.logits),
    }
    atomic_write_text(out / "prediction.json", json.dumps(doc, indent=2) + "\n")
    result.add_output(out, "prediction.json", "json")
    return result
