"""Reading and writing medical images: NIfTI, NRRD/MHA, DICOM, PNG/JPEG/TIFF."""

from medai.io.nifti import is_nifti, read_nifti, write_nifti

__all__ = ["is_nifti", "read_nifti", "write_nifti"]
