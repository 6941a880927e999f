"""Building blocks of the synthetic cohort: anatomy, tumour growth, sites, CLI, DICOM."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medai.data.synth import Grade, anatomy, generate_case, make_sites, tumour
from medai.data.synth.cohort import MSD_CHANNELS

SPACING = 4.0


def test_atlas_tissue_volumes_are_those_of_an_adult_brain() -> None:
    atlas = anatomy.load_atlas(SPACING)
    ml = atlas.fractions.sum(axis=(1, 2, 3)) * SPACING**3 / 1000
    csf, gm, wm = ml
    assert 600 < gm < 1100
    assert 400 < wm < 800
    assert 100 < csf < 400
    assert atlas.fractions.sum(axis=0).max() <= 1.0 + 1e-5
    assert atlas.spacing == SPACING
    assert atlas.ventricles.sum() * SPACING**3 / 1000 > 5  # lateral ventricles found


def test_atrophy_widens_csf_and_identity_warp_keeps_the_atlas() -> None:
    atlas = anatomy.load_atlas(SPACING)
    still = anatomy.Warp((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, 1, 0.0)
    same = anatomy.make_subject(atlas, still)
    np.testing.assert_allclose(same.fractions, atlas.fractions, atol=1e-5)
    old = anatomy.make_subject(atlas, dataclasses.replace(still, atrophy=1.0))
    assert old.fractions[0].sum() > 1.2 * atlas.fractions[0].sum()
    # Atrophy moves tissue into CSF; the brain's envelope is unchanged.
    np.testing.assert_allclose(old.brain.sum(), same.brain.sum(), rtol=1e-3)
    young = anatomy.draw_warp(np.random.default_rng(0), age=30)
    assert young.atrophy == 0.0
    assert anatomy.draw_warp(np.random.default_rng(0), age=80).atrophy > 0.5


def test_smooth_field_is_smooth_and_unit_variance() -> None:
    field = anatomy.smooth_field(np.random.default_rng(0), (40, 30, 20), nodes=4, channels=8)
    assert field.shape == (8, 40, 30, 20)
    assert 0.6 < field.std() < 1.4
    step = np.abs(np.diff(field, axis=1)).mean()
    assert step < 0.15 * field.std()


def test_lowest_picks_exactly_count_allowed_voxels() -> None:
    cost = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    allowed = cost % 2 == 0
    picked = tumour.lowest_cost(cost, allowed, 4)
    assert sorted(cost[picked].tolist()) == [0, 2, 4, 6]
    assert tumour.lowest_cost(cost, allowed, 100).sum() == allowed.sum()
    assert not tumour.lowest_cost(cost, allowed, 0).any()


def test_mass_effect_pushes_radially_and_vanishes_without_mass() -> None:
    params = tumour.draw_tumour(np.random.default_rng(1), grade=Grade.HGG)
    shape, centre = (21, 21, 21), (10, 10, 10)
    push = tumour.mass_effect_displacement(shape, centre, spacing=2.0, params=params)
    # A voxel right of the centre samples the atlas closer to the centre (negative x).
    assert push[0, 14, 10, 10] < 0
    assert push[0, 6, 10, 10] > 0
    np.testing.assert_allclose(push[:, 10, 10, 10], 0.0)
    none = dataclasses.replace(params, mass_effect=0.0)
    assert not tumour.mass_effect_displacement(shape, centre, spacing=2.0, params=none).any()


def test_tumour_volumes_match_the_draw() -> None:
    params = tumour.draw_tumour(np.random.default_rng(2), grade=Grade.HGG)
    voxel = SPACING**3 / 1000
    # Growth hits the drawn volumes to within closing/connectivity clean-up.
    atlas = anatomy.load_atlas(SPACING)
    centre = tuple(int(n) // 2 for n in atlas.shape)
    masks = tumour.grow_tumour(
        params,
        (centre[0] + 6, centre[1], centre[2] + 3),
        wm=atlas.fractions[2],
        brain=atlas.fractions.sum(axis=0),
        csf=atlas.fractions[0],
        spacing=SPACING,
    )
    tc = (masks.necrosis | masks.enhancing | masks.non_enhancing).sum() * voxel
    assert tc == pytest.approx(params.tc_ml, rel=0.25)
    assert masks.enhancing.sum() * voxel == pytest.approx(params.et_ml, rel=0.25)
    both = [masks.necrosis, masks.enhancing, masks.non_enhancing, masks.oedema]
    assert (np.sum(both, axis=0) <= 1).all()  # disjoint


def test_sites_differ_and_are_reproducible() -> None:
    sites = make_sites(4, seed=0)
    assert [s.name for s in sites] == ["site-A", "site-B", "site-C", "site-D"]
    assert len({round(s.scale) for s in sites}) == 4
    again = make_sites(4, seed=0)
    np.testing.assert_array_equal(sites[2].contrast_gain, again[2].contrast_gain)
    with pytest.raises(ValueError, match="sites"):
        make_sites(0)


def test_cli_writes_msd_and_brats(tmp_path) -> None:
    from medai.cli.main import app

    out = tmp_path / "cohort"
    result = CliRunner().invoke(
        app,
        [
            "synth",
            "glioma",
            str(out),
            "--cases",
            "2",
            "--spacing",
            "4",
            "--seed",
            "1",
            "--layout",
            "msd",
            "--layout",
            "brats",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "Task01_BrainTumour/imagesTr/BRATS_002.nii.gz").is_file()
    assert (out / "BraTS2021/BraTS2021_00002/BraTS2021_00002_t1ce.nii.gz").is_file()
    bad = CliRunner().invoke(app, ["synth", "glioma", str(out), "--spacing", "0.1"])
    assert bad.exit_code == 2
    assert "spacing" in bad.output


def test_dicom_series_per_contrast_with_stable_uids(tmp_path) -> None:
    from medai.data.synth import writers

    case = generate_case(0, seed=0, spacing=8.0)
    first = writers.write_dicom_case(case, tmp_path / "a", seed=0)
    second = writers.write_dicom_case(case, tmp_path / "b", seed=0)
    assert len(first) == 4 * case.image.shape[2]
    a = pydicom.dcmread(first[0])
    b = pydicom.dcmread(second[0])
    assert a.Modality == "MR"
    assert a.PatientID == case.clinical["patient_id"]
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    series = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in first}
    studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in first}
    assert len(series) == 4
    assert len(studies) == 1
    assert len(MSD_CHANNELS) == 4


def test_enhancing_vessels_lie_in_csf_only() -> None:
    from medai.data.synth import contrast

    csf = np.zeros((30, 30, 30), dtype=np.float32)
    csf[:, :15] = 1.0
    vessels = contrast._vessels(np.random.default_rng(0), csf, 2.0)
    assert not vessels[:, 15:].any()
    share = (vessels[:, :15] > 0.5).mean()
    assert 0.02 < share < 0.2
