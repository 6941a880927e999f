"""One source of truth for dataset semantics: one dataset.json parser, one region rule.

A 4-label dataset whose labels are not the brain-tumour labels (liver / vessel / tumour)
must never get the nested WT/TC/ET regions from its label values alone, whichever path
the data takes to the segmentation pipeline; it gets them only when its manifest says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_fixtures import AFFINE, MSD_LABELS, write_msd
from medai.data import (
    BRATS2021_LABELS,
    MSD_BRAIN_REGIONS,
    Dataset,
    brain_tumour_regions,
    import_dataset,
    import_msd,
    resolve_regions,
)
from medai.data.semantics import TumourLabel, tumour_label
from medai.errors import DatasetError
from medai.image import LabelMap
from medai.io import write_nifti
from medai.preprocess import BRATS_REGIONS, as_cohort

LIVER = {"0": "background", "1": "liver", "2": "vessel", "3": "tumour"}
PER_LABEL = {"liver": [1], "vessel": [2], "tumour": [3]}
WT_TC_ET = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


def test_label_names_decide_not_label_values() -> None:
    assert resolve_regions({int(k): v for k, v in MSD_LABELS.items()}) == WT_TC_ET
    assert resolve_regions(BRATS2021_LABELS) == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert resolve_regions({int(k): v for k, v in LIVER.items()}) == PER_LABEL
    # same names, other numbering: not a known brain-tumour layout
    shuffled = {0: "background", 1: "enhancing tumour", 2: "edema", 3: "non-enhancing tumor"}
    assert brain_tumour_regions(shuffled) is None
    assert resolve_regions(shuffled) == {
        "enhancing tumour": [1],
        "edema": [2],
        "non-enhancing tumor": [3],
    }
    # declared regions win over everything
    assert resolve_regions(BRATS2021_LABELS, {"all": [1, 2, 4]}) == {"all": [1, 2, 4]}


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("edema", TumourLabel.OEDEMA),
        ("peritumoural oedema", TumourLabel.OEDEMA),
        ("ED", TumourLabel.OEDEMA),
        ("non-enhancing tumor", TumourLabel.CORE),
        ("necrotic tumour core", TumourLabel.CORE),
        ("NCR/NET", TumourLabel.CORE),
        ("enhancing tumour", TumourLabel.ENHANCING),
        ("ET", TumourLabel.ENHANCING),
        ("tumour", None),
        ("liver", None),
        ("vessel", None),
    ],
)
def test_tumour_label_wordings(name: str, role: TumourLabel | None) -> None:
    assert tumour_label(name) is role


def test_one_constant_for_the_nested_regions() -> None:
    assert BRATS_REGIONS is MSD_BRAIN_REGIONS
    assert MSD_BRAIN_REGIONS == WT_TC_ET


def test_non_brats_msd_folder_gets_no_brats_regions(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "liver", 2, labels=LIVER, clinical=False)
    assert import_msd(root).regions == {}  # the importer declares none
    cohort = as_cohort(root)  # the MSD-folder path to the pipeline
    assert cohort.regions == PER_LABEL
    assert cohort.labels == {0: "background", 1: "liver", 2: "vessel", 3: "tumour"}


def test_non_brats_manifest_gets_regions_only_when_declared(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "liver", 2, labels=LIVER, clinical=False)
    plain = import_msd(root).save(tmp_path / "plain.yaml")
    assert as_cohort(plain).regions == PER_LABEL  # the manifest path
    assert Dataset.load(plain).segmentation_regions() == PER_LABEL
    declared = import_msd(root).model_copy(update={"regions": dict(WT_TC_ET)})
    path = declared.save(tmp_path / "declared.yaml")
    assert as_cohort(path).regions == WT_TC_ET
    assert as_cohort(Dataset.load(path)).regions == WT_TC_ET


def test_brain_tumour_msd_folder_and_manifest_agree(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "brain", 2, clinical=False)
    assert import_msd(root).regions == WT_TC_ET
    assert as_cohort(root).regions == WT_TC_ET
    assert as_cohort(import_msd(root).save(tmp_path / "d.yaml")).regions == WT_TC_ET


def test_folder_with_a_manifest_is_read_through_the_manifest(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "liver", 2, labels=LIVER, clinical=False)
    ds = import_msd(root)
    ds.model_copy(update={"regions": {"lesion": [2, 3]}}).save(root / "dataset.yaml")
    assert import_dataset(root).regions == {"lesion": [2, 3]}
    assert as_cohort(root).regions == {"lesion": [2, 3]}


def test_label_values_outside_the_declared_set_are_a_dataset_error(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "msd", 2, clinical=False)
    label = np.zeros((8, 8, 6), np.int16)
    label[2:4, 2:4, 2:4] = 7
    write_nifti(LabelMap(label, AFFINE), root / "labelsTr" / "BRATS_002.nii.gz")
    cohort = as_cohort(root)
    first = cohort.cases[0].load_label()
    assert first is not None
    assert set(np.unique(first.array)) == {0, 1, 2, 3}
    with pytest.raises(DatasetError, match=r"'BRATS_002'.*holds values \[7\].*declare them"):
        cohort.cases[1].load_label()


def test_unlabelled_cases_are_named_before_training(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "msd", 3, clinical=False)
    ds = import_msd(root)
    cases = [ds.cases[0], ds.cases[1].model_copy(update={"label": None}), ds.cases[2]]
    cohort = as_cohort(ds.model_copy(update={"cases": cases}))
    assert [c.has_label for c in cohort.cases] == [True, False, True]
    cohort.require_labels(["BRATS_001", "BRATS_003"])
    with pytest.raises(DatasetError, match=r"1 case\(s\) have no label, e\.g\. \['BRATS_002'\]"):
        cohort.require_labels(cohort.ids())


def test_classification_dataset_is_not_a_segmentation_cohort(tmp_path: Path) -> None:
    ds = Dataset(name="cls", task="classification", classes=["a", "b"])
    with pytest.raises(DatasetError, match="classification dataset"):
        as_cohort(ds)
    no_labels = Dataset(name="seg", cases=import_msd(write_msd(tmp_path / "m", 1)).cases)
    with pytest.raises(DatasetError, match="declares no foreground label"):
        as_cohort(no_labels)
