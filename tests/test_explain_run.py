"""medai.explain.explain_run and ``medai explain``: heat maps of a trained run on the
inputs' own grids, the pointing game on real tumour masks, the randomisation check.

The run is trained here (seeded, a few seconds on one core): a ResNet-18 at a quarter
width, on the 2D axial "tumour" / "no-tumour" slices of a tiny synthetic cohort
(:mod:`_seg_cohort` phantoms), so every slice has a tumour mask and a brain mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _seg_cohort import make_msd
from medai.cli.main import app
from medai.data import Dataset, import_msd, split_dataset
from medai.data.derive import slice_dataset
from medai.data.derive_slices import NO_TUMOUR, TUMOUR
from medai.errors import ConfigError, DatasetError, PlanError
from medai.explain import ExplainResult, explain_run, pointing_game
from medai.image import LabelMap, ScalarImage
from medai.io import read_image, read_label, write_nifti
from medai.networks import build_plan_network
from medai.preprocess.plan import (
    Architecture,
    InputPlan,
    NetworkPlan,
    Plan,
    TargetPlan,
    TaskKind,
    TrainPlan,
    UncertaintyMethod,
)
from medai.training import train
from medai.training.planner_image import make_image_plan

CASES = 6
SLICES_PER_CASE = 6


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Slices of six phantoms; "tumour" is the positive (last) class."""
    root = tmp_path_factory.mktemp("explain")
    make_msd(root / "msd", cases=CASES, size=24, seed=0)
    cohort = split_dataset(import_msd(root / "msd"), test=0.34, validation=0.17, seed=0)
    derived = slice_dataset(
        cohort, root / "slices", slices_per_case=SLICES_PER_CASE, min_brain_fraction=0.5
    )
    ordered = derived.model_copy(update={"classes": [NO_TUMOUR, TUMOUR]})
    ordered.save(root / "slices" / "dataset.yaml")
    return Dataset.load(root / "slices" / "dataset.yaml")


@pytest.fixture(scope="module")
def run_dir(slices: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    overrides = [
        "train.epochs=4",
        "input.size=[32,32]",
        "network.architecture=resnet18",
        "network.width=0.25",
    ]
    plan = make_image_plan(slices, device="cpu", probe=False, overrides=overrides)
    out = tmp_path_factory.mktemp("run") / "run"
    train(slices, plan, out, device="cpu")
    return out


@pytest.fixture(scope="module")
def explained(
    slices: Dataset, run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExplainResult, list[str]]:
    ids = [c.case_id for c in slices.cases if slices.splits.of(c.case_id)[0] != "train"]
    out = tmp_path_factory.mktemp("ex") / "explain"
    return explain_run(run_dir, slices, case_ids=ids, out_dir=out, max_layers=3), ids


def test_heat_maps_are_written_on_each_input_grid(
    slices: Dataset, explained: tuple[ExplainResult, list[str]]
) -> None:
    result, ids = explained
    assert [e.name for e in result.inputs] == ids
    peaks: list[float] = []  # a slice without evidence may get a blank map (all 0)
    for entry in result.inputs:
        image = slices.load_case_image(slices.case(entry.name))
        heat: ScalarImage = read_image(entry.heatmap)
        assert heat.shape == image.shape == (24, 24, 1)
        np.testing.assert_allclose(heat.affine, image.affine, atol=1e-5)
        assert heat.array.min() >= 0.0
        assert heat.array.max() <= 1.0
        peaks.append(float(heat.array.max()))
        assert entry.overlay.stat().st_size > 1000
        assert entry.explained == TUMOUR
        assert entry.reference == (slices.case(entry.name).target == TUMOUR)
    assert max(peaks) == pytest.approx(1.0)
    gallery = sorted((result.out_dir / "gallery").glob("*.png"))
    assert len(gallery) == min(12, len(ids))
    best = max(result.inputs, key=lambda e: e.output)
    assert gallery[0].name == f"01_{best.overlay.name}"


def test_pointing_game_scores_the_true_positives_on_the_tumour_masks(
    slices: Dataset, explained: tuple[ExplainResult, list[str]]
) -> None:
    result, _ = explained
    data = json.loads(result.json_path.read_text(encoding="utf-8"))
    assert data["method"] == "gradcam"
    assert data["layer"] == result.layer == "layer1"  # 8×8 at 32×32 (layer2: 4×4)
    assert set(data["pointing_game"]) == {"hits", "n", "rate", "chance"}
    scored = [e for e in result.inputs if e.pointing is not None]
    assert scored, "the tiny run found no tumour slice; the pointing game scored nothing"
    assert all(e.predicted and e.reference for e in scored)
    assert [e for e in result.inputs if e.predicted and e.reference] == scored
    # the same score, recomputed from the files on disk: maps, tumour masks, brain masks
    root = Path(slices.cases[0].image).parent.parent  # type: ignore[arg-type]
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    brains: list[np.ndarray] = []
    for entry in scored:
        case = slices.case(entry.name)
        maps.append(read_image(entry.heatmap).array[0])
        masks.append(read_label(case.label).array[0])  # type: ignore[arg-type]
        brains.append(read_label(root / case.clinical["brain_mask"]).array[0])
    expected = pointing_game(maps, masks, support=brains)
    assert result.pointing == expected
    assert data["pointing_game"] == {
        "hits": expected.hits,
        "n": expected.n,
        "rate": expected.rate,
        "chance": expected.chance,
    }
    assert 0.0 < expected.chance < 0.5  # the tumour is a part of the brain


def test_randomising_the_top_layers_changes_the_maps(
    explained: tuple[ExplainResult, list[str]],
) -> None:
    result, _ = explained
    steps = json.loads(result.json_path.read_text(encoding="utf-8"))["randomisation"]
    assert [s["layer"] for s in steps][:1] == ["fc"]
    assert len(steps) == 3 == len(result.randomisation)
    assert all(s["spearman"] < 0.5 for s in steps)  # the trained maps' own is 1


def test_cli_explains_files_with_masks_and_a_dataset_split(
    slices: Dataset, run_dir: Path, tmp_path: Path
) -> None:
    cases = slices.split_cases("test")[:2]
    files = [str(c.image) for c in cases]
    masks = [arg for c in cases for arg in ("--mask", str(c.label))]
    out = tmp_path / "files"
    runner = CliRunner()
    result = runner.invoke(
        app, ["explain", str(run_dir), *files, *masks, "--out", str(out), "--no-check"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    assert "randomisation" not in data
    assert "pointing_game" in data
    assert [e["name"] for e in data["inputs"]] == [c.case_id for c in cases]
    assert all((out / e["heatmap"]).is_file() for e in data["inputs"])
    manifest = str(Path(str(cases[0].image)).parent.parent / "dataset.yaml")
    args = ["explain", str(run_dir), "--dataset", manifest, "--method", "gradcam++"]
    result = runner.invoke(app, [*args, "--max-layers", "2"])
    assert result.exit_code == 0, result.output
    assert "pointing game" in result.output
    assert "Parameter randomisation" in result.output
    assert "gradcam++ at layer1" in result.output
    assert "chance" in result.output
    assert (run_dir / "explain" / "explain.json").is_file()  # the default: RUN/explain
    bad = runner.invoke(app, ["explain", str(run_dir), *files, "--method", "lime"])
    assert bad.exit_code == 2
    assert "use one of gradcam" in bad.output


def test_a_segmentation_run_is_refused(slices: Dataset, tmp_path: Path) -> None:
    plan = Plan(
        network=NetworkPlan(base_channels=2, depth=2, residual_units=0),
        train=TrainPlan(patch_size=(8, 8, 8)),
    )
    run = tmp_path / "seg"
    run.mkdir()
    state = build_plan_network(plan).state_dict()
    torch.save({"plan": plan.model_dump(mode="json"), "model": state}, run / "model.pt")
    image = str(slices.cases[0].image)
    with pytest.raises(PlanError, match="segmentation run; heat maps explain classification"):
        explain_run(run, [image], out_dir=tmp_path / "out")
    result = CliRunner().invoke(app, ["explain", str(run), image])
    assert result.exit_code == 2
    assert "segmentation run" in result.output
    assert not (tmp_path / "out").exists()


def test_inputs_and_masks_must_match(run_dir: Path, slices: Dataset, tmp_path: Path) -> None:
    image = str(slices.cases[0].image)
    with pytest.raises(ValueError, match="masks needs one file per input: 2 for 1"):
        explain_run(run_dir, [image], out_dir=tmp_path, masks=[image, image])
    with pytest.raises(ValueError, match="masks and support apply to file inputs"):
        explain_run(run_dir, slices, out_dir=tmp_path, masks=[image])
    with pytest.raises(ConfigError, match="'layer9' is not a layer of ResNet; did you mean"):
        explain_run(run_dir, [image], out_dir=tmp_path, target_layer="layer9", check=False)


def test_a_3d_run_maps_back_onto_an_lps_volume(tmp_path: Path) -> None:
    """An untrained 3D run (the maps need not be right, only where they are): the heat
    map is written on the input volume's own grid, the overlay at its best slice."""
    torch.manual_seed(0)
    plan = Plan(
        task=TaskKind.BINARY,
        classes=["absent", "present"],
        network=NetworkPlan(architecture=Architecture.RESNET18, width=0.25),
        input=InputPlan(spatial_dims=3, size=(16, 16, 16)),
        target=TargetPlan(uncertainty=UncertaintyMethod.NONE),
    )
    run = tmp_path / "run3d"
    run.mkdir()
    state = build_plan_network(plan).state_dict()
    torch.save({"plan": plan.model_dump(mode="json"), "model": state}, run / "model.pt")
    rng = np.random.default_rng(0)
    data = np.zeros((30, 20, 12), np.float32)
    data[5:25, 4:16, 2:10] = rng.uniform(50, 60, (20, 12, 8))
    affine = np.diag([-1.2, -1.0, 2.5, 1.0])  # L, P, S: reoriented before the network
    affine[:3, 3] = [10.0, 5.0, -12.0]
    write_nifti(ScalarImage(data, affine), tmp_path / "vol.nii.gz")
    mask = np.zeros(data.shape, np.uint8)
    mask[10:15, 6:10, 4:7] = 1
    write_nifti(LabelMap(mask, affine), tmp_path / "vol_mask.nii.gz")
    result = explain_run(
        run,
        [tmp_path / "vol.nii.gz"],
        out_dir=tmp_path / "out",
        masks=[tmp_path / "vol_mask.nii.gz"],
        check=False,
    )
    (entry,) = result.inputs
    assert entry.name == "vol"
    assert entry.reference is True  # a binary run's non-empty mask: a positive reference
    assert result.layer == "layer1"  # the only stage of 4 voxels a side at 16³
    heat: ScalarImage = read_image(entry.heatmap)
    assert heat.shape == data.shape
    np.testing.assert_allclose(heat.affine, affine, atol=1e-5)
    assert 0.0 <= float(heat.array.min()) <= float(heat.array.max()) <= 1.0
    assert entry.overlay.is_file()
    with pytest.raises(DatasetError, match="not on its image's grid"):
        explain_run(
            run,
            [tmp_path / "vol.nii.gz"],
            out_dir=tmp_path / "out2",
            masks=[_other_grid_mask(tmp_path)],
            check=False,
        )


def _other_grid_mask(tmp_path: Path) -> Path:
    path = tmp_path / "other_mask.nii.gz"
    write_nifti(LabelMap(np.ones((8, 8, 8), np.uint8)), path)
    return path


def test_a_multiclass_run_explains_each_input_s_top_class(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plan = Plan(
        task=TaskKind.MULTICLASS,
        classes=["a", "b", "c"],
        network=NetworkPlan(architecture=Architecture.RESNET18, width=0.25),
        input=InputPlan(spatial_dims=2, size=(32, 32)),
        target=TargetPlan(uncertainty=UncertaintyMethod.NONE),
    )
    run = tmp_path / "run"
    run.mkdir()
    state = build_plan_network(plan).state_dict()
    torch.save({"plan": plan.model_dump(mode="json"), "model": state}, run / "model.pt")
    rng = np.random.default_rng(1)
    files = []
    for k in range(2):
        data = np.zeros((28, 28, 1), np.float32)
        data[4:24, 6:22] = rng.uniform(10, 20, (20, 16, 1))
        files.append(write_nifti(ScalarImage(data), tmp_path / f"img{k}.nii.gz"))
    result = explain_run(run, files, out_dir=tmp_path / "out", max_layers=1)
    data = json.loads(result.json_path.read_text(encoding="utf-8"))
    assert "pointing_game" not in data  # no masks
    assert len(data["randomisation"]) == 1
    for entry in result.inputs:
        assert entry.explained in plan.classes
        assert entry.predicted  # the top class is the decision
        assert entry.reference is None
        assert 1 / 3 <= entry.output <= 1.0
        assert read_image(entry.heatmap).shape == (28, 28, 1)
