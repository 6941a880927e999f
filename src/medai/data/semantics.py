"""What a dataset's labels mean: the brain-tumour regions and the one rule for regions.

Every path from data to a model (importers, :meth:`Dataset.segmentation_regions`, the
segmentation cohort, radiomics) asks :func:`resolve_regions`:

1. regions the manifest declares are used as they are;
2. otherwise the nested WT / TC / ET regions apply only when the label *names* are
   recognisably the brain-tumour labels of MSD Task01 (1 oedema, 2 non-enhancing
   tumour, 3 enhancing tumour) or BraTS 2021 (1 necrotic core, 2 oedema, 4 enhancing);
3. otherwise each foreground label is its own region, named by the label.

Label *values* alone never imply BraTS: a liver dataset labelled 0-3 is not a glioma
dataset (MONAI tutorials #1355 is that mix-up).

Example:
    >>> resolve_regions({0: "background", 1: "liver", 2: "vessel", 3: "tumour"})
    {'liver': [1], 'vessel': [2], 'tumour': [3]}
    >>> resolve_regions({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing"})
    {'WT': [1, 2, 3], 'TC': [2, 3], 'ET': [3]}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "BRATS2021_LABELS",
    "BRATS2021_REGIONS",
    "MSD_BRAIN_REGIONS",
    "TumourLabel",
    "brain_tumour_regions",
    "resolve_regions",
    "tumour_label",
]

#: Nested regions in MSD Task01 numbering (1 oedema, 2 non-enhancing, 3 enhancing).
MSD_BRAIN_REGIONS: dict[str, list[int]] = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
#: Nested regions in BraTS 2021 numbering (1 necrotic core, 2 oedema, 4 enhancing).
BRATS2021_REGIONS: dict[str, list[int]] = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
BRATS2021_LABELS: dict[int, str] = {
    0: "background",
    1: "necrotic tumour core",
    2: "peritumoural oedema",
    4: "enhancing tumour",
}


class TumourLabel(StrEnum):
    """The three brain-tumour sub-regions a label name can denote."""

    OEDEMA = "oedema"
    CORE = "core"  # necrotic and/or non-enhancing tumour core
    ENHANCING = "enhancing"


_MSD_ROLES = {1: TumourLabel.OEDEMA, 2: TumourLabel.CORE, 3: TumourLabel.ENHANCING}
_BRATS_ROLES = {1: TumourLabel.CORE, 2: TumourLabel.OEDEMA, 4: TumourLabel.ENHANCING}


def tumour_label(name: str) -> TumourLabel | None:
    """The brain-tumour sub-region a label name denotes, or ``None``.

    Recognises the MSD and BraTS wordings and abbreviations: "edema", "peritumoural
    oedema", "ED"; "non-enhancing tumor", "necrotic tumour core", "NCR/NET";
    "enhancing tumour", "ET".
    """
    text = " ".join(re.split(r"[\s_\-/]+", name.strip().lower()))
    words = set(text.split())
    if "edema" in text or "oedema" in text or "ed" in words:
        return TumourLabel.OEDEMA
    if (
        "necro" in text
        or "non enhanc" in text
        or "nonenhanc" in text
        or words & {"ncr", "net", "core"}
    ):
        return TumourLabel.CORE
    if "enhanc" in text or "et" in words:
        return TumourLabel.ENHANCING
    return None


def brain_tumour_regions(labels: Mapping[int, str]) -> dict[str, list[int]] | None:
    """WT / TC / ET when ``labels`` name the MSD or BraTS 2021 tumour labels, else ``None``."""
    roles = {int(k): tumour_label(str(v)) for k, v in labels.items() if int(k) != 0}
    if roles == _MSD_ROLES:
        return {k: list(v) for k, v in MSD_BRAIN_REGIONS.items()}
    if roles == _BRATS_ROLES:
        return {k: list(v) for k, v in BRATS2021_REGIONS.items()}
    return None


def resolve_regions(
    labels: Mapping[int, str], declared: Mapping[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """The regions a model is trained and scored on (the rule in this module's docstring).

    Args:
        labels: Declared label values → names (background 0 included or not).
        declared: Regions the manifest declares, if any.

    Returns:
        Region name → label values; empty only when there is no foreground label.
    """
    if declared:
        return {str(k): [int(x) for x in v] for k, v in declared.items()}
    brain = brain_tumour_regions(labels)
    if brain is not None:
        return brain
    regions: dict[str, list[int]] = {}
    for value, name in sorted((int(k), str(v)) for k, v in labels.items()):
        if value == 0:
            continue
        key = name.strip() or f"label_{value}"
        regions[key if key not in regions else f"{key}_{value}"] = [value]
    return regions
