"""Segmentation uncertainty from TTA members: prediction (PyTorch and runtime), the
written files, and the evaluation's uncertainty section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _seg_cohort import grid_affine, world_phantom
from _standin import standin_plan, standin_run
from medai.evaluation.uncertainty_report import (
    attach_uncertainty,
    read_case_uncertainty,
    uncertainty_path,
    uncertainty_section,
    write_case_uncertainty,
)
from medai.image import ScalarImage
from medai.inference import predict_case, predict_probabilities, segment_image, write_prediction
from medai.io import read_nifti

SHAPE = (24, 26, 22)
LOG2 = float(np.log(2.0))


@pytest.fixture(scope="module")
def study() -> ScalarImage:
    img, _ = world_phantom(SHAPE, grid_affine(SHAPE, (2.0, 2.0, 2.0), np.eye(3)))
    return img


def test_members_leave_the_labels_unchanged_and_carry_a_map(study: ScalarImage) -> None:
    """TTA members averaged in segment_image give the labels of the averaged output;
    the stand-in reads its right-hand neighbour, so flipped members disagree (score > 0)."""
    run = standin_run()
    plan = run.plan

    def averaged(array: np.ndarray) -> np.ndarray:
        return predict_probabilities(run.model, array, patch_size=(32, 32, 32), tta_flips=True)

    mean = segment_image(study, plan, averaged, keep_probabilities=True)
    pred = predict_case(run, study, tta=True, keep_probabilities=True)
    np.testing.assert_array_equal(pred.labels.array, mean.labels.array)
    assert pred.probabilities is not None
    assert mean.probabilities is not None
    np.testing.assert_array_equal(pred.probabilities.array, mean.probabilities.array)
    assert int((pred.labels.array > 0).sum()) > 100  # a real tumour, not an empty answer
    assert pred.uncertainty is not None
    assert mean.uncertainty is not None
    assert pred.uncertainty > 0.0
    assert mean.volume_spread_ml is None  # one (averaged) output: no spread to measure
    assert pred.uncertainty_region == "WT"
    # flipped members move the tumour by one voxel, not its size: the volumes agree
    assert pred.volume_spread_ml == pytest.approx(0.0)
    unc = pred.uncertainty_map
    assert unc is not None
    assert unc.same_grid(study)
    assert unc.num_channels == 1
    assert float(unc.array.min()) >= 0.0
    assert float(unc.array.max()) <= LOG2 + 1e-6
    assert float(unc.array.max()) > 0.3  # members disagree on the tumour border
    plain = predict_case(run, study, tta=False)  # one pass: the entropy of its own output
    assert plain.uncertainty is not None
    assert plain.uncertainty >= 0.0
    assert plain.uncertainty_map is not None
    assert plain.volume_spread_ml is None


def _box_members(shape: tuple[int, ...], grow: int, regions: int = 3) -> np.ndarray:
    """Two members with exact 0/1 probabilities: a box, and the box grown by ``grow``."""
    members = np.zeros((2, regions, *shape), np.float32)
    c = [n // 2 for n in shape]
    members[:, :, c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] = 1.0
    g = [slice(x - 3 - grow, x + 3 + grow) for x in c]
    members[1, :, g[0], g[1], g[2]] = 1.0
    return members


@pytest.mark.parametrize("grow", [0, 1])
def test_score_is_zero_when_members_agree_and_closed_form_otherwise(
    study: ScalarImage, grow: int
) -> None:
    plan = standin_plan(["inference.min_component_ml=0"])
    pred = segment_image(study, plan, lambda a: _box_members(a.shape[1:], grow))
    inner, outer = 6**3, (6 + 2 * grow) ** 3
    # inside WT (mean >= 0.5): the box (mean 1, entropy 0) and the grown shell (mean 0.5)
    assert pred.uncertainty == pytest.approx((outer - inner) * LOG2 / outer, abs=1e-9)
    assert pred.volume_spread_ml == pytest.approx((outer - inner) / 2 * 8e-3)
    assert pred.uncertainty_map is not None
    assert pred.uncertainty_map.same_grid(study)
    assert (float(pred.uncertainty_map.array.max()) > 0.5) == (grow > 0)


def test_runtime_sliding_window_members_match_torch(study: ScalarImage) -> None:
    """The numpy sliding window's members (fed the same network) give the torch path's
    score and map to 1e-4, and the same labels."""
    import torch

    from medai.runtime import sliding_window_probabilities

    run = standin_run(standin_plan(["network.depth=3", "train.patch_size=[16,16,16]"]))

    def network(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return run.model(torch.from_numpy(batch)).numpy()

    def numpy_members(array: np.ndarray) -> np.ndarray:
        return sliding_window_probabilities(
            network, array, window=(16, 16, 16), tta_flips=True, members=True
        )

    ours = segment_image(study, run.plan, numpy_members)
    ref = predict_case(run, study, tta=True)
    assert ours.uncertainty is not None
    assert ref.uncertainty is not None
    assert ours.uncertainty == pytest.approx(ref.uncertainty, abs=1e-4)
    assert ours.uncertainty_map is not None
    assert ref.uncertainty_map is not None
    np.testing.assert_allclose(ours.uncertainty_map.array, ref.uncertainty_map.array, atol=1e-4)
    np.testing.assert_array_equal(ours.labels.array, ref.labels.array)
    array = np.random.default_rng(0).normal(size=(4, 20, 18, 17)).astype(np.float32)
    members = numpy_members(array)
    assert members.shape == (8, 3, 20, 18, 17)
    torch_members = predict_probabilities(
        run.model, array, patch_size=(16, 16, 16), tta_flips=True, members=True
    )
    np.testing.assert_allclose(members, torch_members, atol=1e-5)
    assert np.abs(members[0] - members[1]).max() > 0.1  # the members really differ


def test_write_prediction_writes_the_map_and_the_score(study: ScalarImage, tmp_path: Path) -> None:
    pred = predict_case(standin_run(), study, tta=True)
    paths = write_prediction(pred, tmp_path / "case1.nii.gz")
    assert paths["uncertainty"] == tmp_path / "case1_uncertainty.nii.gz"
    written = read_nifti(paths["uncertainty"], kind=ScalarImage)
    assert written.same_grid(study)
    np.testing.assert_allclose(written.array, pred.uncertainty_map.array, atol=1e-6)  # type: ignore[union-attr]
    volumes = json.loads(paths["volumes"].read_text())
    assert volumes["uncertainty"]["score"] == pytest.approx(pred.uncertainty)
    assert volumes["uncertainty"]["region"] == "WT"
    one = predict_case(standin_run(), study)  # one pass: the score of its own entropy
    plain = write_prediction(one, tmp_path / "case2.nii.gz")
    assert "uncertainty" in plain
    assert json.loads(plain["volumes"].read_text())["uncertainty"]["score"] == pytest.approx(
        one.uncertainty
    )


def _frame(n: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dice = np.clip(rng.uniform(0.5, 0.95, n), 0, 1)
    dice[:2] = [0.05, 0.1]  # two failures
    return pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(n)],
            "patient_id": [f"p{i}" for i in range(n)],
            "split": "test",
            "mean_dice": dice,
        }
    )


def test_uncertainty_section_refers_the_failures(tmp_path: Path) -> None:
    frame = _frame()
    for i, (case_id, dice) in enumerate(zip(frame["case_id"], frame["mean_dice"], strict=True)):
        if i == 5:
            continue  # one case without a sidecar: NaN, left out of the analysis
        path = uncertainty_path(tmp_path, "test", case_id)
        write_case_uncertainty(path, score=1.0 - dice, volume_spread_ml=0.1, region="WT")
    assert read_case_uncertainty(uncertainty_path(tmp_path, "test", "c5")) is None
    scored = attach_uncertainty(frame, tmp_path)
    assert np.isnan(scored["uncertainty"].iloc[5])
    section, document = uncertainty_section(scored, ["test"], n_resamples=200, seed=0)
    assert section is not None
    assert document is not None
    result = document["splits"]["test"]
    assert result["n_cases"] == 19
    assert result["n_referred_at_10pct"] == 1
    kept = scored.drop(index=5)
    expected = kept["mean_dice"].drop(index=0).mean()  # the least certain case is referred
    assert result["mean_dice_at_10pct_referred"] == pytest.approx(expected)
    assert result["mean_dice_at_10pct_referred"] > result["mean_dice_all"]
    assert result["spearman"]["estimate"] == pytest.approx(-1.0)  # a perfect inverse rank
    assert section.figures
    assert section.tables[0].rows[0][0] == "test"
    assert attach_uncertainty(frame, tmp_path / "none") is frame  # no sidecars: no column
    assert uncertainty_section(frame, ["test"], n_resamples=200, seed=0) == (None, None)
    bad = uncertainty_path(tmp_path, "test", "c0")
    bad.write_text("{}")
    with pytest.raises(ValueError, match="predict the case again"):
        read_case_uncertainty(bad)


def test_evaluate_predictions_adds_the_section_to_report_and_metrics(tmp_path: Path) -> None:
    """Label maps shrunk by a known amount score worse; their sidecars rank them, and
    report.html + metrics.json carry the referral value."""
    from _seg_cohort import phantom
    from medai.data import Case, Dataset, Splits
    from medai.evaluation.run_report import evaluate_predictions, prediction_path
    from medai.io import write_nifti
    from medai.preprocess import Plan

    rng = np.random.default_rng(1)
    data, preds = tmp_path / "data", tmp_path / "predictions"
    cases, scores = [], {}
    for k in range(10):
        image, label = phantom(rng, size=16)
        case_id = f"c{k}"
        write_nifti(image, data / f"{case_id}_img.nii.gz")
        write_nifti(label, data / f"{case_id}_seg.nii.gz")
        pred = label.array.copy()
        pred[:, : 4 + k // 2] = 0  # later cases lose more of the tumour
        write_nifti(label.with_array(pred), prediction_path(preds, "test", case_id))
        scores[case_id] = 0.1 * k  # and are more uncertain
        path = uncertainty_path(preds, "test", case_id)
        write_case_uncertainty(path, score=scores[case_id], volume_spread_ml=0.0, region="WT")
        cases.append(Case(patient_id=f"P{k}", case_id=case_id, image=data / f"{case_id}_img.nii.gz",
                          label=data / f"{case_id}_seg.nii.gz"))  # fmt: skip
    regions = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    labels = {0: "background", 1: "edema", 2: "necrosis", 3: "enhancing"}
    channels = ["FLAIR", "T1w", "t1gd", "T2w"]
    dataset = Dataset(name="unc", description="phantoms", channels=channels, labels=labels,
                      regions=regions, cases=cases,
                      splits=Splits(train=[], test=[c.case_id for c in cases]))  # fmt: skip
    plan = Plan(channels=channels, labels=labels, regions=regions)
    (tmp_path / "run").mkdir()
    result = evaluate_predictions(
        tmp_path / "run", plan, dataset=dataset, predictions_dir=preds, out_dir=tmp_path / "out",
        n_resamples=200,
    )  # fmt: skip
    metrics = json.loads(result.metrics_path.read_text())
    test = metrics["uncertainty"]["splits"]["test"]
    dice = result.per_case.set_index("case_id")["mean_dice"]
    assert test["n_cases"] == 10
    assert test["mean_dice_all"] == pytest.approx(dice.mean())
    assert test["mean_dice_at_10pct_referred"] == pytest.approx(dice.drop("c9").mean())
    assert test["spearman"]["estimate"] < -0.8  # the worse, the more uncertain
    assert [c["uncertainty"] for c in metrics["cases"]] == pytest.approx(list(scores.values()))
    html = result.report_path.read_text()
    assert "Uncertainty" in html
    assert "Mean Dice, 10 % referred" in html
    assert f"{test['mean_dice_at_10pct_referred']:.3f}" in html


def test_segmenter_carries_the_score_and_map(study: ScalarImage, tmp_path: Path) -> None:
    """The torch-free Segmenter (ONNX Runtime) gives the PyTorch path's score and map."""
    from medai.export import export_bundle
    from medai.runtime import Segmenter

    run = standin_run(standin_plan(["inference.tta_flips=true"]))
    export_bundle(run, tmp_path / "bundle", parity_cases=[study])
    segmenter = Segmenter(tmp_path / "bundle")
    ours, ref = segmenter.predict(study), predict_case(run, study)
    assert ours.uncertainty is not None
    assert ref.uncertainty is not None
    assert ours.uncertainty == pytest.approx(ref.uncertainty, abs=1e-4)
    assert ours.uncertainty_map is not None
    assert ref.uncertainty_map is not None
    np.testing.assert_allclose(ours.uncertainty_map.array, ref.uncertainty_map.array, atol=1e-4)
    np.testing.assert_array_equal(ours.labels.array, ref.labels.array)
    single = segmenter.predict(study, tta=False)
    assert single.uncertainty is not None
    assert single.volume_spread_ml is None


def test_predict_splits_writes_sidecars_with_and_without_tta(
    study: ScalarImage, tmp_path: Path
) -> None:
    from medai.data import Case, Dataset, Splits
    from medai.io import write_nifti
    from medai.pipeline import predict_splits

    write_nifti(study, tmp_path / "a_img.nii.gz")
    case = Case(patient_id="P", case_id="a", image=tmp_path / "a_img.nii.gz")
    plan = standin_plan()
    dataset = Dataset(name="one", description="phantom", channels=list(plan.channels),
                      labels=plan.labels, regions=plan.regions, cases=[case],
                      splits=Splits(train=[], test=["a"]))  # fmt: skip
    preds = tmp_path / "predictions"
    predict_splits(standin_run(plan), dataset, {"test": [case]}, preds, tta=True)
    sidecar = uncertainty_path(preds, "test", "a")
    score = read_case_uncertainty(sidecar)
    assert score == pytest.approx(predict_case(standin_run(plan), study, tta=True).uncertainty)
    predict_splits(standin_run(plan), dataset, {"test": [case]}, preds, tta=False)
    assert (preds / "test" / "a.nii.gz").is_file()
    one = read_case_uncertainty(sidecar)  # one pass: its own entropy, not the members'
    assert one == pytest.approx(predict_case(standin_run(plan), study, tta=False).uncertainty)
