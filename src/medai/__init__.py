"""medai: medical-imaging AI from DICOM to a validated, explainable model."""

from medai.errors import DatasetError, GeometryError, ImageReadError, MedaiError
from medai.image import Image, LabelMap, ScalarImage

__version__ = "0.1.0"

__all__ = [
    "DatasetError",
    "GeometryError",
    "Image",
    "ImageReadError",
    "LabelMap",
    "MedaiError",
    "ScalarImage",
    "__version__",
]
