"""``medai explain RUN INPUT...``: heat maps of a classification run, with their checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from medai.cli.console import console, progress, user_errors
from medai.cli.options import parse_device
from medai.errors import ConfigError

if TYPE_CHECKING:
    from medai.data import Dataset
    from medai.explain.run import ExplainResult

__all__ = ["explain_cmd", "show_explanation"]

_METHODS = ("gradcam", "gradcam++", "occlusion")


def explain_cmd(
    run: Path = typer.Argument(..., help="Training run folder of a classifier (model.pt)."),
    inputs: list[Path] | None = typer.Argument(
        None, help="Image files or DICOM study folders (or use --dataset)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (RUN/explain)."),
    method: str = typer.Option("gradcam", help="gradcam, gradcam++ or occlusion."),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Run the parameter-randomisation check."
    ),
    dataset: Path | None = typer.Option(
        None, help="Dataset manifest: explain the cases of --split (labels as masks)."
    ),
    split: str = typer.Option("test", help="Split of --dataset to explain."),
    mask: list[Path] | None = typer.Option(
        None, "--mask", help="Finding mask of each INPUT, in order (repeat the option)."
    ),
    max_layers: int | None = typer.Option(None, help="Randomise at most this many layers."),
    layer: str | None = typer.Option(
        None, help="Grad-CAM layer (default: the last stage at least 4 voxels a side)."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda"),
) -> None:
    """Explain a classification run: heat maps, overlays, pointing game, randomisation."""
    with user_errors():
        chosen = _parse_method(method)
        device = parse_device(device)
        source, case_ids = _inputs(inputs, dataset, split, mask)
    from medai.explain.run import explain_run

    with user_errors(), progress() as bar:
        task = bar.add_task("explaining", total=None)
        result = explain_run(
            run, source, case_ids=case_ids, out_dir=out or run / "explain", method=chosen,
            check=check, masks=mask or None, max_layers=max_layers, target_layer=layer,
            device=device,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    show_explanation(result)


def _parse_method(method: str) -> str:
    text = method.strip().lower()
    if text not in _METHODS:
        raise ConfigError(f"--method {method!r}: use one of {', '.join(_METHODS)}")
    return text


def _inputs(
    inputs: list[Path] | None, dataset: Path | None, split: str, mask: list[Path] | None
) -> tuple[list[Path] | Dataset, list[str] | None]:
    """The files to explain, or a loaded dataset and the case ids of ``split``."""
    from medai.data import Dataset

    if inputs and dataset is not None:
        raise ConfigError("give INPUT files or --dataset, not both")
    if dataset is None:
        if not inputs:
            raise ConfigError("nothing to explain: give INPUT files or --dataset MANIFEST")
        if mask and len(mask) != len(inputs):
            raise ConfigError(f"--mask given {len(mask)} times for {len(inputs)} INPUT files")
        return list(inputs), None
    if mask:
        raise ConfigError("--mask applies to INPUT files; a dataset's labels are its masks")
    data = Dataset.load(dataset)
    ids = [case.case_id for case in data.split_cases(split)]
    if not ids:
        raise ConfigError(f"split {split!r} of dataset {data.name!r} has no cases; pick another")
    return data, ids


def show_explanation(result: ExplainResult) -> None:
    """Print the pointing game, the randomisation table and where the files went."""
    n = len(result.inputs)
    layer = f" at {result.layer}" if result.layer else ""
    console.print(f"{n} heat map(s), {result.method.value}{layer} → [bold]{result.out_dir}[/]")
    pointing = result.pointing
    if pointing is not None:
        console.print(
            f"pointing game: {pointing.hits}/{pointing.n} true positives hit "
            f"(rate {pointing.rate:.2f}; chance {pointing.chance:.2f})"
        )
    elif any(e.reference is not None for e in result.inputs):
        console.print("pointing game: no true positive with a mask to score")
    steps = result.randomisation
    if steps:
        shown = (
            sorted({round(i * (len(steps) - 1) / 7) for i in range(8)})
            if len(steps) > 8
            else range(len(steps))
        )
        worst = max(s.spearman for s in steps)
        console.print(
            f"Parameter randomisation, {len(steps)} layers re-initialised from the output "
            f"(low = the map changed with the weights, as it should; highest Spearman "
            f"{worst:.3f}){'; every few steps shown' if len(steps) > 8 else ''}:"
        )
        table = Table()
        for column in ("layers randomised", "down to", "spearman", "ssim"):
            table.add_column(column, justify="left" if column == "down to" else "right")
        for i in shown:
            step = steps[i]
            table.add_row(str(i + 1), step.layer, f"{step.spearman:.3f}", f"{step.ssim:.3f}")
        console.print(table)
    console.print(f"summary → {result.json_path}")
