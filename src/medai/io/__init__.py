"""Reading and writing medical images: NIfTI, NRRD/MHA, DICOM, PNG/JPEG/TIFF; DICOM SEG, SR
and secondary-capture results, and SEG / RTSTRUCT annotations.

The DICOM result writers and annotation readers (highdicom, scikit-image, SciPy) are
imported on first use, so reading an image does not pay for them.
"""

from typing import TYPE_CHECKING, Any

from medai._lazy import load_lazy
from medai.io.api import read_image, read_label, write_image
from medai.io.deid import Change, deidentify_dataset
from medai.io.deid_files import DeidReport, deidentify_path
from medai.io.dicom import SeriesInfo, find_series, read_dicom, read_dicom_series
from medai.io.dicom_write import write_dicom_series
from medai.io.itk import read_itk, write_itk
from medai.io.nifti import is_nifti, read_nifti, write_nifti
from medai.io.raster import read_raster, write_png

if TYPE_CHECKING:
    from medai.io.dicom_annotations import (
        AnnotationKind,
        read_rtstruct_masks,
        read_seg_masks,
        referenced_series,
    )
    from medai.io.dicom_derived import AlgorithmInfo, OutputKind, derived_uid
    from medai.io.dicom_sc import write_overlay_sc
    from medai.io.dicom_seg import SegmentCoding, write_seg
    from medai.io.dicom_source import SourceSeries
    from medai.io.dicom_sr import region_volumes_ml, write_sr

#: Public names imported on first use: name -> module.
_LAZY = {
    "AlgorithmInfo": "medai.io.dicom_derived",
    "AnnotationKind": "medai.io.dicom_annotations",
    "OutputKind": "medai.io.dicom_derived",
    "SegmentCoding": "medai.io.dicom_seg",
    "SourceSeries": "medai.io.dicom_source",
    "derived_uid": "medai.io.dicom_derived",
    "read_rtstruct_masks": "medai.io.dicom_annotations",
    "read_seg_masks": "medai.io.dicom_annotations",
    "referenced_series": "medai.io.dicom_annotations",
    "region_volumes_ml": "medai.io.dicom_sr",
    "write_overlay_sc": "medai.io.dicom_sc",
    "write_seg": "medai.io.dicom_seg",
    "write_sr": "medai.io.dicom_sr",
}


def __getattr__(name: str) -> Any:
    """The DICOM result writers and annotation readers, imported when first asked for."""
    return load_lazy(__name__, _LAZY, globals(), name)


__all__ = [
    "AlgorithmInfo",
    "AnnotationKind",
    "Change",
    "DeidReport",
    "OutputKind",
    "SegmentCoding",
    "SeriesInfo",
    "SourceSeries",
    "deidentify_dataset",
    "deidentify_path",
    "derived_uid",
    "find_series",
    "is_nifti",
    "read_dicom",
    "read_dicom_series",
    "read_image",
    "read_itk",
    "read_label",
    "read_nifti",
    "read_raster",
    "read_rtstruct_masks",
    "read_seg_masks",
    "referenced_series",
    "region_volumes_ml",
    "write_dicom_series",
    "write_image",
    "write_itk",
    "write_nifti",
    "write_overlay_sc",
    "write_png",
    "write_seg",
    "write_sr",
]
