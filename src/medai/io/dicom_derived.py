"""What every DICOM object medai derives from a source series shares: the algorithm that
made it, deterministic UIDs, and the colours of its regions.

Output UIDs are a function of (algorithm identity, source SOP Instance UIDs, output
kind, role), written as ``2.25.<integer>`` from a SHA-256 digest, so running the same
bundle on the same images again gives the same Series and SOP Instance UIDs: an archive
replaces the earlier result instead of storing a duplicate.

Example:
    >>> algo = AlgorithmInfo("glioma-seg", "1.2.0")
    >>> uid = derived_uid(algo, ["1.2.3.4"], OutputKind.SEG, "series")
    >>> uid.startswith("2.25.") and len(uid) <= 64
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import medai

__all__ = [
    "REGION_COLOURS",
    "AlgorithmInfo",
    "OutputKind",
    "derived_uid",
    "region_colour",
]

#: RFC 4122 variant bits and version 8 ("custom") set on the 128 digest bits.
_VERSION_8 = 0x8 << 76
_VARIANT = 0x2 << 62
_CLEAR = ~((0xF << 76) | (0x3 << 62))


class OutputKind(StrEnum):
    """The kinds of DICOM object written from one prediction."""

    SEG = "SEG"
    SR = "SR"
    SC = "SC"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm (model bundle) that produced a result.

    Args:
        name: Bundle or model name (DICOM Algorithm Name, at most 64 characters).
        version: Bundle version (DICOM Algorithm Version, at most 64 characters).
        digest: Anything that identifies the exact bundle (e.g. its manifest SHA-256);
            part of the UID seed and recorded as the device serial number.
        manufacturer: Who made the software.

    Raises:
        ValueError: If ``name`` or ``version`` is empty or longer than 64 characters.
    """

    name: str
    version: str
    digest: str = ""
    manufacturer: str = "medai"

    def __post_init__(self) -> None:
        for field, value in (("name", self.name), ("version", self.version)):
            if not value or len(value) > 64 or "\\" in value:
                raise ValueError(
                    f"algorithm {field} must be 1-64 characters without a backslash; got {value!r}"
                )

    @property
    def identity(self) -> str:
        """The string every derived UID is seeded with."""
        return f"{self.name}\x1f{self.version}\x1f{self.digest}"

    @property
    def software_versions(self) -> list[str]:
        """Software Versions: medai's and the bundle's."""
        return [f"medai {medai.__version__}", f"{self.name} {self.version}"[:64]]

    @property
    def serial_number(self) -> str:
        return self.digest[:16] or "none"

    def stamp(self, ds: Dataset) -> None:
        """Record medai's and the bundle's versions in ``ds`` (Software Versions)."""
        ds.add_new(0x00181020, "LO", self.software_versions)

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """The DICOM Algorithm Identification of a SEG segment."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.DCM.ArtificialIntelligence,
            version=self.version,
            source=self.manufacturer,
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """The TID 4019 Algorithm Identification of an SR measurement."""
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version)


def derived_uid(
    algorithm: AlgorithmInfo, source_uids: Iterable[str], kind: OutputKind, *role: object
) -> str:
    """A deterministic ``2.25.`` UID for output ``kind`` (and ``role``) of ``algorithm``
    on the images ``source_uids`` (their order does not matter).

    The integer is 128 bits of a SHA-256 digest shaped as an RFC 4122 version-8 UUID,
    so the UID is at most 44 characters and never equals a source UID.
    """
    digest = hashlib.sha256()
    for part in (algorithm.identity, OutputKind(kind).value, *map(str, role)):
        digest.update(part.encode("utf-8") + b"\x00")
    for uid in sorted(set(source_uids)):
        digest.update(uid.encode("ascii") + b"\x00")
    value = int.from_bytes(digest.digest()[:16], "big")
    return f"2.25.{(value & _CLEAR) | _VERSION_8 | _VARIANT}"


#: Display colours (sRGB) of the brain-tumour regions; other regions use ``_PALETTE``.
REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "WT": (46, 204, 64),
    "TC": (255, 220, 0),
    "ET": (255, 65, 54),
}
_PALETTE: Sequence[tuple[int, int, int]] = (
    (0, 116, 217),
    (255, 133, 27),
    (177, 13, 201),
    (57, 204, 204),
    (240, 18, 190),
    (1, 255, 112),
    (133, 20, 75),
    (127, 219, 255),
)


def region_colour(name: str, index: int) -> tuple[int, int, int]:
    """The display colour of region ``name``, the ``index``-th region written."""
    return REGION_COLOURS.get(name, _PALETTE[index % len(_PALETTE)])
