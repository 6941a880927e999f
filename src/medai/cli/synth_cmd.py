"""``medai synth``: generate synthetic cohorts."""

from __future__ import annotations

from pathlib import Path

import typer

from medai.cli.console import console, progress, user_errors

synth_app = typer.Typer(help="Generate synthetic data (no real patient data needed).")


@synth_app.command("glioma")
def glioma(
    out: Path = typer.Argument(..., help="Output folder (created)."),
    cases: int = typer.Option(40, "--cases", "-n", help="Number of cases."),
    spacing: float = typer.Option(2.0, "--spacing", help="Isotropic voxel size in mm (1-8)."),
    seed: int = typer.Option(0, "--seed", help="Cohort seed (case i is the same for any N)."),
    sites: int = typer.Option(4, "--sites", help="Number of scanner sites."),
    hgg_fraction: float = typer.Option(0.7, "--hgg-fraction", help="Share of high grade."),
    layout: list[str] = typer.Option(
        ["msd"], "--layout", help="Output layout: msd and/or brats (repeat the option)."
    ),
    dicom: bool = typer.Option(False, "--dicom", help="Also write DICOM MR series."),
    out_of_range: bool = typer.Option(
        False,
        "--out-of-range",
        help="Draw scanners and tumour looks outside the documented ranges (shifted "
        "test cohorts; never train or tune on them).",
    ),
) -> None:
    """A BraTS-like glioma cohort: 4 MR contrasts, labels, clinical table, survival."""
    from medai.data.synth import Appearance, SiteRanges, generate_cohort

    with user_errors(), progress() as bar:
        task = bar.add_task("generating cases", total=cases)
        info = generate_cohort(
            out,
            cases=cases,
            spacing=spacing,
            seed=seed,
            sites=sites,
            layouts=tuple(layout),
            hgg_fraction=hgg_fraction,
            dicom=dicom,
            appearance=Appearance.out_of_range() if out_of_range else None,
            site_ranges=SiteRanges.out_of_range() if out_of_range else None,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(
        f"[green]wrote[/] {info.cases} cases at {info.spacing:g} mm "
        f"({', '.join(info.layouts)}{', dicom' if dicom else ''}) to {info.root}"
    )
    if info.dataset_json is not None:
        console.print(f"  MSD dataset: {info.dataset_json}")
    console.print(f"  clinical table: {info.clinical_csv}")
    console.print(f"  true survival model: {info.survival_model_json}")
