"""Public entry points: :func:`extract_features` for one ROI, :func:`features_table`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from medai.image import Image, LabelMap
from medai.radiomics.catalogue import family_aggregations, feature_catalogue
from medai.radiomics.glcm import glcm_features
from medai.radiomics.glrlm import glrlm_features
from medai.radiomics.intensity import (
    histogram_features,
    local_intensity_features,
    statistics_features,
)
from medai.radiomics.ivh import ivh_features
from medai.radiomics.morphology import morphology_features
from medai.radiomics.neighbourhood import ngldm_features, ngtdm_features
from medai.radiomics.roi import Roi, prepare_roi
from medai.radiomics.settings import Family, RadiomicsSettings
from medai.radiomics.zones import gldzm_features, glszm_features

__all__ = ["extract_features", "features_table"]

logger = logging.getLogger(__name__)


def _family_values(roi: Roi, family: Family, s: RadiomicsSettings) -> dict[str, float]:
    aggs = tuple(a for a in s.aggregations if a in family_aggregations(family))
    if family is Family.MORPHOLOGY:
        return morphology_features(roi)
    if family is Family.LOCAL_INTENSITY:
        return local_intensity_features(roi, peak_volume_cc=s.peak_volume_cc)
    if family is Family.STATISTICS:
        return statistics_features(roi)
    if family is Family.HISTOGRAM:
        return histogram_features(roi)
    if family is Family.IVH:
        return ivh_features(roi, settings=s)
    if not aggs:
        return {}
    if family is Family.GLCM:
        return glcm_features(roi, aggregations=aggs, distance=s.glcm_distance)
    if family is Family.GLRLM:
        return glrlm_features(roi, aggregations=aggs)
    if family is Family.GLSZM:
        return glszm_features(roi, aggregations=aggs)
    if family is Family.GLDZM:
        return gldzm_features(roi, aggregations=aggs)
    if family is Family.NGTDM:
        return ngtdm_features(roi, aggregations=aggs, distance=s.ngtdm_distance)
    return ngldm_features(roi, aggregations=aggs, distance=s.ngldm_distance, alpha=s.ngldm_alpha)


def extract_features(
    image: Image,
    mask: LabelMap,
    *,
    settings: RadiomicsSettings | None = None,
    labels: int | Sequence[int] | None = None,
) -> dict[str, float]:
    """IBSI chapter 1 features of one region of interest.

    Args:
        image: Intensity image (one channel).
        mask: Label map on the same grid.
        settings: Extraction settings; defaults to :class:`RadiomicsSettings()`.
        labels: Label value(s) forming the ROI; default every label > 0.

    Returns:
        ``{family_feature[_aggregation]: value}`` in catalogue order. A feature that is
        undefined for the ROI (e.g. texture of a single voxel, skewness of a constant
        region) is NaN; see :func:`feature_catalogue` for IBSI codes.

    Raises:
        TypeError: If ``mask`` is not a :class:`LabelMap`.
        GeometryError: If ``mask`` is not on the image grid.
        ValueError: If the ROI is empty, or holds NaN with ``nan_policy="raise"``.

    Example:
        >>> feats = extract_features(image, mask)  # doctest: +SKIP
        >>> feats["morph_volume"]  # doctest: +SKIP
    """
    s = settings or RadiomicsSettings()
    roi = prepare_roi(image, mask, settings=s, labels=labels)
    values: dict[str, float] = {}
    for family in s.families:
        for key, value in _family_values(roi, family, s).items():
            values[f"{family.value}_{key}"] = value
    order = [name for name in feature_catalogue(s.aggregations) if name in values]
    return {name: float(values[name]) for name in order}


def features_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Tidy table, one row per ROI, from feature dictionaries.

    Args:
        rows: Mappings of identifiers (e.g. ``case``, ``label``) and feature values, as
            ``{"case": "c1", **extract_features(...)}``.

    Returns:
        DataFrame with one row per ROI; non-feature columns first. Column metadata
        (IBSI codes, families, aggregations) is in ``df.attrs["features"]``.
    """
    frame = pd.DataFrame([dict(r) for r in rows])
    catalogue = feature_catalogue()
    features = [c for c in frame.columns if c in catalogue]
    ids = [c for c in frame.columns if c not in catalogue]
    frame = frame[ids + features]
    frame.attrs["features"] = {
        name: {
            "ibsi_code": catalogue[name].ibsi_code,
            "family": catalogue[name].family.value,
            "aggregation": catalogue[name].aggregation,
            "aggregation_code": catalogue[name].aggregation_code,
            "ibsi_name": catalogue[name].ibsi_name,
        }
        for name in features
    }
    if frame.empty:
        logger.debug("features_table got no rows")
    return frame
