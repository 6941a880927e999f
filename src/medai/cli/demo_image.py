"""``medai demo``'s image → label and image → number step.

Three tasks derived from the demo's cohort, each planned, trained under a short
budget, evaluated on its test and external sets (the held-out site) and printed with
its 95 % CIs: tumour grade from the 3D MRI, "tumour present" on 2D axial FLAIR slices
(CheXNet-style, with Grad-CAM heat maps checked by the pointing game and the
model-parameter randomisation test), and brain age from the 3D MRI (the cohort's
age-related atrophy). The derived datasets are split afresh by patient (the
segmentation split keeps most patients for testing), with the same site held out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medai.cli.console import console, progress
from medai.data import Dataset, TaskType, slice_dataset, split_dataset
from medai.data.derive import target_dataset

__all__ = ["image_tasks_step"]


def _derive(manifest: Path, out: Path, seed: int, external_site: str) -> dict[str, Path]:
    """The three task datasets, split by patient (test 30 %, validation 20 %)."""
    parent = Dataset.load(manifest)
    makers: dict[str, Callable[[], Dataset]] = {
        "grade": lambda: target_dataset(parent, column="grade", task=TaskType.CLASSIFICATION),
        "slices": lambda: slice_dataset(
            parent, out / "slices" / "data", channel="flair", slices_per_case=6, seed=seed
        ),
        "age": lambda: target_dataset(parent, column="age", task=TaskType.REGRESSION),
    }
    manifests = {}
    for name, make in makers.items():
        dataset = split_dataset(
            make(), test=0.3, validation=0.2, stratify="grade" if name != "slices" else None,
            external_site=external_site, seed=seed,
        )  # fmt: skip
        manifests[name] = dataset.save(out / name / "dataset.yaml")
    return manifests


def _train_and_evaluate(name: str, manifest: Path, run: Path, seconds: float, seed: int) -> None:
    from medai.cli.eval_cmd import show_evaluation
    from medai.cli.seg_cmd import train_with_progress
    from medai.pipeline import evaluate_run
    from medai.training import make_plan

    plan = make_plan(manifest, time_budget_s=seconds, overrides={"train.seed": seed})
    net = plan.network
    console.print(
        f"[bold]{name}[/]: {plan.task.value} · {net.architecture} (width {net.width:g}) · "
        f"input {'×'.join(map(str, plan.input.size))} · {plan.target.imbalance.value} · "
        f"budget {seconds:g} s — {plan.notes['network_reason']}"
    )
    train_with_progress(manifest, plan, run)
    with progress() as bar:
        task = bar.add_task(f"{name}: predicting and scoring", total=None)
        result = evaluate_run(
            run, split="test", dataset=manifest,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    show_evaluation(result)


def _explain(run: Path, manifest: Path) -> None:
    from medai.cli.explain_cmd import show_explanation
    from medai.explain import explain_run

    dataset = Dataset.load(manifest)
    with progress() as bar:
        task = bar.add_task("Grad-CAM on the test slices", total=None)
        result = explain_run(
            run, dataset, out_dir=run / "explain", case_ids=dataset.splits.test,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    show_explanation(result)


def image_tasks_step(
    out: Path, manifest: Path, *, seconds: float, seed: int, external_site: str
) -> None:
    """Derive, train, evaluate and (slices) explain the three image tasks."""
    manifests = _derive(manifest, out, seed, external_site)
    for name in ("grade", "slices", "age"):
        _train_and_evaluate(name, manifests[name], out / name / "run", seconds, seed)
        if name == "slices":
            _explain(out / name / "run", manifests[name])
