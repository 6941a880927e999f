"""Export a classification / regression run: the segmentation export's steps (ONNX,
parity, reference, model card, manifest, atomic publish) with the parts that differ
by task: a fixed-size input with only the batch axis dynamic, parity on logits and
decisions, the reference distribution of outputs and uncertainties, and a card that
names the task, the classes and the decision threshold with its policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medai.data import Case, Dataset
from medai.errors import ExportError
from medai.evaluation.run_report import resolve_run_dataset
from medai.export.bundle_writer import (
    ExportResult,
    Progress,
    _json_bytes,
    _members_of,
    _publish,
    _versions,
)
from medai.export.ensemble import check_same_plan, ensemble_card, ensemble_members
from medai.export.image_card import (
    build_image_model_card,
    image_reference_distribution,
    render_image_model_card,
)
from medai.export.onnx_export import check_ensemble_image_parity, export_onnx
from medai.inference.predict import LoadedRun
from medai.preprocess.plan import Plan, TaskKind
from medai.runtime.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST,
    Bundle,
    build_manifest,
)
from medai.runtime.classify import MC_DROPOUT_NOTE, Classifier, fixed_input_of
from medai.runtime.session import OnnxNetwork

__all__ = ["export_image_bundle", "export_image_run", "image_bundle_info"]

log = logging.getLogger(__name__)


def image_bundle_info(plan: Plan, name: str, version: str) -> dict[str, Any]:
    """``bundle.json`` of a classification / regression bundle."""
    from medai.export.image_card import _threshold

    target = plan.target
    runtime_method = target.uncertainty.value
    note = None
    if runtime_method == "mc_dropout":
        runtime_method, note = "tta", MC_DROPOUT_NOTE
    activation = {TaskKind.MULTICLASS: "softmax", TaskKind.REGRESSION: "identity"}
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "version": version,
        "task": plan.task.value,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": {
            "channels": list(plan.channels),
            "spatial_dims": plan.input.spatial_dims,
            "size": list(plan.input.size),
            "dtype": "float32",
            "onnx_input": "image",
            "layout": "batch, channel, " + ", ".join("xyz"[: plan.input.spatial_dims]),
            "preprocessing": "medai.preprocess.fixed.fixed_input with plan.json's input",
        },
        "output": {
            "onnx_output": "logits",
            "activation": activation.get(plan.task, "sigmoid"),
            "classes": list(plan.classes),
            "temperature": target.temperature,
            "target_mean": target.mean,
            "target_std": target.std,
        },
        "thresholds": {"decision": _threshold(plan)},
        "uncertainty": {
            "trained_with": target.uncertainty.value,
            "runtime": runtime_method,
            "passes": target.uncertainty_passes,
            "review_above": target.review_above,
            "note": note,
        },
        "files": {
            "model": "model.onnx",
            "plan": "plan.json",
            "reference": "reference.json",
            "model_card": "model_card.md",
            "manifest": MANIFEST,
        },
    }


def export_image_bundle(
    loaded: LoadedRun | Sequence[LoadedRun],
    out: str | Path,
    *,
    parity_inputs: np.ndarray,
    reference_inputs: np.ndarray,
    reference_ids: Sequence[str] = (),
    run_dir: str | Path | Sequence[str | Path] | None = None,
    name: str | None = None,
    version: str = "1",
    as_zip: bool = False,
    overwrite: bool = False,
    tolerance: float = 1e-3,
    agreement_floor: float = 0.99,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a classification / regression model as a bundle at ``out``.

    Args:
        loaded: The PyTorch model and its plan; or ``k >= 2`` of them sharing one plan,
            exported as one ensemble bundle (the first one's plan leads).
        out: Bundle folder, or zip path when ``as_zip``.
        parity_inputs: Preprocessed ``(N, C, *size)`` cases both engines must agree on.
        reference_inputs: Preprocessed cases whose predictions form the reference.
        reference_ids: Their case ids.
        run_dir: The training run (one per model of an ensemble).
        tolerance: Largest accepted logit difference, ONNX vs PyTorch.
        agreement_floor: Lowest accepted share of equal decisions.

    Raises:
        ExportError: If ``out`` exists (without ``overwrite``), nothing can be checked,
            or an ensemble's runs do not share one plan.
        ParityError: If ONNX Runtime does not reproduce PyTorch (any member, or the
            ensemble).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; choose another output or pass overwrite (--force)")
    runs, dirs = _members_of(loaded, run_dir)
    labels = [d.name if d else f"member {i}" for i, d in enumerate(dirs)]
    plans = [r.plan for r in runs]
    check_same_plan(plans, labels)
    plan = plans[0]
    name = name or (dirs[0].name if dirs[0] else out.name.removesuffix(".zip"))
    tell = progress or (lambda stage, done, total: None)
    tell("onnx", 0, 1)
    models = [
        export_onnx(r.model, in_channels=len(plan.channels), window=plan.input.size,
                    dynamic_spatial=False)
        for r in runs
    ]  # fmt: skip
    tell("parity", 0, 1)
    networks = [OnnxNetwork(m, device="cpu") for m in models]
    parity = check_ensemble_image_parity(
        [r.model for r in runs], networks, plans, np.asarray(parity_inputs, np.float32),
        tolerance=tolerance, agreement_floor=agreement_floor,
    )  # fmt: skip
    log.info("parity on %d cases: max |dlogit| %.2e", parity.cases, parity.max_abs_diff)
    model_files, listed, members = ensemble_members(models, plans, labels)
    info = image_bundle_info(plan, name, version)
    if listed:
        info["members"] = listed
        info["files"]["model"] = [entry["model"] for entry in listed]
    tell("reference", 0, 1)
    bundle = Bundle(out, info, plan, models[0], {}, "", members)
    classifier = Classifier(bundle, device="cpu")
    refs = np.asarray(reference_inputs, np.float32)
    preds = classifier.predict_arrays(refs, reference_ids) if len(refs) else []
    card = build_image_model_card(
        plan, name=name, version=version, run_dir=dirs[0],
        parity=parity.to_json(), reference_cases=len(preds),
    )  # fmt: skip
    if listed:
        card["ensemble"] = ensemble_card(listed)
    files: dict[str, bytes] = {
        **model_files,
        "bundle.json": _json_bytes(info),
        "plan.json": _json_bytes(plan.model_dump(mode="json")),
        "reference.json": _json_bytes(_finite(image_reference_distribution(preds, plan))),
        "model_card.json": _json_bytes(_finite(card)),
        "model_card.md": render_image_model_card(card).encode(),
        "parity.json": _json_bytes(parity.to_json()),
        "versions.json": _json_bytes(_versions()),
    }
    manifest = build_manifest(files)
    files[MANIFEST] = _json_bytes(manifest)
    _publish(files, out, as_zip=as_zip)
    tell("done", 1, 1)
    sums = {k: v["sha256"] for k, v in manifest["files"].items()}
    return ExportResult(out, parity, sums)


def _finite(document: Any) -> Any:
    """``document`` with NaN and infinity as ``null`` (JSON has neither)."""
    if isinstance(document, dict):
        return {k: _finite(v) for k, v in document.items()}
    if isinstance(document, list | tuple):
        return [_finite(v) for v in document]
    if isinstance(document, float) and not np.isfinite(document):
        return None
    return document


def _run_cases(run: Path, data: Dataset) -> list[Case]:
    """The run's training then validation cases (``split.json``; else the dataset's)."""
    split = run / "split.json"
    if split.is_file():
        ids = json.loads(split.read_text("utf-8"))
        return [data.case(i) for i in [*ids.get("train", []), *ids.get("validation", [])]]
    return data.split_cases("train") + data.split_cases("validation")


def export_image_run(
    run: Path | Sequence[Path],
    loaded: LoadedRun | Sequence[LoadedRun],
    out: str | Path,
    *,
    dataset: Dataset | str | Path | None = None,
    parity_cases: int = 16,
    reference_cases: int = 50,
    progress: Progress | None = None,
    **options: Any,
) -> ExportResult:
    """Export a classification / regression run (or an ensemble of runs, the first
    leading), checked on the (first) run's own training cases (``options``:
    ``as_zip``, ``overwrite``, ``name``, ``version`` as :func:`export_image_bundle`
    takes them).

    Raises:
        ExportError: If the run's cases cannot be found.
        ParityError: If ONNX Runtime does not reproduce PyTorch.
    """
    runs = [run] if isinstance(run, Path) else list(run)
    models = [loaded] if isinstance(loaded, LoadedRun) else list(loaded)
    data, _ = resolve_run_dataset(runs[0], dataset)
    cases = _run_cases(runs[0], data)
    if parity_cases < 1 or not cases:
        raise ExportError("export needs at least one training case to check the ONNX model on")
    wanted = cases[: max(parity_cases, reference_cases)]
    arrays = []
    tell = progress or (lambda stage, done, total: None)
    for i, case in enumerate(wanted):
        tell("preprocess", i, len(wanted))
        image = data.load_case_image(case)
        arrays.append(fixed_input_of(image, models[0].plan))
    stacked = np.stack(arrays).astype(np.float32)
    return export_image_bundle(
        models, out, parity_inputs=stacked[:parity_cases],
        reference_inputs=stacked[:reference_cases],
        reference_ids=[c.case_id for c in wanted[:reference_cases]],
        run_dir=runs, progress=progress, **options,
    )  # fmt: skip
