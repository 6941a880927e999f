"""Errors raised by medai.

Every error a user can meet says what went wrong, where (file, argument) and,
when there is one, what to do about it. All derive from :class:`MedaiError`, so a
command-line front end can catch them and print one clean line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedaiError(Exception):
    """Base class of every error medai raises on purpose."""


class ImageReadError(MedaiError, ValueError):
    """A file or folder could not be read as an image.

    Args:
        path: The file or folder that failed.
        reason: What is wrong with it, in words a user understands.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class GeometryError(MedaiError, ValueError):
    """Images or slices whose geometry does not fit together."""


class DatasetError(MedaiError, ValueError):
    """A dataset, manifest or case that is inconsistent or incomplete."""


class ConfigError(MedaiError, ValueError):
    """A setting that is not valid: a command-line value, an override, a config file."""


class PlanError(ConfigError):
    """A segmentation plan (YAML file or ``key=value`` overrides) that does not validate."""


def validation_summary(exc: Exception) -> str:
    """A pydantic ``ValidationError`` in one line: ``field: problem (got value)``, ``; ``-joined.

    Each part names the field's dotted path (``train.loss``), what pydantic allows there
    (``Input should be 'dice_ce' or 'dice_focal'``) and the value given, so an error built
    from it names the problem and the fix. Anything else is returned as ``str(exc)``.
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "unknown field (remove it or fix its spelling)"
        given = err.get("input")
        if err.get("type") != "extra_forbidden" and isinstance(given, str | int | float | bool):
            message += f" (got {given!r})"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class ImageWriteError(MedaiError, ValueError):
    """An image the chosen format cannot hold (several channels to DICOM, a volume to PNG,
    NaN to DICOM), or a target that is taken."""


class BundleError(MedaiError, ValueError):
    """A model bundle that cannot be loaded or used as it is."""


class BundleIntegrityError(BundleError):
    """A bundle file that is missing, changed since export (SHA-256 mismatch), not in the
    manifest, or of a kind a bundle may not hold (anything that would be unpickled)."""


class BundleInputError(BundleError):
    """A study the bundle was not made for: wrong number of channels, a missing series,
    a single slice for a 3D model."""


class ExportError(MedaiError, ValueError):
    """A run that cannot be exported: no weights, no data to check the export on."""


class ParityError(ExportError):
    """The exported ONNX model does not reproduce PyTorch within the export's tolerance."""
