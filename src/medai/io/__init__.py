"""Reading and writing medical images: NIfTI, NRRD/MHA, DICOM, PNG/JPEG/TIFF."""

from medai.io.api import read_image, read_label, write_image
from medai.io.deid import Change, deidentify_dataset
from medai.io.deid_files import DeidReport, deidentify_path
from medai.io.dicom import SeriesInfo, find_series, read_dicom, read_dicom_series
from medai.io.dicom_write import write_dicom_series
from medai.io.itk import read_itk, write_itk
from medai.io.nifti import is_nifti, read_nifti, write_nifti
from medai.io.raster import read_raster, write_png

__all__ = [
    "Change",
    "DeidReport",
    "SeriesInfo",
    "deidentify_dataset",
    "deidentify_path",
    "find_series",
    "is_nifti",
    "read_dicom",
    "read_dicom_series",
    "read_image",
    "read_itk",
    "read_label",
    "read_nifti",
    "read_raster",
    "write_dicom_series",
    "write_image",
    "write_itk",
    "write_nifti",
    "write_png",
]
