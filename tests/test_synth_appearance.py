"""The wider cohort: tumour looks, scanner ranges, out-of-range presets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from medai.data.synth import Appearance, SiteRanges, generate_case, generate_cohort, make_sites
from medai.data.synth.appearance import CaseLook, carve_inclusions, draw_look
from medai.data.synth.contrast import TISSUE_CLASSES, Site, _partial_volume
from medai.data.synth.tumour import Grade, TumourMasks, TumourParams, grow_tumour

SPACING = 4.0
#: Only the FLAIR of the non-enhancing core differs between these two looks.
PLAIN = replace(Appearance.narrow(), oedema_wm_preference=(0.8, 0.8))


def test_looks_are_seeded_within_their_ranges_and_validated() -> None:
    wide = Appearance()
    looks = [draw_look(np.random.default_rng([0, i, 1]), wide) for i in range(200)]
    again = draw_look(np.random.default_rng([0, 7, 1]), wide)
    assert again == looks[7]
    flair = np.array([look.net_flair for look in looks])
    assert flair.min() >= 0.6
    assert flair.max() <= 1.15
    assert (flair < 0.8).any()
    assert (flair > 1.0).any()
    assert 0.2 < np.mean([look.infiltrative for look in looks]) < 0.4
    assert 0.05 < np.mean([look.satellite_share > 0 for look in looks]) < 0.16
    narrow = draw_look(np.random.default_rng(1), Appearance.narrow())
    assert (narrow.net_flair, narrow.satellite_share, narrow.cyst_share) == (0.86, 0.0, 0.0)
    with pytest.raises(ValueError, match="cyst is a probability"):
        Appearance(cyst=1.5)
    with pytest.raises(ValueError, match="net_flair must be"):
        Appearance(net_flair=(1.2, 0.9))


def test_flair_of_the_core_follows_the_look_and_nothing_else_changes() -> None:
    bright = replace(PLAIN, net_flair=(1.4, 1.4))
    dark = replace(PLAIN, net_flair=(0.5, 0.5))
    a = generate_case(2, seed=4, spacing=SPACING, grade=Grade.LGG, appearance=bright)
    b = generate_case(2, seed=4, spacing=SPACING, grade=Grade.LGG, appearance=dark)
    np.testing.assert_array_equal(a.label.array, b.label.array)
    np.testing.assert_array_equal(a.image.array[1:], b.image.array[1:])  # T1, T1ce, T2
    lab = a.label.array[0]
    core, oedema = lab == 2, lab == 1
    assert core.sum() > 20
    assert oedema.sum() > 20

    def ratio(flair: np.ndarray) -> float:
        return float(np.median(flair[core]) / np.median(flair[oedema]))

    assert ratio(a.image.array[0]) > 1.15
    assert ratio(b.image.array[0]) < 0.75


def _toy_masks() -> TumourMasks:
    core = np.zeros((20, 20, 20), dtype=bool)
    core[5:15, 5:15, 5:15] = True
    empty = np.zeros_like(core)
    return TumourMasks(necrosis=empty, enhancing=empty, non_enhancing=core, oedema=empty)


def test_inclusions_lie_in_the_core_with_the_drawn_share() -> None:
    look = CaseLook(0.86, 0.8, 0.5, 0.0, cyst_share=0.3, calcification_share=0.05, detail_seed=3)
    masks = _toy_masks()
    cyst, calcified = carve_inclusions(masks, look, spacing=2.0)
    assert cyst.sum() == 300
    assert calcified.sum() == 50
    assert not (cyst & calcified).any()
    assert not ((cyst | calcified) & ~masks.non_enhancing).any()
    # A cyst is one roundish blob, not scattered voxels.
    _, parts = ndimage.label(cyst)
    assert parts == 1
    none = replace(look, cyst_share=0.0, calcification_share=0.0)
    assert not any(m.any() for m in carve_inclusions(masks, none, spacing=2.0))


def test_a_cyst_keeps_label_2_and_darkens_flair() -> None:
    cystic = replace(PLAIN, cyst=1.0, cyst_share=(0.6, 0.6))
    a = generate_case(2, seed=4, spacing=SPACING, grade=Grade.LGG, appearance=PLAIN)
    b = generate_case(2, seed=4, spacing=SPACING, grade=Grade.LGG, appearance=cystic)
    np.testing.assert_array_equal(a.label.array, b.label.array)
    core = a.label.array[0] == 2
    assert b.drawn["inclusions_ml"]["cyst"] > 0.5 * a.clinical["tc_ml"]
    assert b.image.array[0][core].mean() < 0.75 * a.image.array[0][core].mean()


def test_a_multifocal_case_has_two_lesions_holding_the_drawn_volume() -> None:
    two = replace(PLAIN, multifocal=1.0, satellite_share=(0.4, 0.4))
    case = generate_case(0, seed=1, spacing=3.0, grade=Grade.HGG, appearance=two)
    single = generate_case(0, seed=1, spacing=3.0, grade=Grade.HGG, appearance=PLAIN)
    sizes = []
    for lab in (case.label.array[0], single.label.array[0]):
        parts, _n = ndimage.label(lab > 0, structure=np.ones((3, 3, 3)))
        sizes.append(sorted(np.bincount(parts.ravel())[1:], reverse=True))
    assert len(sizes[0]) >= 2
    assert sizes[0][1] > 0.2 * sum(sizes[0])
    assert len(sizes[1]) == 1 or sizes[1][1] < 0.05 * sum(sizes[1])
    # The two lesions together hold the drawn whole-tumour volume.
    assert case.clinical["wt_ml"] == pytest.approx(case.drawn["tumour"]["wt_ml"], rel=0.15)


def test_oedema_spares_or_follows_cortex_as_preferred() -> None:
    shape = (40, 40, 40)
    wm = np.zeros(shape, np.float32)
    wm[:20] = 1.0  # white matter on one side, cortex (grey matter) on the other
    brain, csf = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    base = TumourParams(Grade.LGG, 20.0, 6.0, 0.0, 0.0, (1.0, 1.0, 1.0), 0.0, shape_seed=5)
    share = {}
    for pref in (-0.5, 1.4):
        params = replace(base, oedema_wm_preference=pref)
        masks = grow_tumour(params, (20, 20, 20), wm=wm, brain=brain, csf=csf, spacing=2.0)
        share[pref] = masks.oedema[:20].sum() / masks.oedema.sum()
    assert share[1.4] > 0.75
    assert share[-0.5] < 0.45


def _site(field_t: float) -> Site:
    gain = np.ones((4, len(TISSUE_CLASSES)), np.float32)
    return Site("x", gain, 0.02, 0.1, 1.0, 1000.0, field_t=field_t)


def test_site_ranges_narrow_default_and_out_of_range() -> None:
    narrow = make_sites(6, seed=2, ranges=SiteRanges.narrow())
    assert {s.field_t for s in narrow} == {1.5}
    assert all(s.gamma == (1.0, 1.0, 1.0, 1.0) for s in narrow)
    default = make_sites(26, seed=2)
    assert {s.field_t for s in default} == {1.5, 3.0}
    assert min(min(s.gamma) for s in default) >= 0.85
    assert max(max(s.gamma) for s in default) <= 1.2
    shifted = make_sites(6, seed=2, ranges=SiteRanges.out_of_range())
    d = SiteRanges()
    for s in shifted:
        assert s.noise >= d.noise[1]
        assert s.bias >= d.bias[1]
        assert s.slice_mm > max(d.slice_mm)
        assert s.inplane_mm > max(d.inplane_mm)
        assert min(s.gamma) > d.gamma[1]
    # Narrow and default sites share the first generator's draws (same gains).
    np.testing.assert_array_equal(narrow[3].contrast_gain, default[3].contrast_gain)
    # At 3 T grey/white contrast on T1 shrinks to 0.75 of 1.5 T's.
    gm, wm = TISSUE_CLASSES.index("gm"), TISSUE_CLASSES.index("wm")
    low, high = _site(1.5).intensity, _site(3.0).intensity
    assert high[0, wm] - high[0, gm] == pytest.approx(0.75 * (low[0, wm] - low[0, gm]))
    np.testing.assert_array_equal(low[2:], high[2:])
    with pytest.raises(ValueError, match="gamma must be"):
        SiteRanges(gamma=(0.1, 1.0))


def test_out_of_range_cohort_records_its_ranges(tmp_path) -> None:
    info = generate_cohort(
        tmp_path / "shift",
        cases=1,
        spacing=SPACING,
        seed=9,
        appearance=Appearance.out_of_range(),
        site_ranges=SiteRanges.out_of_range(),
    )
    record = json.loads((info.root / "generator.json").read_text())
    assert record["site_ranges"]["slice_mm"] == [7.0]
    assert record["appearance"]["net_flair"] == [1.2, 1.6]
    assert record["sites"][0]["field_t"] == 3.0
    assert record["sites"][0]["inplane_mm"] == 3.0
    plain = generate_cohort(tmp_path / "plain", cases=1, spacing=SPACING, seed=9)
    assert json.loads((plain.root / "generator.json").read_text())["site_ranges"]["field_t"] == [
        1.5,
        3.0,
    ]


def test_wide_margins_never_stack_tumour_above_the_brain_fraction() -> None:
    tissue = np.zeros((3, 24, 24, 24), np.float32)
    tissue[2] = 1.0  # all white matter
    tumour = np.zeros((4, 24, 24, 24), np.float32)
    tumour[0, 4:20, 4:20, 4:20] = 1.0  # oedema shell
    tumour[3, 8:16, 8:16, 8:16] = 1.0  # enhancing rim
    tumour[2, 10:14, 10:14, 10:14] = 1.0  # necrosis inside it
    tumour[3, 10:14, 10:14, 10:14] = 0.0
    tumour[0, 8:16, 8:16, 8:16] = 0.0
    for margin in (0.5, 3.0):
        classes = _partial_volume(tissue, tumour, 1.0, margin)
        assert classes.sum(axis=0).max() <= 1.0 + 1e-5
    wide = _partial_volume(tissue, tumour, 1.0, 3.0)
    narrow = _partial_volume(tissue, tumour, 1.0, 0.5)
    # The sharp classes keep their place; the blurred oedema fades outwards instead.
    np.testing.assert_allclose(wide[5:7], narrow[5:7], atol=1e-6)
    assert wide[5:7, 9:15, 12, 12].sum(axis=0).min() > 0.97
    assert 0.05 < wide[3, 21, 12, 12] < 0.6
    assert narrow[3, 21, 12, 12] < 0.01
