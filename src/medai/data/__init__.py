"""Datasets: the manifest, importers, checks, splits and a quick look at a case."""

from medai.data.check import Anomaly, AnomalyKind, CheckReport, check_dataset, robust_z
from medai.data.derive import slice_dataset, target_dataset, tumour_location
from medai.data.importers import (
    attach_clinical,
    import_brats,
    import_msd,
    import_nnunet_raw,
)
from medai.data.importers_dicom import import_dicom_annotations
from medai.data.importers_tabular import (
    import_class_folders,
    import_csv,
    import_dataset,
    import_deephealth_yaml,
    import_medmnist_npz,
)
from medai.data.manifest import SPLIT_NAMES, Case, Dataset, Split, Splits, TaskType, region_masks
from medai.data.semantics import (
    BRATS2021_LABELS,
    BRATS2021_REGIONS,
    MSD_BRAIN_REGIONS,
    brain_tumour_regions,
    resolve_regions,
)
from medai.data.show import Overlay, render_case_png
from medai.data.split import split_dataset

__all__ = [
    "BRATS2021_LABELS",
    "BRATS2021_REGIONS",
    "MSD_BRAIN_REGIONS",
    "SPLIT_NAMES",
    "Anomaly",
    "AnomalyKind",
    "Case",
    "CheckReport",
    "Dataset",
    "Overlay",
    "Split",
    "Splits",
    "TaskType",
    "attach_clinical",
    "brain_tumour_regions",
    "check_dataset",
    "import_brats",
    "import_class_folders",
    "import_csv",
    "import_dataset",
    "import_deephealth_yaml",
    "import_dicom_annotations",
    "import_medmnist_npz",
    "import_msd",
    "import_nnunet_raw",
    "region_masks",
    "render_case_png",
    "resolve_regions",
    "robust_z",
    "slice_dataset",
    "split_dataset",
    "target_dataset",
    "tumour_location",
]
