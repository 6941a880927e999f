"""``medai export RUN [RUN …] OUT`` and ``medai predict MODEL INPUT… --out DIR``.

Several runs of one plan export as one ensemble bundle (the runtime averages them).

``predict`` runs a bundle with the torch-free runtime (:mod:`medai.runtime`); given a
training run folder instead, it exports a bundle on the fly first (that step needs
torch and the run's training cases).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medai.cli.console import console, progress, user_errors
from medai.cli.options import parse_device
from medai.errors import ConfigError

if TYPE_CHECKING:
    from medai.export import ExportResult

__all__ = ["export_cmd", "export_with_progress", "output_names", "predict_cmd"]

_STAGES = {
    "onnx": "exporting to ONNX",
    "parity": "checking ONNX vs PyTorch",
    "preprocess": "preparing the training images",
    "reference": "reference distribution",
    "done": "exported",
}
_IMAGE_SUFFIXES = (
    ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm",
    ".png", ".jpg", ".jpeg", ".tif", ".tiff",
)  # fmt: skip


def export_with_progress(
    run: Path | list[Path],
    out: Path,
    *,
    dataset: Path | None,
    as_zip: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    version: str = "1",
    reference_cases: int = 50,
) -> ExportResult:
    """:func:`medai.export.export_run` with a progress bar naming each stage (several
    runs: one ensemble bundle)."""
    from medai.export import export_run

    with progress() as bar:
        task = bar.add_task("exporting", total=None)

        def tell(stage: str, done: int, total: int) -> None:
            bar.update(task, description=_STAGES.get(stage, stage), completed=done, total=total)

        return export_run(
            run,
            out,
            dataset=dataset,
            as_zip=as_zip,
            overwrite=overwrite,
            name=name,
            version=version,
            reference_cases=reference_cases,
            progress=tell,
        )


def export_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="Training run folder (holds model.pt); several of one plan: an ensemble."
    ),
    out: Path = typer.Argument(..., help="Bundle folder to write (a .zip file with --zip)."),
    as_zip: bool = typer.Option(False, "--zip", help="Write one .zip archive."),
    dataset: Path | None = typer.Option(None, help="Training dataset, if run.json lacks it."),
    name: str | None = typer.Option(None, help="Bundle name (default: the run folder's)."),
    version: str = typer.Option("1", help="Bundle version."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
    reference_cases: int = typer.Option(50, min=0, help="Training cases for the reference."),
) -> None:
    """Export a run as a bundle: ONNX model checked against PyTorch, plan, model card,
    reference volumes, manifest with checksums. Several runs trained from one plan
    become one ensemble bundle whose members' outputs the runtime averages."""
    from medai.export import ParityReport

    with user_errors():
        result = export_with_progress(
            runs[0] if len(runs) == 1 else runs,
            out,
            dataset=dataset,
            as_zip=as_zip,
            overwrite=force,
            name=name,
            version=version,
            reference_cases=reference_cases,
        )
    par = result.parity
    if isinstance(par, ParityReport):
        figures = f"max |Δp| {par.max_abs_diff:.1e}, lowest Dice {min(par.min_dice.values()):.4f}"
    else:
        agree = "n/a" if par.decision_agreement is None else f"{par.decision_agreement:.0%}"
        figures = f"max |Δlogit| {par.max_abs_diff:.1e}, decisions agree {agree}"
    what = f"ensemble of {len(par.members)}: " if par.members else ""
    console.print(
        f"parity on {par.cases} case(s): {what}{figures} · {len(result.files) + 1} files → "
        f"{result.path}"
    )


def output_names(inputs: list[Path]) -> list[str]:
    """One output name per input: the file name without its image suffix (or the DICOM
    folder's name), made unique with ``-2``, ``-3`` … in input order."""
    names: list[str] = []
    for path in inputs:
        base = path.name
        for suffix in _IMAGE_SUFFIXES:
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        base = base or "study"
        unique, n = base, 1
        while unique in names:
            n += 1
            unique = f"{base}-{n}"
        names.append(unique)
    return names


@contextlib.contextmanager
def _bundle_path(model: Path, dataset: Path | None) -> Iterator[Path]:
    """``model`` if it is a bundle; a bundle exported on the fly from a run folder."""
    if not (model.is_dir() and (model / "model.pt").is_file()):
        yield model
        return
    console.print(
        f"{model} is a training run: exporting it first (medai export RUN OUT keeps the bundle)"
    )
    with tempfile.TemporaryDirectory(prefix="medai-bundle-") as tmp:
        bundle = Path(tmp) / model.name
        export_with_progress(model, bundle, dataset=dataset, reference_cases=0)
        yield bundle


def predict_cmd(
    model: Path = typer.Argument(..., help="Bundle (folder or .zip), or a training run folder."),
    inputs: list[Path] = typer.Argument(..., help="NIfTI files or DICOM study folders."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <study>.nii.gz each."),
    tta: bool | None = typer.Option(None, help="Flip test-time augmentation (bundle default)."),
    probabilities: bool = typer.Option(False, help="Also write region probabilities."),
    device: str | None = typer.Option(None, help="cpu, cuda (default: best available)."),
    threads: int = typer.Option(0, min=0, help="ONNX Runtime threads (0: one per core)."),
    dataset: Path | None = typer.Option(None, help="A run's training dataset, if needed."),
    dicom: bool = typer.Option(True, help="For DICOM studies, also write a SEG and an SR."),
    missing: list[str] | None = typer.Option(
        None, help="A contrast every study lacks (repeat for more; needs channel dropout)."
    ),
) -> None:
    """Segment studies with a bundle (ONNX Runtime, no torch); each label map lands on
    its study's own grid as OUT/<study>.nii.gz, with OUT/<study>_volumes.json, and for a
    DICOM study OUT/<study>_seg.dcm (DICOM SEG) and OUT/<study>_sr.dcm (TID 1500 SR).
    A classification / regression bundle writes OUT/<input>.json (output, decision,
    uncertainty, needs_review) per input and OUT/predictions.csv."""
    from medai.inference.study import write_prediction
    from medai.runtime import Segmenter, load_predictor, write_dicom_results

    with user_errors():
        chosen = parse_device(device)
        if chosen not in (None, "cpu") and not chosen.startswith("cuda"):
            raise ConfigError(f"--device {device!r}: bundles run on cpu or cuda")
        t0 = time.perf_counter()
        with _bundle_path(model, dataset) as bundle_path:
            predictor = load_predictor(bundle_path, threads=threads, device=chosen)
        names = output_names(inputs)
        if not isinstance(predictor, Segmenter):  # a classification / regression bundle
            from medai.cli.image_predict import predict_images_cmd

            predict_images_cmd(predictor, inputs, names, out)
            return
        segmenter = predictor
        with progress() as bar:
            task = bar.add_task(f"segmenting with {segmenter.loaded.name}", total=len(inputs))
            for path, name in zip(inputs, names, strict=True):
                bar.update(task, description=f"segmenting {name}")
                study = segmenter.read(path, missing=missing or ())
                pred = segmenter.predict(
                    study, tta=tta, keep_probabilities=probabilities, missing=missing or ()
                )
                paths = write_prediction(pred, out / f"{name}.nii.gz")
                if dicom:
                    paths.update(write_dicom_results(pred, study, segmenter.loaded, out / name))
                vols = " ".join(f"{k} {v:.2f} mL" for k, v in pred.volumes_ml.items())
                bar.console.print(f"{name}: {vols} → {paths['labels']}")
                bar.advance(task)
    console.print(
        f"{len(inputs)} stud{'y' if len(inputs) == 1 else 'ies'} in "
        f"{time.perf_counter() - t0:.1f} s → {out}"
    )
