"""One synthetic glioma case, and a whole cohort written to disk.

Case ``i`` of seed ``s`` draws everything from ``numpy.random.default_rng([s, i])``,
so it is the same whatever the cohort size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medai.data.synth import anatomy, clinical, contrast, tumour
from medai.data.synth.appearance import (
    LOOK_STREAM,
    Appearance,
    CaseLook,
    carve_inclusions,
    draw_look,
    merge_masks,
)
from medai.data.synth.contrast import SiteRanges
from medai.data.synth.tumour import Grade
from medai.errors import ConfigError
from medai.fsutil import atomic_write_text
from medai.image import LabelMap, ScalarImage

__all__ = ["CohortInfo", "SyntheticCase", "generate_case", "generate_cohort"]

log = logging.getLogger(__name__)

#: Channel order of the 4D image, as in MSD Task01_BrainTumour.
MSD_CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")
_FROM_CONTRAST = (3, 0, 1, 2)  # MSD channel k <- contrast.CONTRASTS index
LAYOUTS = ("msd", "brats")


@dataclass(frozen=True)
class SyntheticCase:
    """A generated case: 4-channel image (FLAIR, T1w, T1gd, T2w), MSD labels, clinic.

    ``clinical`` holds patient_id, age, sex, site, grade and the tumour volumes in mL
    (survival is drawn for the whole cohort by :func:`generate_cohort`); ``drawn``
    the random parameters (pose, deformation, atrophy, tumour volumes and centre).
    """

    index: int
    image: ScalarImage
    label: LabelMap
    clinical: dict[str, Any]
    necrosis: np.ndarray = field(repr=False)  # boolean; MSD merges it into label 2
    drawn: dict[str, Any] = field(default_factory=dict, repr=False)  # parameters, for replay


@dataclass(frozen=True)
class CohortInfo:
    """What :func:`generate_cohort` wrote."""

    root: Path
    cases: int
    spacing: float
    seed: int
    layouts: tuple[str, ...]
    clinical_csv: Path
    survival_model_json: Path
    dataset_json: Path | None
    patient_ids: tuple[str, ...]


def _check_args(index: int, spacing: float, sites: int, hgg_fraction: float) -> None:
    if index < 0:
        raise ConfigError(f"index must be >= 0; got {index}")
    if not 1.0 <= spacing <= 8.0:
        raise ConfigError(f"spacing must be between 1 and 8 mm; got {spacing}")
    if not 1 <= sites <= 26:
        raise ConfigError(f"sites must be between 1 and 26; got {sites}")
    if not 0.0 <= hgg_fraction <= 1.0:
        raise ConfigError(f"hgg_fraction must be between 0 and 1; got {hgg_fraction}")


def _subject_with_tumour(
    rng: np.random.Generator,
    atlas: anatomy.Atlas,
    warp: anatomy.Warp,
    params: tumour.TumourParams,
    spacing: float,
    look: CaseLook,
) -> tuple[anatomy.SubjectAnatomy, tumour.TumourMasks, tuple[int, int, int]]:
    """Warp the atlas, place the tumour in white matter, push tissue away, grow it.

    A multifocal case (``look.satellite_share > 0``) splits the drawn volumes between
    the main lesion and a satellite placed and shaped from the look's own stream.
    """
    main, satellite = params, None
    if look.satellite_share > 0:
        main, satellite = tumour.split_satellite(
            params, look.satellite_share, shape_seed=look.detail_seed
        )
    coords = anatomy.source_coordinates(atlas, warp)
    plain = anatomy.make_subject(atlas, warp, coords=coords)
    centre = tumour.pick_centre(rng, plain.fractions[2], plain.brain, spacing=spacing, params=main)
    push = tumour.mass_effect_displacement(atlas.shape, centre, spacing=spacing, params=main)
    subject = anatomy.make_subject(atlas, warp, coords=coords, extra_displacement=push)
    csf, _, wm = subject.fractions
    masks = tumour.grow_tumour(main, centre, wm=wm, brain=subject.brain, csf=csf, spacing=spacing)
    if satellite is not None:
        where = tumour.pick_satellite_centre(
            np.random.default_rng([look.detail_seed, 2]),
            wm,
            subject.brain,
            spacing=spacing,
            main=(centre, main),
            satellite=satellite,
        )
        second = tumour.grow_tumour(
            satellite, where, wm=wm, brain=subject.brain, csf=csf, spacing=spacing
        )
        masks = merge_masks(masks, second)
    return subject, masks, centre


def _with_look(params: tumour.TumourParams, look: CaseLook) -> tumour.TumourParams:
    """The tumour's oedema follows the look: cortex preference, rougher when infiltrative."""
    noise = params.oedema_noise * (2.0 if look.infiltrative else 1.0)
    return replace(params, oedema_wm_preference=look.oedema_wm_preference, oedema_noise=noise)


def _volumes_ml(labels: np.ndarray, necrosis: np.ndarray, spacing: float) -> dict[str, float]:
    voxel_ml = spacing**3 / 1000.0
    return {
        "wt_ml": round(float((labels > 0).sum() * voxel_ml), 3),
        "tc_ml": round(float((labels >= 2).sum() * voxel_ml), 3),
        "et_ml": round(float((labels == 3).sum() * voxel_ml), 3),
        "ncr_ml": round(float(necrosis.sum() * voxel_ml), 3),
    }


def generate_case(
    index: int,
    *,
    seed: int = 0,
    spacing: float = 2.0,
    sites: int = 4,
    hgg_fraction: float = 0.7,
    grade: Grade | str | None = None,
    appearance: Appearance | None = None,
    site_ranges: SiteRanges | None = None,
) -> SyntheticCase:
    """Generate case ``index`` of the cohort drawn from ``seed``.

    Args:
        index: Case number (0-based); ``patient_id`` is ``SYN{index+1:04d}``.
        seed: Cohort seed.
        spacing: Isotropic voxel size in mm (1–8).
        sites: Number of scanner sites the case is drawn among.
        hgg_fraction: Probability of a high-grade glioma.
        grade: Force ``"HGG"`` or ``"LGG"`` (the rest of the draw is unchanged).
        appearance: Tumour appearance ranges (default: the documented cohort's);
            :meth:`Appearance.narrow` gives the first generator's single look.
        site_ranges: Scanner ranges the sites are drawn from (default: documented).

    Raises:
        ValueError: On an out-of-range argument.
    """
    _check_args(index, spacing, sites, hgg_fraction)
    if grade is not None and grade not in tuple(Grade):
        raise ValueError(f"grade must be 'HGG', 'LGG' or None; got {grade!r}")
    rng = np.random.default_rng([seed, index])
    drawn_grade = Grade.HGG if rng.random() < hgg_fraction else Grade.LGG
    grade_ = drawn_grade if grade is None else Grade(grade)
    site = contrast.make_sites(sites, seed=seed, ranges=site_ranges)[int(rng.integers(sites))]
    look = draw_look(np.random.default_rng([seed, index, LOOK_STREAM]), appearance or Appearance())
    age, sex = clinical.draw_age_sex(rng, grade=grade_)
    atlas = anatomy.load_atlas(float(spacing))
    warp = anatomy.draw_warp(rng, age=age)
    params = _with_look(tumour.draw_tumour(rng, grade=grade_), look)

    subject, masks, centre = _subject_with_tumour(rng, atlas, warp, params, spacing, look)
    cyst, calcified = carve_inclusions(masks, look, spacing=spacing)
    inclusions = cyst | calcified
    stack = [masks.oedema, masks.non_enhancing & ~inclusions, masks.necrosis & ~inclusions]
    stack += [masks.enhancing] + ([cyst, calcified] if inclusions.any() else [])
    images = contrast.render(
        subject.fractions,
        np.stack(stack).astype(np.float32),
        site=site,
        spacing=spacing,
        rng=rng,
        look=look,
    )
    labels = masks.msd_labels()
    info: dict[str, Any] = {
        "patient_id": f"SYN{index + 1:04d}",
        "age": age,
        "sex": sex,
        "site": site.name,
        "grade": grade_.value,
        **_volumes_ml(labels, masks.necrosis, spacing),
        "atrophy": round(warp.atrophy, 4),
    }
    drawn = {
        "warp": asdict(warp),
        "tumour": asdict(params),
        "centre_voxel": list(centre),
        "look": asdict(look),
        "inclusions_ml": {
            "cyst": float(cyst.sum() * spacing**3 / 1000.0),
            "calcification": float(calcified.sum() * spacing**3 / 1000.0),
        },
    }
    meta = {"channels": list(MSD_CHANNELS), "patient_id": info["patient_id"], "seed": seed}
    image = ScalarImage(images[list(_FROM_CONTRAST)], atlas.affine, meta=meta)
    label = LabelMap(labels[None], atlas.affine, meta={"patient_id": info["patient_id"]})
    return SyntheticCase(index, image, label, info, masks.necrosis, drawn)


def _write_generator_json(
    root: Path,
    seed: int,
    sites: int,
    appearance: Appearance | None,
    site_ranges: SiteRanges | None,
) -> Path:
    """``generator.json``: the ranges the cohort was drawn from and its sites."""
    ranges = site_ranges or SiteRanges()
    drawn_sites = [
        {**asdict(site), "contrast_gain": site.contrast_gain.round(4).tolist()}
        for site in contrast.make_sites(sites, seed=seed, ranges=ranges)
    ]
    payload = {
        "seed": seed,
        "appearance": asdict(appearance or Appearance()),
        "site_ranges": asdict(ranges),
        "sites": drawn_sites,
    }
    path = root / "generator.json"
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def generate_cohort(
    out: str | Path,
    *,
    cases: int = 40,
    spacing: float = 2.0,
    seed: int = 0,
    sites: int = 4,
    layouts: Sequence[str] = ("msd",),
    hgg_fraction: float = 0.7,
    dicom: bool = False,
    progress: Callable[[int, int], None] | None = None,
    appearance: Appearance | None = None,
    site_ranges: SiteRanges | None = None,
) -> CohortInfo:
    """Generate ``cases`` cases and write them to ``out`` in each of ``layouts``.

    Writes ``clinical.csv`` (patient_id, age, sex, site, grade, survival_days, event,
    volumes) and ``survival_model.json`` (the true model) at the top of ``out``.

    Args:
        out: Output folder (created).
        cases: Number of cases (>= 1).
        spacing: Isotropic voxel size in mm.
        seed: Cohort seed; case ``i`` does not depend on ``cases``.
        sites: Number of scanner sites.
        layouts: Any of ``"msd"`` (Task01_BrainTumour) and ``"brats"`` (BraTS 2021).
        hgg_fraction: Probability of a high-grade glioma.
        dicom: Also write one DICOM MR series per contrast under ``dicom/``.
        progress: Called as ``progress(done, total)`` after each case.
        appearance: Tumour appearance ranges (default: the documented cohort's).
        site_ranges: Scanner ranges the sites are drawn from (default: documented).

    Raises:
        ValueError: On a bad argument or unknown layout.
    """
    from medai.data.synth import writers

    if cases < 1:
        raise ConfigError(f"cases must be >= 1; got {cases}")
    bad = [name for name in layouts if name not in LAYOUTS]
    if bad or not layouts:
        raise ConfigError(f"layouts must be a non-empty subset of {LAYOUTS}; got {list(layouts)}")
    _check_args(0, spacing, sites, hgg_fraction)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i in range(cases):
        case = generate_case(
            i,
            seed=seed,
            spacing=spacing,
            sites=sites,
            hgg_fraction=hgg_fraction,
            appearance=appearance,
            site_ranges=site_ranges,
        )
        if "msd" in layouts:
            writers.write_msd_case(case, root)
        if "brats" in layouts:
            writers.write_brats_case(case, root)
        if dicom:
            writers.write_dicom_case(case, root, seed=seed)
        ids = {"msd_case_id": writers.msd_name(i), "brats_case_id": writers.brats_name(i)}
        rows.append({**case.clinical, **ids})
        log.debug("case %s written", case.clinical["patient_id"])
        if progress is not None:
            progress(i + 1, cases)
    csv_path, model_path = writers.write_clinical(rows, root, seed=seed)
    _write_generator_json(root, seed, sites, appearance, site_ranges)
    dataset_json = writers.write_msd_dataset_json(root, cases) if "msd" in layouts else None
    return CohortInfo(
        root=root,
        cases=cases,
        spacing=float(spacing),
        seed=seed,
        layouts=tuple(layouts),
        clinical_csv=csv_path,
        survival_model_json=model_path,
        dataset_json=dataset_json,
        patient_ids=tuple(r["patient_id"] for r in rows),
    )
