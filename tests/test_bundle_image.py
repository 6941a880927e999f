"""Classification and regression runs as bundles: ``export_run`` on a tiny 2D run, the
torch-free :class:`~medai.runtime.Classifier` against the PyTorch path, the model card,
manifest and reference, ``medai predict`` on PNG files, and the refusals."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medai.cli.main import app
from medai.data import Dataset, TaskType, import_medmnist_npz
from medai.errors import BundleError, ParityError
from medai.export import export_image_bundle, export_run
from medai.inference import load_run
from medai.inference.classify import predict_images
from medai.preprocess.plan import TaskKind, UncertaintyMethod, apply_overrides
from medai.runtime import (
    Bundle,
    Classifier,
    Segmenter,
    fixed_input_of,
    load_bundle,
    load_predictor,
)
from medai.training import make_plan, train

SMALL = ["network.architecture=resnet18", "network.width=0.25", "train.epochs=2"]
SIZES = {"train": 48, "val": 24, "test": 8}


def _dataset(root: Path, *, regression: bool = False) -> Path:
    """A MedMNIST-like set of 28² noise images; a bright square marks positives (binary)
    or sets the target by its brightness (regression). Returns the manifest's path."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    levels: list[float] = []
    for split, n in SIZES.items():
        x = rng.normal(100, 20, (n, 28, 28))
        level = rng.uniform(0, 80, n) if regression else 70.0 * (rng.random(n) < 0.5)
        for i in range(n):
            cx, cy = rng.integers(6, 22, 2)
            x[i, cx - 4 : cx + 4, cy - 4 : cy + 4] += level[i]
        arrays[f"{split}_images"] = x.clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = (level > 0).astype(int)[:, None]
        levels.extend(level.tolist())
    np.savez(root / "toy.npz", **arrays)  # type: ignore[arg-type]
    data = import_medmnist_npz(root / "toy.npz")
    if regression:
        data = data.model_copy(update={"task": TaskType.REGRESSION, "classes": []})
        for case, value in zip(data.cases, levels, strict=True):
            case.target = float(value)
    return data.save(root / "toy.yaml")


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Dataset]:
    root = tmp_path_factory.mktemp("binary")
    manifest = _dataset(root)
    data = Dataset.load(manifest)
    plan = make_plan(data, time_budget_s=None, device="cpu", probe=False, overrides=SMALL)
    assert plan.task is TaskKind.BINARY
    assert plan.target.uncertainty is UncertaintyMethod.TTA
    train(manifest, plan, root / "run", device="cpu")
    bundle = root / "bundle"
    export_run(root / "run", bundle, reference_cases=20)
    return root / "run", bundle, data


def _test_inputs(data: Dataset, plan_bundle: Bundle) -> tuple[np.ndarray, list[str]]:
    cases = data.split_cases("test")
    arrays = [fixed_input_of(data.load_case_image(c), plan_bundle.plan) for c in cases]
    return np.stack(arrays), [c.case_id for c in cases]


def test_runtime_reproduces_the_pytorch_path(binary_run: tuple[Path, Path, Dataset]) -> None:
    run, path, data = binary_run
    bundle = load_bundle(path)
    assert bundle.task == "binary"
    classifier = load_predictor(bundle)
    assert isinstance(classifier, Classifier)
    images, ids = _test_inputs(data, bundle)
    loaded = load_run(run, device="cpu")
    ref = predict_images(loaded.model, images, loaded.plan, ids, device=loaded.device)
    got = classifier.predict_arrays(images, ids)
    assert [p.decision for p in got] == [p.decision for p in ref]
    assert [p.needs_review for p in got] == [p.needs_review for p in ref]
    out_ref = np.array([p.output for p in ref])
    np.testing.assert_allclose([p.output for p in got], out_ref, atol=1e-4)
    np.testing.assert_allclose([p.uncertainty for p in got], [p.uncertainty for p in ref],
                               atol=1e-4)  # fmt: skip
    assert np.all(np.isfinite([p.uncertainty for p in got]))  # TTA passes ran
    assert out_ref.std() > 1e-3  # the cases differ: the comparison is not of constants
    # a file read by the runtime: the same numbers as the dataset's own reading
    one = classifier.predict(data.split_cases("test")[0].image)  # type: ignore[arg-type]
    assert one.output == pytest.approx(got[0].output, abs=1e-6)


def test_card_manifest_and_reference(binary_run: tuple[Path, Path, Dataset]) -> None:
    run, path, _ = binary_run
    plan = load_run(run, device="cpu").plan
    info = json.loads((path / "bundle.json").read_text())
    assert info["task"] == "binary"
    assert info["input"]["size"] == list(plan.input.size)
    assert info["uncertainty"]["runtime"] == "tta"
    card = json.loads((path / "model_card.json").read_text())
    assert card["task"] == "binary"
    assert card["classes"] == ["0", "1"]
    assert card["threshold"]["value"] == plan.target.threshold is not None
    assert card["threshold"]["policy"] == plan.target.policy.value
    validation = json.loads((run / "validation.json").read_text())
    assert card["validation"]["best_metrics"] == validation["best_metrics"]
    assert card["export_parity"]["max_abs_diff"] < 1e-3
    assert card["export_parity"]["decision_agreement"] == 1.0
    text = (path / "model_card.md").read_text()
    assert "binary" in text
    assert f"{plan.target.threshold}" in text
    assert "youden" in text
    manifest = json.loads((path / "manifest.json").read_text())
    names = {p.name for p in path.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == names
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == entry["sha256"]
    reference = json.loads((path / "reference.json").read_text())
    assert len(reference["cases"]) == 20
    assert reference["cases"][0].startswith("train_")
    quant = reference["outputs"]["probability"]["quantiles"]
    assert 0.0 <= quant["min"] <= quant["median"] <= quant["max"] <= 1.0
    assert reference["uncertainty"]["quantiles"]["max"] > 0


def test_card_names_the_evaluation_with_intervals(
    binary_run: tuple[Path, Path, Dataset], tmp_path: Path
) -> None:
    run, _, _ = binary_run
    metrics = {
        "splits": {
            "test": {
                "n_cases": 8,
                "n_patients": 8,
                "aggregate": {
                    "roc_auc": {"estimate": 0.81, "low": 0.62, "high": 0.95, "n_patients": 8}
                },
            }
        }
    }
    (run / "evaluation").mkdir(exist_ok=True)
    (run / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    try:
        export_run(run, tmp_path / "b.zip", as_zip=True, reference_cases=4)
    finally:
        (run / "evaluation" / "metrics.json").unlink()
    bundle = load_bundle(tmp_path / "b.zip")
    card = bundle.documents["model_card.json"]
    assert card["evaluation"]["splits"]["test"]["metrics"]["roc_auc"]["low"] == 0.62
    from medai.runtime.bundle import read_bundle_files

    text = read_bundle_files(tmp_path / "b.zip")["model_card.md"].decode()
    assert "roc_auc: 0.810 (95 % CI 0.620–0.950, 8 patients)" in text


def test_cli_predict_writes_json_and_csv(
    binary_run: tuple[Path, Path, Dataset], tmp_path: Path
) -> None:
    run, path, data = binary_run
    export = ["export", str(run), str(tmp_path / "b"), "--reference-cases", "2"]
    made = CliRunner().invoke(app, export)
    assert made.exit_code == 0, made.output
    assert "max |Δlogit|" in made.output
    assert "decisions agree 100%" in made.output
    files = [c.image for c in data.split_cases("test")[:3]]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(path), *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    classifier = Classifier(path)
    for file in files:
        doc = json.loads((out / f"{Path(str(file)).stem}.json").read_text())
        pred = classifier.predict(file)  # type: ignore[arg-type]
        assert doc["output"] == pytest.approx(pred.output, abs=1e-6)
        assert doc["decision"] == pred.decision
        assert doc["decision_label"] in ("0", "1")
        assert doc["task"] == "binary"
        assert doc["uncertainty_method"] == "tta"
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("name,input,output,decision")
    assert len(rows) == 4


def test_parity_refusal_writes_nothing(
    binary_run: tuple[Path, Path, Dataset], tmp_path: Path
) -> None:
    run, path, data = binary_run
    loaded = load_run(run, device="cpu")
    images, ids = _test_inputs(data, load_bundle(path))
    with pytest.raises(ParityError, match="logit"):
        export_image_bundle(
            loaded, tmp_path / "x", parity_inputs=images, reference_inputs=images,
            reference_ids=ids, tolerance=-1.0,
        )  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_runtime_refuses_the_wrong_predictor_and_notes_mc_dropout(
    binary_run: tuple[Path, Path, Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    _, path, _ = binary_run
    bundle = load_bundle(path)
    seg = bundle.plan.model_copy(deep=True, update={"task": TaskKind.SEGMENTATION})
    with pytest.raises(BundleError, match="segmentation bundle"):
        Classifier(Bundle(path, bundle.info, seg, bundle.model, {}))
    mc = apply_overrides(bundle.plan.model_copy(deep=True), ["target.uncertainty=mc_dropout"])
    with caplog.at_level(logging.WARNING, logger="medai.runtime.classify"):
        classifier = Classifier(Bundle(path, bundle.info, mc, bundle.model, {}))
    assert classifier.uncertainty is UncertaintyMethod.TTA
    assert "MC dropout cannot run in ONNX" in caplog.text
    assert not isinstance(load_predictor(bundle), Segmenter)


def test_regression_run_exports(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, regression=True)
    data = Dataset.load(manifest)
    plan = make_plan(data, time_budget_s=None, device="cpu", probe=False,
                     overrides=[*SMALL, "target.uncertainty=none"])  # fmt: skip
    assert plan.task is TaskKind.REGRESSION
    train(manifest, plan, tmp_path / "run", device="cpu")
    export_run(tmp_path / "run", tmp_path / "bundle", reference_cases=8)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.task == "regression"
    assert bundle.info["output"]["activation"] == "identity"
    images, ids = _test_inputs(data, bundle)
    loaded = load_run(tmp_path / "run", device="cpu")
    ref = predict_images(loaded.model, images, loaded.plan, ids, device=loaded.device)
    got = Classifier(bundle).predict_arrays(images, ids)
    np.testing.assert_allclose([p.output for p in got], [p.output for p in ref], atol=1e-4)
    assert {p.decision for p in got} == {-1}
    card = bundle.documents["model_card.json"]
    assert card["task"] == "regression"
    assert card["threshold"] is None
    assert card["export_parity"]["decision_agreement"] is None
    assert "value" in bundle.documents["reference.json"]["outputs"]
