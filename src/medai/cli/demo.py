"""``medai demo``: the main job end to end on the embedded defaults.

Real DICOM files (the ``pydicom-data`` package) are read, one series is converted and a
copy de-identified; then a synthetic glioma cohort is generated, checked and split, a
segmentation model is trained and tested, the run is evaluated into a report,
radiomics from the predicted tumour masks feed a survival model, and the model is
exported as a bundle that segments one test study, as DICOM, into a SEG and an SR;
last, three image → label / number tasks (grade, tumour on slices with heat maps, brain
age) are derived from the cohort, trained and evaluated.
Each step says what it did; the outputs stay in the demo folder for a look.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from medai.cli.console import console, progress, user_errors
from medai.cli.demo_image import image_tasks_step
from medai.fsutil import write_secret_text
from medai.image import ScalarImage
from medai.io import find_series, read_image, write_image
from medai.io.deid import generate_key
from medai.io.deid_files import deidentify_path


@contextmanager
def _step(title: str) -> Iterator[None]:
    console.rule(f"[bold cyan]{title}")
    start = time.perf_counter()
    yield
    console.print(f"[dim]{title}: {time.perf_counter() - start:.1f} s[/]")


#: The scanner site whose patients form the external test set.
EXTERNAL_SITE = "site-D"
#: Texture and shape features of the whole tumour offered to the outcome model, next to
#: its size (log volume) and enhancing fraction, both from the predicted masks.
SURVIVAL_FEATURES = r"^WT_t1gd_(morph_sphericity|ih_entropy|glcm_joint_entr|stat_skew)"


def _pydicom_data_folder() -> Path:
    import data_store  # the pydicom-data package

    return Path(data_store.__file__).parent / "data"


def _dicom_step(out: Path) -> None:
    """Read every series of pydicom-data, convert the largest MR volume, de-identify."""
    folder = _pydicom_data_folder()
    series = find_series(folder)
    readable = [s for s in series if s.problem is None and s.size is not None]
    table = Table(title=f"pydicom-data: {len(series)} series, {len(readable)} regular volumes")
    for column in ("modality", "description", "size", "spacing (mm)", "files"):
        table.add_column(column, overflow="fold")
    for s in series:
        size = "×".join(map(str, s.size)) if s.size else f"— ({s.problem})"
        spacing = "×".join(f"{v:.3g}" for v in s.spacing) if s.spacing else "—"
        table.add_row(s.modality, s.description[:30], size, spacing, str(s.num_files))
    console.print(table)
    volumes = [s for s in readable if s.modality == "MR" and s.size is not None]
    chosen = max(volumes, key=lambda s: s.size[2] if s.size else 0)
    image: ScalarImage = read_image(chosen.files[0].parent, series_uid=chosen.uid)
    nifti = write_image(image, out / "dicom" / "converted_mr.nii.gz")
    console.print(f"converted MR series {chosen.uid} ({image!r}) → {nifti}")

    key = generate_key()
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    write_secret_text(out / "dicom" / "deid.key", key + "\n", overwrite=True)  # 0600
    with progress() as bar:
        task = bar.add_task("de-identifying", total=len(list(folder.glob("*.dcm"))))
        report = deidentify_path(
            folder, out / "dicom" / "deidentified", key=key, on_file=lambda _p: bar.advance(task)
        )
    console.print(
        f"de-identified {len(report.written)} files ({len(report.changes)} attribute changes, "
        f"audit: {report.audit_csv}); {len(report.failed)} refused as broken"
    )
    for path, reason in report.failed:
        console.print(f"  [yellow]{path.name}[/]: {reason}")


def _cohort_step(
    out: Path, *, cases: int, spacing: float, seed: int, test: float, validation: float
) -> Path:
    """Generate the synthetic cohort, import it, check it and split it."""
    from medai.data import check_dataset, import_msd, split_dataset
    from medai.data.synth import generate_cohort

    root = out / "cohort"
    with progress() as bar:
        task = bar.add_task("generating cases", total=cases)
        info = generate_cohort(
            root,
            cases=cases,
            spacing=spacing,
            seed=seed,
            dicom=False,
            progress=lambda done, _n: bar.update(task, completed=done),
        )
    if info.dataset_json is None:
        raise RuntimeError("the cohort generator wrote no MSD dataset.json")
    msd = info.dataset_json.parent
    dataset = import_msd(msd)
    with progress() as bar:
        task = bar.add_task("checking", total=len(dataset.cases))
        report = check_dataset(dataset, progress=lambda done, _n: bar.update(task, completed=done))
    verdict = "clean" if report.ok else f"{len(report.anomalies)} anomalies"
    console.print(f"data check: {report.cases_checked} cases, {verdict}")
    dataset = split_dataset(
        dataset,
        test=test,
        validation=validation,
        stratify="grade",
        external_site=EXTERNAL_SITE,
        seed=seed,
    )
    manifest = msd / "dataset.yaml"
    dataset.save(manifest)
    names = ("train", "validation", "test", "external")
    sizes = {name: len(getattr(dataset.splits, name)) for name in names}
    console.print(
        f"split by patient, stratified by grade, {EXTERNAL_SITE} held out as the external "
        f"test set: {sizes} → {manifest}"
    )
    return manifest


def _train_step(out: Path, manifest: Path, *, minutes: float, seed: int) -> Path:
    from medai.cli.seg_cmd import train_with_progress
    from medai.training import make_plan

    console.print("planning: fingerprint of the training cases, throughput probe of networks")
    plan = make_plan(manifest, time_budget_s=minutes * 60, overrides={"train.seed": seed})
    net = plan.network
    console.print(
        f"plan: {net.architecture} (depth {net.depth}) · patch {plan.train.patch_size} · "
        f"batch {plan.train.batch_size} · "
        f"spacing {plan.preprocess.target_spacing} mm · budget {minutes:g} min"
    )
    run = out / "run"
    train_with_progress(manifest, plan, run)
    return run


def _evaluate_step(run: Path, manifest: Path) -> None:
    from medai.cli.eval_cmd import show_evaluation
    from medai.pipeline import evaluate_run

    with progress() as bar:
        task = bar.add_task("predicting and scoring", total=None)
        result = evaluate_run(
            run,
            split="test",
            dataset=manifest,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    show_evaluation(result)


def _extract(dataset: Any, predictions: Path, split: str) -> Any:
    from medai.radiomics import extract_dataset

    with progress() as bar:
        task = bar.add_task(f"radiomics ({split}, predicted masks)", total=None)
        return extract_dataset(
            dataset,
            masks="predicted",
            predictions_dir=predictions,
            split=split,
            channels=["t1gd"],
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def _radiomics_step(run: Path, manifest: Path) -> None:
    import numpy as np
    import pandas as pd

    from medai.data import Dataset
    from medai.pipeline import evaluate_run
    from medai.radiomics import fit_survival, wide_table, write_features_csv
    from medai.radiomics.survival_report import survival_section

    dataset = Dataset.load(manifest)
    predictions = run / "evaluation" / "predictions"
    tables = [_extract(dataset, predictions, split) for split in ("test", "external")]
    wide = wide_table(pd.concat(tables, ignore_index=True))
    write_features_csv(wide, run / "radiomics" / "features_wide.csv")
    wide["log_wt_volume"] = np.log(wide["WT_t1gd_morph_volume"] / 1000.0)  # mm³ → mL
    wide["enhancing_fraction"] = wide["ET_t1gd_morph_volume"] / wide["WT_t1gd_morph_volume"]
    features = [c for c in wide.columns if re.match(SURVIVAL_FEATURES, c)]
    result = fit_survival(
        wide,
        time_col="survival_days",
        event_col="event",
        features=[*features, "log_wt_volume", "enhancing_fraction"],
        clinical=["age"],
        seed=0,
    )
    ci = result.c_index
    console.print(
        f"survival model on {len(wide)} patients (predicted masks of the test and external "
        f"sets): C-index {ci.estimate:.3f} (95 % CI {ci.low:.3f}–{ci.high:.3f})"
    )
    console.print(f"strongest covariates: {', '.join(result.strongest[:5])}")
    truth = json.loads((run.parent / "cohort" / "survival_model.json").read_text("utf-8"))
    betas = ", ".join(f"{name} β={beta:g}" for name, beta in truth["beta"].items())
    console.print(f"the cohort's true hazard model ({truth['model']}): {betas}")
    evaluate_run(
        run,
        split="test",
        dataset=manifest,
        reuse_predictions=True,
        extra_sections=[survival_section(result)],
    )
    console.print(f"report with the survival section → {run / 'evaluation' / 'report.html'}")


def deploy_step(run: Path, dataset: Path, out: Path) -> dict[str, Path]:
    """Export the run as a bundle, write one test study as DICOM (a series per
    channel), and segment it with the bundle: label map, volumes, DICOM SEG and SR."""
    from medai.cli.bundle_cmd import export_with_progress
    from medai.inference.study import write_prediction
    from medai.io import write_dicom_series
    from medai.preprocess import as_cohort
    from medai.runtime import Segmenter, write_dicom_results

    bundle = export_with_progress(
        run, out / "bundle.zip", dataset=dataset, as_zip=True, overwrite=True
    )
    console.print(f"bundle → {bundle.path} (ONNX vs PyTorch: max |Δp| "
                  f"{bundle.parity.max_abs_diff:.1e})")  # fmt: skip
    segmenter = Segmenter(bundle.path)
    cohort = as_cohort(dataset)
    case = cohort.subset([(cohort.test_ids or cohort.ids())[0]])[0]
    image = case.load_image()
    study = out / "dicom_study" / case.case_id
    for c, channel in enumerate(segmenter.loaded.channels):
        write_dicom_series(image.channel(c), study / channel, patient_id=case.case_id,
                           patient_name=f"Demo^{case.case_id}", series_number=c + 1,
                           study_uid=_demo_uid(case.case_id), series_description=channel,
                           overwrite=True)  # fmt: skip
    read = segmenter.read(study)
    pred = segmenter.predict(read)
    name = out / "predicted" / case.case_id
    paths = write_prediction(pred, name.with_name(f"{case.case_id}.nii.gz"))
    paths.update(write_dicom_results(pred, read, segmenter.loaded, name))
    volumes = " ".join(f"{k} {v:.1f} mL" for k, v in pred.volumes_ml.items())
    console.print(f"{case.case_id} (DICOM, {len(segmenter.loaded.channels)} series): {volumes}")
    for kind, path in paths.items():
        console.print(f"  {kind}: {path}")
    return paths


def _demo_uid(case_id: str) -> str:
    """A StudyInstanceUID fixed by the case, so re-runs replace their outputs."""
    import hashlib

    digits = int(hashlib.sha256(case_id.encode()).hexdigest()[:24], 16)
    return f"2.25.{digits}"


def demo(
    out: Path = typer.Argument(Path("demo_out"), help="Folder for everything the demo writes."),
    cases: int = typer.Option(120, help="Synthetic cohort size."),
    spacing: float = typer.Option(2.0, help="Cohort voxel size (mm)."),
    test: float = typer.Option(0.6, help="Share of internal patients held out for testing."),
    validation: float = typer.Option(0.07, help="Share of internal patients for validation."),
    train_minutes: float = typer.Option(4.5, help="Segmentation training budget (minutes)."),
    image_seconds: float = typer.Option(
        45.0, help="Training budget of each image → label / number task (seconds)."
    ),
    seed: int = typer.Option(0, help="Seed of the whole demo."),
    serve: bool = typer.Option(
        False, "--serve", help="End by running `medai serve` on the demo's data (Ctrl-C stops)."
    ),
) -> None:
    """Run the main job end to end on the embedded default data."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with user_errors():
        with _step("1 · Real DICOM: read, convert, de-identify"):
            _dicom_step(out)
        with _step("2 · Synthetic glioma cohort: generate, check, split"):
            manifest = _cohort_step(
                out, cases=cases, spacing=spacing, seed=seed, test=test, validation=validation
            )
        with _step("3 · Segmentation: plan, preprocess, train"):
            run = _train_step(out, manifest, minutes=train_minutes, seed=seed)
        with _step("4 · Evaluation: test and external sets, CIs, subgroups"):
            _evaluate_step(run, manifest)
        with _step("5 · Radiomics on predicted tumour masks → survival model"):
            _radiomics_step(run, manifest)
        with _step("6 · Deploy: export a bundle, segment a DICOM study without torch"):
            deploy_step(run, manifest, out / "deploy")
        with _step("7 · Image → label / number: grade, tumour on slices, brain age"):
            image_tasks_step(out / "image_tasks", manifest, seconds=image_seconds, seed=seed,
                             external_site=EXTERNAL_SITE)  # fmt: skip
    console.rule(f"[bold green]demo done in {(time.perf_counter() - start) / 60:.1f} min")
    if serve:
        from medai.cli.demo_serve import serve_demo

        deploy = out / "deploy"
        study = min((deploy / "dicom_study").iterdir())
        with user_errors():
            serve_demo(out, bundle=deploy / "bundle.zip", study=study)
