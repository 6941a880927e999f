"""``evaluate_run`` / ``medai evaluate`` on a tiny trained run: metrics, sections, flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from _seg_cohort import phantom
from medai.data import Case, Dataset, Splits
from medai.errors import DatasetError
from medai.evaluation import Answer, ReportSection, compute_dice, figure_to_png, plot_overlay
from medai.evaluation.browser import find_broken_images
from medai.evaluation.checklist import RunFacts, answer_checklist
from medai.evaluation.run_report import (
    BRATS_EMPTY_DISTANCE_MM,
    EvaluationResult,
    evaluate_predictions,
    region_metrics,
)
from medai.fsutil import file_sha256
from medai.image import LabelMap
from medai.io import read_nifti, write_nifti
from medai.pipeline import evaluate_run
from medai.preprocess import Plan, apply_overrides
from medai.training import train

REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
SITES = {"train": "AB", "test": "ABC", "external": "D"}
PLANTED_SITE = "C"  # its reference labels are shifted off the tumour: Dice ~ 0 there
TINY = [
    "train.patch_size=[16,16,16]", "train.epochs=2", "train.time_budget_s=null",
    "train.steps_per_epoch=4", "train.val_every=2", "train.val_fraction=0.2", "train.lr=0.01",
    "network.depth=3", "network.base_channels=8", "network.residual_units=1",
    "inference.min_component_ml=0",
]  # fmt: skip


def _shift(label: LabelMap, by: int) -> LabelMap:
    """Translate the label by ``by`` voxels on every axis (zero fill): off the tumour."""
    out = np.zeros_like(label.array)
    out[:, by:, by:, by:] = label.array[:, :-by, :-by, :-by]
    return label.with_array(out)


def _cohort(root: Path) -> Path:
    rng = np.random.default_rng(3)
    cases: list[Case] = []
    splits: dict[str, list[str]] = {"train": [], "test": [], "external": []}
    counts = {"train": 3, "test": 4, "external": 3}  # per site
    for split, sites in SITES.items():
        for site in sites:
            for k in range(counts[split]):
                case_id = f"{split}_{site}{k}"
                image, label = phantom(rng)
                if split == "test" and site == PLANTED_SITE:
                    label = _shift(label, 10)
                image_path, label_path = (
                    root / f"{case_id}_img.nii.gz",
                    root / f"{case_id}_seg.nii.gz",
                )
                write_nifti(image, image_path)
                write_nifti(label, label_path)
                clinical = {"site": site, "sex": "FM"[k % 2], "age": 35 + 9 * k, "grade": "HGG"}
                cases.append(
                    Case(patient_id=f"P_{case_id}", case_id=case_id, image=image_path,
                         label=label_path, clinical=clinical)
                )  # fmt: skip
                splits[split].append(case_id)
    dataset = Dataset(
        name="tiny-eval",
        description="phantom spheres; labels drawn by the generator",
        channels=["FLAIR", "T1w", "t1gd", "T2w"],
        labels={0: "background", 1: "edema", 2: "necrosis", 3: "enhancing"},
        regions=REGIONS,
        cases=cases,
        splits=Splits(train=splits["train"], test=splits["test"], external=splits["external"]),
    )
    return dataset.save(root / "dataset.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evalrun")
    manifest = _cohort(root / "data")
    dataset = Dataset.load(manifest)
    plan = Plan(channels=dataset.channels, labels=dataset.labels, regions=dataset.regions)
    run = root / "run"
    train(manifest, apply_overrides(plan, TINY), run, device="cpu")
    # the trainer names the dataset it was trained on; evaluate_run finds it there
    assert json.loads((run / "run.json").read_text()) == {"dataset": str(manifest.resolve())}
    return run, manifest


@pytest.fixture(scope="module")
def result(trained: tuple[Path, Path]) -> EvaluationResult:
    run, _ = trained
    extra = ReportSection("Radiomics and survival", paragraphs=["added by the radiomics hook"])
    return evaluate_run(
        run, n_resamples=300, min_subgroup_cases=3, extra_sections=[extra], device="cpu"
    )


def test_metrics_json_matches_independent_dice(
    result: EvaluationResult, trained: tuple[Path, Path]
) -> None:
    _, manifest = trained
    dataset = Dataset.load(manifest)
    doc = json.loads(result.metrics_path.read_text())
    assert result.metrics_path == trained[0] / "evaluation" / "metrics.json"
    assert set(doc["splits"]) == {"test", "external"}
    assert doc["splits"]["test"]["n_cases"] == 12
    assert doc["splits"]["external"]["n_cases"] == 3
    assert len(doc["cases"]) == 15
    assert [c["answer"] for c in doc["checklist"]] == [
        Answer(c.answer).value for c in result.checklist
    ]
    for row in doc["cases"]:
        case = dataset.case(row["case_id"])
        pred = read_nifti(result.out_dir / "predictions" / row["split"] / f"{case.case_id}.nii.gz",
                          kind=LabelMap)  # fmt: skip
        ref = dataset.load_case_label(case)
        assert ref is not None
        for region, members in REGIONS.items():
            p, r = np.isin(pred.numpy3d(), members), np.isin(ref.numpy3d(), members)
            if not p.any() and not r.any():
                expected = 1.0
            else:
                expected = 2 * np.count_nonzero(p & r) / (p.sum() + r.sum())
            assert row[f"{region}/dice"] == pytest.approx(expected, abs=1e-12)
            assert row[f"{region}/dice"] == pytest.approx(compute_dice(p, r), abs=1e-12)
    # predictions are not empty: off the planted site, every case's tumour is found
    found = [c["WT/dice"] for c in doc["cases"] if not c["case_id"].startswith("test_C")]
    assert min(found) > 0.7, found  # measured: 0.88 and up
    for split, part in doc["splits"].items():
        values = [c["WT/dice"] for c in doc["cases"] if c["split"] == split]
        wt = part["aggregate"]["WT/dice"]
        assert wt["estimate"] == pytest.approx(np.mean(values), abs=1e-12)
        assert wt["low"] <= wt["estimate"] <= wt["high"]
        assert wt["n_patients"] == len(values)


def test_report_sections_internal_external_and_hook(result: EvaluationResult) -> None:
    html = result.report_path.read_text(encoding="utf-8")
    assert result.report_path.name == "report.html"
    for title in (
        "Internal test set (split &#39;test&#39;)",
        "External test set (split &#39;external&#39;)",
        "Subgroups — test",
        "Radiology checklist",
        "Preprocessing and inference (plan)",
        "Training",
        "Radiomics and survival",
    ):
        assert title in html, title
    assert 'src="http' not in html
    assert "src='http" not in html
    assert (
        html.count('src="data:image/png;base64,') >= 1 + 2 * (1 + 3) + 2
    )  # curve, dists, overlays, forests


def test_planted_site_drop_is_flagged(result: EvaluationResult) -> None:
    assert result.subgroups is not None
    table = result.subgroups.table
    site = table[(table["split"] == "test") & (table["column"] == "site")]
    planted = site[site["group"] == PLANTED_SITE].iloc[0]
    others = site[site["group"] != PLANTED_SITE]
    assert planted["flagged"]
    assert planted["largest_gap"]
    assert planted["estimate"] < others["estimate"].min()
    # the held-out site is analysed on its own, never pooled with the internal test set
    assert set(result.subgroups.overall["split"]) == {"test", "external"}


def test_checklist_answered_from_the_run(
    result: EvaluationResult, trained: tuple[Path, Path]
) -> None:
    run, _ = trained
    answers = {item.question.split("?")[0]: item for item in result.checklist}
    assert len(result.checklist) == 9
    assert answers["Are the training, validation and test sets defined"].answer is Answer.YES
    assert answers["Is an external test set used for the final figures"].answer is Answer.YES
    assert "D" in answers["Is an external test set used for the final figures"].how
    assert answers["Were multi-vendor (multi-site) images used"].answer is Answer.YES
    assert answers["Were the results compared with experts"].answer is Answer.NO
    assert answers["Is the way the model decides shown"].answer is Answer.NO
    model = answers["Is the model available"]
    assert model.answer is Answer.YES
    assert file_sha256(run / "model.pt") in model.how
    assert "2 × 2 × 2 mm" in answers["Is the preprocessing described"].how
    sizes = answers["Are the set sizes justified"]
    assert sizes.answer is Answer.NO
    assert "12 patients" in sizes.how


def test_report_images_render_in_chromium(result: EvaluationResult) -> None:
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("/usr/bin/chromium is not installed")
    count, broken = find_broken_images(result.report_path)
    assert count >= 10
    assert broken == []


def _facts(**changes: object) -> RunFacts:
    base: dict[str, object] = {
        "split_ids": {"train": ["a", "b"], "validation": ["c"], "test": ["d", "e"]},
        "patients": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"},
        "ci_widths": {"WT": 0.2},
        "test_patients": 2,
    }
    base.update(changes)
    return RunFacts(**base)  # type: ignore[arg-type]


def test_checklist_rules() -> None:
    items = answer_checklist(_facts())
    assert items[0].answer is Answer.YES
    assert items[1].answer is Answer.NO
    assert "no external split" in items[1].how
    assert items[2].answer is Answer.NO  # no site column
    assert items[3].answer is Answer.NO
    assert "about 8 test patients" in items[3].how
    assert items[8].answer is Answer.NO
    leaky = answer_checklist(_facts(patients={"a": "1", "b": "2", "c": "3", "d": "1", "e": "5"}))
    assert leaky[0].answer is Answer.NO
    assert "leak" in leaky[0].how
    precise = answer_checklist(_facts(ci_widths={"WT": 0.05}))
    assert precise[3].answer is Answer.YES


def test_errors_name_the_fix(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, manifest = trained
    with pytest.raises(ValueError, match="its own training cases"):
        evaluate_run(run, split="train", dataset=manifest)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.pt").write_bytes((run / "model.pt").read_bytes())
    with pytest.raises(DatasetError, match="--dataset"):
        evaluate_run(bare)
    dataset = Dataset.load(manifest).model_copy(update={"splits": Splits()})
    with pytest.raises(DatasetError, match="no case in split 'test'"):
        evaluate_run(run, dataset=dataset)


def test_cli_evaluate(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from medai.cli.main import app

    run, manifest = trained
    out = tmp_path / "cli"
    args = ["evaluate", str(run), "--dataset", str(manifest), "--out", str(out),
            "--n-resamples", "200", "--min-subgroup", "3", "--device", "cpu"]  # fmt: skip
    response = CliRunner().invoke(app, args, terminal_width=200)
    assert response.exit_code == 0, response.output
    assert "WT" in response.output
    assert "external (n=3)" in response.output
    assert "flagged" in response.output
    assert "site = C" in response.output
    assert (out / "report.html").is_file()
    assert (out / "metrics.json").is_file()
    bad = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert bad.exit_code == 2


def test_region_metrics_brats_empty_convention() -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    ref = np.zeros((1, 8, 8, 8), np.uint8)
    ref[0, 2:5, 2:5, 2:5] = 1  # WT only: no TC / ET in the reference
    pred = ref.copy()
    pred[0, 3, 3, 3] = 3  # one voxel of ET predicted where the reference has none
    row = region_metrics(LabelMap(pred, affine), LabelMap(ref, affine), REGIONS)
    assert row["WT/dice"] == 1.0
    assert row["WT/hd95"] == 0.0
    assert row["TC/dice"] == 0.0  # one empty: Dice 0, distances = 373.13 mm
    assert row["TC/hd95"] == row["ET/assd"] == BRATS_EMPTY_DISTANCE_MM
    assert row["TC/abs_volume_error_mm3"] == 2.0  # one voxel of 1 × 1 × 2 mm
    assert np.isnan(row["ET/rel_volume_error"])
    empty = LabelMap(np.zeros_like(ref), affine)
    both_empty = region_metrics(empty, empty, {"ET": [3]})
    assert both_empty == pytest.approx(
        {"ET/dice": 1.0, "ET/iou": 1.0, "ET/hd95": 0.0, "ET/assd": 0.0, "ET/nsd": 1.0,
         "ET/volume_pred_mm3": 0.0, "ET/volume_ref_mm3": 0.0, "ET/abs_volume_error_mm3": 0.0,
         "ET/rel_volume_error": 0.0, "mean_dice": 1.0}
    )  # fmt: skip
    assert row["mean_dice"] == pytest.approx(1 / 3)


def test_plot_overlay_checks_shapes_and_handles_empty_masks() -> None:
    image = np.arange(36, dtype=float).reshape(6, 6)
    mask = np.zeros((6, 6), bool)
    mask[2:4, 2:4] = True
    figure = plot_overlay(image, mask, np.zeros((6, 6)), aspect=2.0, title="case")
    assert figure_to_png(figure).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="one shape"):
        plot_overlay(image, mask[:5], mask)


def test_reuse_predictions_reads_newer_files_only(
    result: EvaluationResult, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = trained
    out = tmp_path / "eval"
    shutil.copytree(result.out_dir / "predictions", out / "predictions")
    first = result.per_case.iloc[0]
    path = out / "predictions" / first["split"] / f"{first['case_id']}.nii.gz"
    planted = read_nifti(path, kind=LabelMap)
    write_nifti(planted.with_array(np.zeros_like(planted.array)), path)  # newer than model.pt
    again = evaluate_run(
        run, out_dir=out, n_resamples=100, min_subgroup_cases=3, reuse_predictions=True,
        device="cpu",
    )  # fmt: skip
    row = again.per_case.set_index("case_id").loc[first["case_id"]]
    assert first["WT/dice"] > 0.5  # the model's own prediction of that case overlaps
    assert row["WT/dice"] == 0.0  # the planted empty prediction was read, not re-predicted
    others = again.per_case.set_index("case_id").drop(first["case_id"])["WT/dice"]
    expected = result.per_case.set_index("case_id").drop(first["case_id"])["WT/dice"]
    np.testing.assert_allclose(others.to_numpy(), expected.loc[others.index].to_numpy())


def test_evaluation_scores_prediction_files_without_the_model(
    result: EvaluationResult, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """``evaluate_predictions`` reads label maps, never the model: a run folder without
    any ``*.pt`` scores exactly as ``evaluate_run`` did, and a missing prediction is
    refused with the step that writes it."""
    from medai.inference import load_run

    run, _ = trained
    plan = load_run(run, device="cpu").plan
    bare = tmp_path / "run"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("*.pt", "evaluation"))
    assert not list(bare.rglob("*.pt"))
    preds = tmp_path / "predictions"
    shutil.copytree(result.out_dir / "predictions", preds)
    again = evaluate_predictions(
        bare, plan, predictions_dir=preds, out_dir=tmp_path / "out", n_resamples=300,
        min_subgroup_cases=3,
    )  # fmt: skip
    assert again.report_path.is_file()
    assert again.splits == ["test", "external"]
    assert len(again.per_case) == 15
    pd.testing.assert_frame_equal(again.per_case, result.per_case, check_exact=True)
    for split in ("test", "external"):
        assert again.aggregates[split]["mean_dice"] == result.aggregates[split]["mean_dice"]
    gone = result.per_case.iloc[-1]
    (preds / gone["split"] / f"{gone['case_id']}.nii.gz").unlink()
    with pytest.raises(DatasetError, match="predict the split first"):
        evaluate_predictions(bare, plan, predictions_dir=preds, out_dir=tmp_path / "out2",
                             n_resamples=100)  # fmt: skip
