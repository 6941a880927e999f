"""``medai plan | preprocess | train``: the segmentation pipeline's commands (``predict``
and ``export`` are in :mod:`medai.cli.bundle_cmd`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from medai.cli.console import console, progress, user_errors
from medai.cli.options import parse_device
from medai.preprocess.plan import parse_duration, parse_overrides

__all__ = ["register_seg_commands"]


def _overrides(config: Path | None, sets: list[str] | None) -> dict[str, Any]:
    return parse_overrides(sets or (), config=config)


def _budget(epochs: int | None, time_budget: str | None) -> tuple[int | None, float | None]:
    seconds = parse_duration(time_budget) if time_budget else None
    if epochs is None and seconds is None:
        seconds = 600.0
    return epochs, seconds


def _show_plan(plan: Any) -> None:
    table = Table(title="plan", show_header=False)
    table.add_row("spacing (mm)", str(plan.preprocess.target_spacing))
    table.add_row("network", f"{plan.network.architecture} ({plan.network.base_channels} ch, "
                  f"depth {plan.network.depth})")  # fmt: skip
    table.add_row("patch × batch", f"{plan.train.patch_size} × {plan.train.batch_size}")
    table.add_row("budget", f"epochs={plan.train.epochs} time={plan.train.time_budget_s} s")
    table.add_row("regions", ", ".join(plan.regions))
    if plan.notes.get("samples_per_s"):
        table.add_row("probe (samples/s)", str(plan.notes["samples_per_s"]))
        table.add_row("why", str(plan.notes.get("network_reason", "")))
    console.print(table)


def plan_cmd(
    dataset: Path = typer.Argument(..., help="MSD folder or dataset manifest."),
    out: Path = typer.Option(Path("plan.yaml"), "--out", "-o", help="Plan YAML to write."),
    epochs: int | None = typer.Option(None, help="Train for N epochs."),
    time_budget: str | None = typer.Option(None, help="Wall-clock budget: 600, 10m, 1h."),
    config: Path | None = typer.Option(None, help="YAML with plan fields to override."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: train.lr=1e-3"),
    probe: bool = typer.Option(True, help="Measure network speed on this device."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1"),
) -> None:
    """Fingerprint a dataset and write a Plan fitted to this device and budget."""
    from medai.preprocess.plan import save_plan
    from medai.training.planner import make_plan

    with user_errors():
        ep, secs = _budget(epochs, time_budget)
        overrides, device = _overrides(config, set_), parse_device(device)
        with console.status("planning") as status:
            plan = make_plan(
                dataset, overrides=overrides, epochs=ep, time_budget_s=secs,
                device=device, probe=probe, on_progress=lambda m: status.update(m),
            )  # fmt: skip
        save_plan(plan, out)
    _show_plan(plan)
    console.print(f"plan written to [bold]{out}[/]")


def preprocess_cmd(
    dataset: Path = typer.Argument(..., help="MSD folder or dataset manifest."),
    plan_path: Path = typer.Option(Path("plan.yaml"), "--plan", help="Plan YAML."),
    cache: Path = typer.Option(Path("cache"), help="Cache folder for .npz files."),
) -> None:
    """Preprocess every case once (cached by case content and plan)."""
    from medai.preprocess import as_cohort, load_plan, preprocess_cohort

    with user_errors():
        plan = load_plan(plan_path)
        cohort = as_cohort(dataset)
        t0 = time.perf_counter()
        hits = 0
        with progress() as bar:
            task = bar.add_task("preprocessing", total=len(cohort.cases))

            def step(_case: str, hit: bool) -> None:
                nonlocal hits
                hits += hit
                bar.advance(task)

            preprocess_cohort(cohort.cases, plan.preprocess, cache, on_case=step)
    took = time.perf_counter() - t0
    console.print(f"{len(cohort.cases)} cases ({hits} cached) in {took:.1f} s → {cache}")


class _RichCallback:
    """Drives a rich progress bar from training events (rank 0 only)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task = bar.add_task("training", total=1000, loss=0.0, dice="-", sps=0.0)

    def on_start(self, info: dict[str, Any]) -> None:
        console.print(
            f"training {info['network']} on {info['train_cases']} cases "
            f"(validation {info['val_cases']}) · {info['device']} × {info['world_size']}"
        )

    def on_step(self, step: Any) -> None:
        self.bar.update(self.task, completed=int(step.progress * 1000), loss=step.loss,
                        sps=step.samples_per_s)  # fmt: skip

    def on_validation(self, result: Any) -> None:
        text = " ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
        self.bar.update(self.task, dice=text + (" ★" if result.is_best else ""))

    def on_end(self, result: Any) -> None:
        self.bar.update(self.task, completed=1000)


def train_cmd(
    dataset: Path = typer.Argument(..., help="MSD folder or dataset manifest."),
    out: Path = typer.Argument(..., help="Run folder."),
    plan_path: Path | None = typer.Option(None, "--plan", help="Plan YAML (else planned now)."),
    epochs: int | None = typer.Option(None, help="Train for N epochs."),
    time_budget: str | None = typer.Option(None, help="Wall-clock budget: 600, 10m, 1h."),
    config: Path | None = typer.Option(None, help="YAML with plan fields to override."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: train.lr=1e-3"),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoints/last.pt."),
    cache: Path | None = typer.Option(None, help="Preprocessing cache (default OUT/cache)."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1"),
) -> None:
    """Train a segmentation model (run it under torchrun for several GPUs)."""
    from medai.preprocess.plan import apply_overrides, load_plan
    from medai.training import make_plan

    main = os.environ.get("RANK", "0") == "0"
    with user_errors():
        ep, secs = _budget(epochs, time_budget)
        overrides, device = _overrides(config, set_), parse_device(device)
        if plan_path is not None:
            plan = load_plan(plan_path)
            budget: dict[str, Any] = {}
            if epochs is not None or time_budget is not None:
                budget = {"train.epochs": ep, "train.time_budget_s": secs}
            plan = apply_overrides(plan, {**budget, **overrides})
        else:
            plan = make_plan(dataset, overrides=overrides, epochs=ep,
                             time_budget_s=secs, device=device)  # fmt: skip
        if main:
            _show_plan(plan)
        train_with_progress(dataset, plan, out, resume=resume, cache_dir=cache, device=device)


def train_with_progress(
    source: Any,
    plan: Any,
    out: Path,
    *,
    resume: bool = False,
    cache_dir: Path | None = None,
    device: str | None = None,
) -> Any:
    """Train with a live progress bar on rank 0 and a closing summary; returns the result."""
    from medai.training import TrainCallback, train

    main = os.environ.get("RANK", "0") == "0"
    columns = (
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f} · val {task.fields[dice]} · "
                   "{task.fields[sps]:.1f} samples/s"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, disable=not main) as bar:
        callback: Any = _RichCallback(bar) if main else TrainCallback()
        result = train(source, plan, out, callbacks=[callback], resume=resume,
                       cache_dir=cache_dir, device=device)  # fmt: skip
    if main:
        _print_validation_dice(result)
        k = result.kpis
        console.print(
            f"stopped: {result.stopped} · {k['steps']} steps · {k['samples_per_s']} samples/s · "
            f"train {k['time_to_train_s']} s · peak RSS {k['peak_rss_mb']} MiB → {out}"
        )
    return result


def _print_validation_dice(result: Any) -> None:
    """The best validation's figures; those tuned on the same cases are labelled so."""
    figures = " ".join(f"{k} {v:.3f}" for k, v in result.best_metrics.items())
    tuned = result.best_tuned
    if result.task != "segmentation":
        console.print(
            f"best validation (epoch {result.best_epoch}; threshold figures cross-fitted): "
            f"{figures or '-'}"
        )
        if tuned:
            text = " ".join(f"{k} {v:.3f}" for k, v in tuned.items())
            console.print(f"  at the threshold tuned on these same cases (optimistic): {text}")
        return
    how = "".join(f"; {k} volume threshold cross-fitted" for k in tuned)
    console.print(f"best validation Dice (epoch {result.best_epoch}{how}): {figures or '-'}")
    for name, value in tuned.items():
        console.print(
            f"  {name} {value:.3f} with its threshold tuned on these same cases (optimistic)"
        )


def register_seg_commands(app: typer.Typer) -> None:
    """Add the segmentation commands to the ``medai`` app (predict: :mod:`bundle_cmd`)."""
    app.command("plan")(plan_cmd)
    app.command("preprocess")(preprocess_cmd)
    app.command("train")(train_cmd)
