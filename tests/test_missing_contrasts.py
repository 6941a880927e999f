"""Missing contrasts: declared ones are filled as training's dropout fills them and
reported; an undeclared empty or absent one is refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _seg_cohort import grid_affine, world_phantom
from _standin import CHANNELS, standin_plan, standin_run
from medai.errors import DatasetError
from medai.image import ScalarImage
from medai.inference import predict_case, write_prediction
from medai.preprocess import PreprocessPlan, preprocess_image
from medai.preprocess.contrasts import canonical_contrast, complete_contrasts, resolve_missing

SHAPE = (24, 26, 22)


@pytest.fixture(scope="module")
def phantom() -> ScalarImage:
    img, _ = world_phantom(SHAPE, grid_affine(SHAPE, (2.0, 2.0, 2.0), np.eye(3)))
    return img


def _dropout_plan():
    return standin_plan(["train.shift.enabled=true", "train.shift.channel_dropout=0.2"])


def test_names_and_synonyms_resolve_to_plan_channels() -> None:
    assert canonical_contrast(" T1ce ") == canonical_contrast("t1gd") == "t1gd"
    assert canonical_contrast("T1w") == "t1"
    assert resolve_missing(CHANNELS, ["t1ce", "flair"]) == ["FLAIR", "t1gd"]
    with pytest.raises(DatasetError, match=r"'dwi' is not one of the model's channels"):
        resolve_missing(CHANNELS, ["dwi"])
    with pytest.raises(DatasetError, match="at least one contrast"):
        resolve_missing(CHANNELS, ["flair", "t1", "t1ce", "t2"])


def test_present_channels_only_get_zeros_where_declared(phantom) -> None:
    plan = _dropout_plan()
    three = ScalarImage(phantom.array[[0, 1, 3]], phantom.affine)
    full = complete_contrasts(three, plan, missing=["t1ce"])
    assert full.num_channels == 4
    assert not full.array[2].any()
    np.testing.assert_array_equal(full.array[[0, 1, 3]], phantom.array[[0, 1, 3]])
    assert full.meta["contrasts_used"] == ["FLAIR", "T1w", "T2w"]
    assert full.meta["contrasts_missing"] == ["t1gd"]
    # A full stack with a declared missing channel: that channel is zeroed whatever it held.
    zeroed = complete_contrasts(phantom, plan, missing=["FLAIR"])
    assert not zeroed.array[0].any()
    np.testing.assert_array_equal(zeroed.array[1:], phantom.array[1:])


def test_the_fill_stays_zero_after_preprocessing_like_training_dropout(phantom) -> None:
    plan = _dropout_plan()
    full = complete_contrasts(phantom, plan, missing=["T2w"])
    pre = preprocess_image(full, PreprocessPlan()).image.array
    ref = preprocess_image(phantom, PreprocessPlan()).image.array
    assert not pre[3].any()  # exactly the value channel dropout gives a dropped channel
    np.testing.assert_allclose(pre[:3], ref[:3], atol=1e-6)


def test_undeclared_empty_or_absent_channels_are_refused(phantom) -> None:
    plan = _dropout_plan()
    blank = phantom.array.copy()
    blank[2] = 0.0
    with pytest.raises(DatasetError, match=r"channel t1gd holds no signal .* not declared"):
        complete_contrasts(ScalarImage(blank, phantom.affine), plan)
    three = ScalarImage(phantom.array[:3], phantom.affine)
    with pytest.raises(DatasetError, match=r"image has 3 channels; the model needs 4"):
        complete_contrasts(three, plan)
    with pytest.raises(DatasetError, match=r"image has 3 channels.*FLAIR, t1gd declared missing"):
        complete_contrasts(three, plan, missing=["flair", "t1ce"])


def test_a_model_trained_without_channel_dropout_refuses_missing(phantom) -> None:
    plan = standin_plan()
    assert plan.train.shift.channel_dropout == 0
    with pytest.raises(DatasetError, match=r"trained without channel dropout.*without FLAIR"):
        complete_contrasts(phantom, plan, missing=["flair"])
    out = complete_contrasts(phantom, plan, missing=["flair"], require_dropout=False)
    assert not out.array[0].any()


def test_prediction_from_a_subset_says_what_it_used(phantom, tmp_path: Path) -> None:
    # The stand-in reads T1w, t1gd and T2w only, so without FLAIR its answer is unchanged.
    run = standin_run(_dropout_plan())
    reference = predict_case(run, phantom)
    assert reference.contrasts_used == tuple(CHANNELS)
    assert reference.contrasts_missing == ()
    three = ScalarImage(phantom.array[1:], phantom.affine)
    pred = predict_case(run, three, missing=["flair"])
    np.testing.assert_array_equal(pred.labels.array, reference.labels.array)
    assert pred.labels.array.any()
    assert pred.contrasts_used == ("T1w", "t1gd", "T2w")
    assert pred.contrasts_missing == ("FLAIR",)
    written = json.loads(write_prediction(pred, tmp_path / "out")["volumes"].read_text())
    assert written["contrasts_used"] == ["T1w", "t1gd", "T2w"]
    assert written["contrasts_missing"] == ["FLAIR"]
    with pytest.raises(DatasetError, match="image has 3 channels"):
        predict_case(run, three)  # FLAIR absent but not declared
