"""Typed settings for IBSI feature extraction: one :class:`RadiomicsSettings`.

Every field has a default that works on a CT or MR tumour mask; the IBSI digital
phantom values are reproduced with ``discretisation="fixed_bin_number", bin_number=6``
and every aggregation switched on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "TEXTURE_AGGREGATIONS",
    "Aggregation",
    "Discretisation",
    "Family",
    "RadiomicsSettings",
]


class Family(StrEnum):
    """Feature families of IBSI chapter 1 (value = column prefix)."""

    MORPHOLOGY = "morph"
    LOCAL_INTENSITY = "loc"
    STATISTICS = "stat"
    HISTOGRAM = "ih"
    IVH = "ivh"
    GLCM = "glcm"
    GLRLM = "glrlm"
    GLSZM = "glszm"
    GLDZM = "gldzm"
    NGTDM = "ngtdm"
    NGLDM = "ngldm"


class Aggregation(StrEnum):
    """IBSI texture aggregation methods (value = column suffix).

    GLCM and GLRLM use the six direction-aware methods; GLSZM, GLDZM, NGTDM and NGLDM
    use ``2d``, ``25d`` and ``3d``.
    """

    D2_AVERAGED = "2d_avg"
    D2_SLICE_MERGED = "2d_smrg"
    D25_DIRECTION_MERGED = "25d_dmrg"
    D25_MERGED = "25d_mrg"
    D3_AVERAGED = "3d_avg"
    D3_MERGED = "3d_mrg"
    D2 = "2d"
    D25 = "25d"
    D3 = "3d"


class Discretisation(StrEnum):
    """Grey-level discretisation: a fixed number of bins or a fixed bin width."""

    FIXED_BIN_NUMBER = "fixed_bin_number"
    FIXED_BIN_SIZE = "fixed_bin_size"


_DIRECTIONAL = (
    Aggregation.D2_AVERAGED,
    Aggregation.D2_SLICE_MERGED,
    Aggregation.D25_DIRECTION_MERGED,
    Aggregation.D25_MERGED,
    Aggregation.D3_AVERAGED,
    Aggregation.D3_MERGED,
)
_ZONAL = (Aggregation.D2, Aggregation.D25, Aggregation.D3)

#: Aggregation methods that apply to each texture family.
TEXTURE_AGGREGATIONS: dict[Family, tuple[Aggregation, ...]] = {
    Family.GLCM: _DIRECTIONAL,
    Family.GLRLM: _DIRECTIONAL,
    Family.GLSZM: _ZONAL,
    Family.GLDZM: _ZONAL,
    Family.NGTDM: _ZONAL,
    Family.NGLDM: _ZONAL,
}

_DEFAULT_AGGREGATIONS = (Aggregation.D3_AVERAGED, Aggregation.D3_MERGED, Aggregation.D3)


class RadiomicsSettings(BaseModel):
    """Everything that changes a feature value, in one validated object.

    Attributes:
        families: Feature families to compute (default: all eleven).
        aggregations: Texture aggregation methods (default: the 3D ones; add the
            2D / 2.5D ones for slice-wise analysis).
        discretisation: Fixed bin number or fixed bin size.
        bin_number: Bins for fixed bin number.
        bin_width: Bin width (image units) for fixed bin size.
        lower_bound: Lower edge of the first bin for fixed bin size; default the
            re-segmentation lower bound, else the ROI minimum.
        resample_spacing: Target voxel size (mm) ``(x, y, z)``; ``None`` keeps the grid.
            Grids are centre-aligned as in IBSI; the mask is interpolated linearly and
            thresholded at ``mask_threshold``.
        interpolation_order: Spline order for the image (0 nearest, 1 linear, 3 cubic).
        mask_threshold: Partial-volume threshold of the interpolated mask.
        round_intensities: Round interpolated intensities to integers (CT in HU).
        resegment_range: ``(low, high)`` intensity range kept in the intensity mask;
            either bound may be ``None``.
        outlier_sigma: Drop intensities beyond mean ± this many SD (e.g. 3.0).
        nan_policy: ``"raise"`` on NaN intensities inside the ROI, or ``"exclude"``
            them from the intensity mask.
        glcm_distance: Chebyshev distance of GLCM neighbours.
        ngtdm_distance: Chebyshev radius of the NGTDM neighbourhood.
        ngldm_distance: Chebyshev radius of the NGLDM neighbourhood.
        ngldm_alpha: NGLDM coarseness: neighbours within this grey-level difference
            are dependent.
        ivh_mode: Intensity-volume histogram discretisation, as IBSI recommends per
            modality: ``"bin_number"`` (arbitrary units such as MR: ``ivh_bin_number``
            bins), ``"discrete"`` (calibrated integer intensities such as CT in HU: no
            discretisation, unit steps), ``"bin_width"`` (calibrated continuous
            intensities such as PET SUV: ``ivh_bin_width`` bins, bin centres), or
            ``"texture"`` (reuse the texture grey levels).
        ivh_bin_number: Bins for ``ivh_mode="bin_number"``.
        ivh_bin_width: Bin width for ``ivh_mode="bin_width"``.
        peak_volume_cc: Volume of the sphere for local and global intensity peaks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    families: tuple[Family, ...] = tuple(Family)
    aggregations: tuple[Aggregation, ...] = _DEFAULT_AGGREGATIONS
    discretisation: Discretisation = Discretisation.FIXED_BIN_NUMBER
    bin_number: int = Field(default=32, ge=1, le=65536)
    bin_width: float = Field(default=25.0, gt=0)
    lower_bound: float | None = None
    resample_spacing: tuple[float, float, float] | None = None
    interpolation_order: int = Field(default=1, ge=0, le=5)
    mask_threshold: float = Field(default=0.5, gt=0, le=1)
    round_intensities: bool = False
    resegment_range: tuple[float | None, float | None] | None = None
    outlier_sigma: float | None = Field(default=None, gt=0)
    nan_policy: Literal["raise", "exclude"] = "raise"
    glcm_distance: int = Field(default=1, ge=1)
    ngtdm_distance: int = Field(default=1, ge=1)
    ngldm_distance: int = Field(default=1, ge=1)
    ngldm_alpha: float = Field(default=0.0, ge=0)
    ivh_mode: Literal["bin_number", "discrete", "bin_width", "texture"] = "bin_number"
    ivh_bin_number: int = Field(default=1000, ge=1)
    ivh_bin_width: float = Field(default=0.1, gt=0)
    peak_volume_cc: float = Field(default=1.0, gt=0)

    @field_validator("resample_spacing")
    @classmethod
    def _positive_spacing(
        cls, value: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError(f"resample_spacing must be positive millimetres; got {value}")
        return value

    @model_validator(mode="after")
    def _check_range(self) -> RadiomicsSettings:
        rng = self.resegment_range
        if rng is not None and None not in rng and rng[0] > rng[1]:  # type: ignore[operator]
            raise ValueError(
                f"resegment_range low must not exceed high; got {rng}: swap the bounds"
            )
        if not self.families:
            raise ValueError("families is empty; name at least one feature family")
        for family in self.families:
            applicable = TEXTURE_AGGREGATIONS.get(family, ())
            if applicable and not set(applicable) & set(self.aggregations):
                raise ValueError(
                    f"family {family.value!r} needs one of the aggregations "
                    f"{[a.value for a in applicable]}; got {[a.value for a in self.aggregations]}"
                )
        return self
