"""``export_run`` / ``export_bundle``: a trained model → a verified, self-describing bundle.

The bundle (folder, or one ``.zip``) holds ``model.onnx``, ``plan.json`` (channels,
labels, regions, preprocessing, thresholds and post-processing), ``bundle.json``
(name, version, input/output contract, threshold policies), ``reference.json``
(predicted region volumes on training cases), ``model_card.json``/``.md``,
``parity.json``, ``versions.json`` and ``manifest.json`` (SHA-256 of every file).
Nothing is written unless the ONNX model matches PyTorch on real preprocessed cases.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from medai import __version__
from medai.errors import ExportError
from medai.export.card import build_model_card, reference_distribution, render_model_card
from medai.export.ensemble import check_same_plan, ensemble_card, ensemble_members
from medai.export.onnx_export import (
    OPSET,
    ImageParityReport,
    ParityReport,
    check_ensemble_parity,
    export_onnx,
)
from medai.fsutil import atomic_path, atomic_write_bytes, fsync_dir, fsync_tree
from medai.image import ScalarImage
from medai.inference.predict import LoadedRun, load_run
from medai.preprocess.cases import SegCase, as_cohort
from medai.preprocess.pipeline import preprocess_image
from medai.preprocess.plan import TaskKind
from medai.runtime.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST,
    Bundle,
    build_manifest,
)
from medai.runtime.predict import Segmenter
from medai.runtime.session import OnnxNetwork

__all__ = ["ExportResult", "export_bundle", "export_run"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and measured."""

    path: Path
    parity: ParityReport | ImageParityReport
    files: dict[str, str]  # name → SHA-256


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(document, indent=2, allow_nan=False) + "\n").encode()


def _versions() -> dict[str, str]:
    out = {"medai": __version__, "python": platform.python_version(), "onnx_opset": str(OPSET)}
    for dist in ("torch", "monai", "onnx", "onnxruntime", "numpy", "scipy", "nibabel"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover - all are requirements
            out[dist] = "not installed"
    return out


def _bundle_info(loaded: LoadedRun, name: str, version: str) -> dict[str, Any]:
    plan, inf = loaded.plan, loaded.plan.inference
    inner = list(plan.regions)[-1] if plan.regions else None
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "version": version,
        "task": "segmentation",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": {
            "channels": plan.channels,
            "spatial_dims": 3,
            "dtype": "float32",
            "onnx_input": "image",
            "layout": "batch, channel, x, y, z (RAS)",
        },
        "output": {
            "onnx_output": "logits",
            "activation": "sigmoid",
            "regions": plan.regions,
            "labels": {str(k): v for k, v in plan.labels.items()},
        },
        "sliding_window": {
            "window": list(plan.train.patch_size),
            "overlap": inf.overlap,
            "blend": "gaussian",
            "sigma_scale": 0.125,
            "tta_flips": inf.tta_flips,
        },
        "thresholds": {
            "probability": {
                "value": inf.threshold,
                "policy": "a voxel is in a region when its sigmoid probability is >= value",
            },
            "min_component_ml": {
                "value": inf.min_component_ml,
                "policy": "outermost-region blobs (26-connected) smaller than value are dropped",
            },
            "inner_min_volume_ml": {
                "value": inf.et_min_volume_ml,
                "region": inner,
                "policy": "an innermost region smaller than value is relabelled as "
                "the next region (chosen on validation, cross-fitted)",
            },
        },
        "files": {
            "model": "model.onnx",
            "plan": "plan.json",
            "reference": "reference.json",
            "model_card": "model_card.md",
            "manifest": MANIFEST,
        },
    }


def export_bundle(
    loaded: LoadedRun | Sequence[LoadedRun],
    out: str | Path,
    *,
    parity_cases: Sequence[ScalarImage],
    reference_cases: Sequence[tuple[str, ScalarImage | Callable[[], ScalarImage]]] = (),
    run_dir: str | Path | Sequence[str | Path] | None = None,
    name: str | None = None,
    version: str = "1",
    as_zip: bool = False,
    overwrite: bool = False,
    tolerance: float = 1e-3,
    dice_floor: float = 0.99,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``loaded`` as a bundle at ``out`` (a folder, or a ``.zip`` file).

    Args:
        loaded: The PyTorch model and its plan; or ``k >= 2`` of them sharing one plan,
            exported as one ensemble bundle (the first one's plan leads).
        out: Bundle folder, or zip path when ``as_zip``.
        parity_cases: Studies whose preprocessed arrays both engines must agree on.
        reference_cases: ``(case_id, study or study loader)`` pairs for the reference
            distribution (loaders keep one study in memory at a time).
        run_dir: The training run (one per model of an ensemble), for the model card's
            records (the first run's) and the members' names.
        name: Bundle name (default: the (first) run folder's or ``out``'s name).
        version: Bundle version.
        as_zip: Write one zip archive instead of a folder.
        overwrite: Replace an existing ``out``.
        tolerance: Largest accepted probability difference, ONNX vs PyTorch.
        dice_floor: Lowest accepted Dice between their thresholded masks.
        progress: Called as ``progress(stage, done, total)``.

    Raises:
        ExportError: If ``out`` exists (without ``overwrite``), nothing can be checked,
            or an ensemble's runs do not share one plan.
        ParityError: If ONNX Runtime does not reproduce PyTorch (for an ensemble: any
            member, or the ensemble's mean).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; choose another output or pass overwrite (--force)")
    runs, dirs = _members_of(loaded, run_dir)
    labels = [d.name if d else f"member {i}" for i, d in enumerate(dirs)]
    check_same_plan([r.plan for r in runs], labels)
    plan = runs[0].plan
    name = name or (dirs[0].name if dirs[0] else out.name.removesuffix(".zip"))
    tell = progress or (lambda stage, done, total: None)
    tell("onnx", 0, 1)
    channels, window = len(plan.channels), plan.train.patch_size
    models = [export_onnx(r.model, in_channels=channels, window=window) for r in runs]
    networks = [OnnxNetwork(m, device="cpu") for m in models]
    inputs = []
    for i, image in enumerate(parity_cases):
        tell("parity", i, len(parity_cases))
        inputs.append(preprocess_image(image, plan.preprocess).image.array.astype(np.float32))
    parity = check_ensemble_parity(
        [r.model for r in runs], networks, [r.plan for r in runs], inputs,
        tolerance=tolerance, dice_floor=dice_floor,
    )  # fmt: skip
    log.info("parity on %d cases: max |dp| %.2e", parity.cases, parity.max_abs_diff)
    model_files, listed, members = ensemble_members(models, [r.plan for r in runs], labels)
    info = _bundle_info(runs[0], name, version)
    if listed:
        info["members"] = listed
        info["files"]["model"] = [entry["model"] for entry in listed]
    segmenter = Segmenter(Bundle(out, info, plan, models[0], {}, "", members), device="cpu")
    volumes, ids = [], []
    for i, (case_id, study) in enumerate(reference_cases):
        tell("reference", i, len(reference_cases))
        image = study if isinstance(study, ScalarImage) else study()
        volumes.append(segmenter.predict(image).volumes_ml)  # as the bundle will predict
        ids.append(case_id)
    card = build_model_card(
        plan,
        name=name,
        version=version,
        run_dir=dirs[0],
        parity=parity.to_json(),
        reference_cases=len(ids),
    )
    if listed:
        card["ensemble"] = ensemble_card(listed)
    files: dict[str, bytes] = {
        **model_files,
        "bundle.json": _json_bytes(info),
        "plan.json": _json_bytes(plan.model_dump(mode="json")),
        "reference.json": _json_bytes(reference_distribution(volumes, ids)),
        "model_card.json": _json_bytes(card),
        "model_card.md": render_model_card(card).encode(),
        "parity.json": _json_bytes(parity.to_json()),
        "versions.json": _json_bytes(_versions()),
    }
    manifest = build_manifest(files)
    files[MANIFEST] = _json_bytes(manifest)
    _publish(files, out, as_zip=as_zip)
    tell("done", 1, 1)
    sums = {k: v["sha256"] for k, v in manifest["files"].items()}
    return ExportResult(out, parity, sums)


def _members_of(
    loaded: LoadedRun | Sequence[LoadedRun], run_dir: str | Path | Sequence[str | Path] | None
) -> tuple[list[LoadedRun], list[Path | None]]:
    """The models of a bundle and their run folders (``None`` where not given)."""
    runs = [loaded] if isinstance(loaded, LoadedRun) else list(loaded)
    if not runs:
        raise ExportError("export needs at least one model; none was given")
    if run_dir is None:
        return runs, [None] * len(runs)
    dirs = [Path(run_dir)] if isinstance(run_dir, str | Path) else [Path(d) for d in run_dir]
    if len(dirs) != len(runs):
        raise ExportError(f"{len(runs)} models but {len(dirs)} run folders; give one each")
    return runs, list(dirs)


def _publish(files: dict[str, bytes], out: Path, *, as_zip: bool) -> None:
    """Write the bundle so that ``out`` is either the old state or the whole new bundle."""
    if as_zip:
        with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for fname, data in sorted(files.items()):
                archive.writestr(fname, data)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for fname, data in files.items():
            atomic_write_bytes(staging / fname, data)
        fsync_tree(staging)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(staging, out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(staging, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _training_cases(run: Path, dataset: str | Path | None) -> list[SegCase]:
    pointer = (
        json.loads((run / "run.json").read_text("utf-8")) if (run / "run.json").is_file() else {}
    )
    if dataset is not None:  # the caller's path: relative to the working directory
        source = Path(dataset)
    elif pointer.get("dataset"):  # run.json's: relative to the run folder
        source = run / str(pointer["dataset"])
    else:
        raise ExportError(
            f"{run}: the run does not name its dataset (no run.json); export needs its training "
            "cases to check the ONNX model: pass --dataset PATH"
        )
    cohort = as_cohort(source)
    split = (
        json.loads((run / "split.json").read_text("utf-8"))
        if (run / "split.json").is_file()
        else {}
    )
    ids = list(split.get("train") or cohort.ids())
    return cohort.subset(ids)


def export_run(
    run_dir: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    dataset: str | Path | None = None,
    as_zip: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    version: str = "1",
    parity_cases: int | None = None,
    reference_cases: int = 50,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a training run: its ``model.pt`` checked on its own training cases.

    Given ``k >= 2`` runs of one plan, export them as one ensemble bundle, checked on
    the first run's training cases (whose plan leads). Classification and regression
    runs go to :func:`medai.export.image_export.export_image_run` (fixed-size input,
    parity on logits and decisions, reference outputs on training and validation cases).

    Args:
        run_dir: Training run folder (``model.pt``, ``run.json``, ``split.json``), or
            several for an ensemble.
        out: Bundle folder, or ``.zip`` path with ``as_zip``.
        dataset: The training dataset, when ``run.json`` does not name it.
        parity_cases: Training cases compared between ONNX Runtime and PyTorch
            (default: 2 studies for segmentation, 16 images for an image run).
        reference_cases: Training cases whose predicted volumes form the reference.

    Raises:
        ExportError: If a run has no weights, its dataset cannot be found, or an
            ensemble's runs do not share one plan (naming the first differing field).
        ParityError: If ONNX Runtime does not reproduce PyTorch.
    """
    runs = [Path(run_dir)] if isinstance(run_dir, str | Path) else [Path(r) for r in run_dir]
    if not runs:
        raise ExportError("export needs at least one training run; none was given")
    for run in runs:
        if not (run / "model.pt").is_file():
            raise ExportError(
                f"{run} has no model.pt; export a finished training run (medai train)"
            )
    loaded = [load_run(run, device="cpu") for run in runs]
    check_same_plan([one.plan for one in loaded], [run.name for run in runs])
    if loaded[0].plan.task is not TaskKind.SEGMENTATION:
        from medai.export.image_export import export_image_run

        return export_image_run(
            runs, loaded, out, dataset=dataset,
            parity_cases=16 if parity_cases is None else parity_cases,
            reference_cases=reference_cases, progress=progress,
            as_zip=as_zip, overwrite=overwrite, name=name, version=version,
        )  # fmt: skip
    cases = _training_cases(runs[0], dataset)
    parity_cases = 2 if parity_cases is None else parity_cases
    if parity_cases < 1 or not cases:
        raise ExportError("export needs at least one training case to check the ONNX model on")
    parity = [c.load_image() for c in cases[:parity_cases]]
    reference = [(c.case_id, c.load_image) for c in cases[:reference_cases]]
    return export_bundle(
        loaded,
        out,
        parity_cases=parity,
        reference_cases=reference,
        run_dir=runs,
        name=name,
        version=version,
        as_zip=as_zip,
        overwrite=overwrite,
        progress=progress,
    )
