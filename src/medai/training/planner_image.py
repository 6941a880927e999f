"""The planner for image → label and image → number runs.

From the dataset (task kind, classes, class balance, image dimensionality and size)
and a short throughput probe of each candidate classifier on this device, it fills a
:class:`~medai.preprocess.plan.Plan` and writes its reasons in ``plan.notes``:
input size and spacing, network, batch, how to counter class imbalance.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medai.data import Dataset, TaskType
from medai.errors import DatasetError
from medai.networks import build_network
from medai.preprocess.plan import (
    Architecture,
    Imbalance,
    InputPlan,
    NetworkPlan,
    Plan,
    TargetPlan,
    TaskKind,
    TrainPlan,
    apply_overrides,
)
from medai.training.tasks import as_dataset

__all__ = ["IMAGE_CANDIDATES", "make_image_plan", "probe_classifier"]

#: Candidate classifiers, preferred first; on a CPU narrower versions (``width``).
IMAGE_CANDIDATES: tuple[Architecture, ...] = (
    Architecture.DENSENET121,
    Architecture.RESNET18,
    Architecture.EFFICIENTNET_B0,
)
#: Epochs a run should see for the planner to pick a heavier network.
MIN_EPOCHS_IN_BUDGET = 15
#: Minority-class share below which sampling is balanced, and below which the loss is
#: weighted instead.
BALANCED_BELOW, WEIGHTED_BELOW = 0.2, 0.4


def _task_kind(dataset: Dataset) -> tuple[TaskKind, list[str]]:
    if dataset.task is TaskType.REGRESSION:
        return TaskKind.REGRESSION, [dataset.name]
    if dataset.task is not TaskType.CLASSIFICATION:
        raise DatasetError(
            f"dataset {dataset.name!r} is a {dataset.task.value} dataset; plan it with make_plan"
        )
    classes = list(dataset.classes) or sorted({str(c.target) for c in dataset.cases})
    if any(isinstance(c.target, list) for c in dataset.cases):
        return TaskKind.MULTILABEL, classes
    if len(classes) < 2:
        raise DatasetError(f"dataset {dataset.name!r} has one class {classes}; need two or more")
    return (TaskKind.BINARY if len(classes) == 2 else TaskKind.MULTICLASS), classes


def _imbalance(dataset: Dataset, ids: list[str], kind: TaskKind) -> tuple[Imbalance, str]:
    if kind is TaskKind.REGRESSION:
        return Imbalance.NONE, "regression: no classes to balance"
    counts = Counter(
        str(t) for i in ids for t in np.atleast_1d(np.asarray(dataset.case(i).target, dtype=object))
    )
    share = min(counts.values()) / max(sum(counts.values()), 1)
    if share < BALANCED_BELOW:
        how = Imbalance.BALANCED_SAMPLING
    elif share < WEIGHTED_BELOW:
        how = Imbalance.WEIGHTED_LOSS
    else:
        how = Imbalance.NONE
    return how, f"rarest class {share:.0%} of training cases ({dict(counts)}) → {how.value}"


def _input(dataset: Dataset, ids: list[str], dev: torch.device) -> tuple[InputPlan, str]:
    """2D or 3D from the first case; size fits the device; 3D spacing so that the
    median brain (non-zero) box fills the input."""
    image = dataset.load_case_image(dataset.case(ids[0]))
    shape = image.array.shape[1:]
    if len(shape) == 2 or min(shape) == 1:
        cap = 224 if dev.type == "cuda" else 64
        native = max(s for s in shape if s > 1)
        side = int(min(cap, max(32, 16 * np.ceil(native / 16))))
        note = f"2D images of {native} px → {side}² input (at most {cap} on this device)"
        return InputPlan(spatial_dims=2, size=(side, side)), note
    side = 96 if dev.type == "cuda" else 48
    extents = []
    for i in ids[:8]:
        img = dataset.load_case_image(dataset.case(i))
        nz = np.argwhere(np.any(img.array != 0, axis=0))
        if len(nz):
            extents.append((nz.max(0) - nz.min(0) + 1) * np.asarray(img.spacing))
    extent = np.median(np.asarray(extents), axis=0) if extents else np.asarray(shape)
    mm = float(np.ceil(extent.max() / side * 2) / 2)
    spacing = (mm, mm, mm)
    note = f"3D volumes, median box {np.round(extent).tolist()} mm → {side}³ at {mm} mm"
    return InputPlan(spatial_dims=3, size=(side,) * 3, spacing=spacing), note


def probe_classifier(
    net: NetworkPlan,
    *,
    inputs: InputPlan,
    channels: int,
    out: int,
    batch: int,
    device: torch.device,
) -> float:
    """Measured training samples/s (forward + backward + AdamW step)."""
    model = build_network(
        net, in_channels=channels, out_channels=out, spatial_dims=inputs.spatial_dims
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, *inputs.size, device=device)
    timings = []
    for i in range(3):
        t = time.perf_counter()
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            timings.append(time.perf_counter() - t)
    return batch / float(np.median(timings))


def make_image_plan(
    source: Any,
    *,
    overrides: dict[str, Any] | list[str] | None = None,
    epochs: int | None = None,
    time_budget_s: float | None = 600.0,
    device: str | None = None,
    probe: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> Plan:
    """Plan a classification or regression run (see the module notes).

    Args:
        source: A classification or regression ``Dataset`` or its manifest.
        overrides: Plan fields to force, applied last.
        epochs: Train for this many epochs (``time_budget_s`` then only caps).
        time_budget_s: Wall-clock training budget in seconds; ``None`` for none.
        device: Device to plan for; default CUDA when available.
        probe: Measure each candidate's speed; else take the first candidate.
        on_progress: Called with a short message per stage.
    """
    say = on_progress or (lambda _msg: None)
    dataset = as_dataset(source)
    kind, classes = _task_kind(dataset)
    ids = list(dataset.splits.train) or [c.case_id for c in dataset.cases]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inputs, input_note = _input(dataset, ids, dev)
    imbalance, imbalance_note = _imbalance(dataset, ids, kind)
    batch = 16 if inputs.spatial_dims == 2 else 4
    width = 1.0 if dev.type == "cuda" else 0.5
    out = 1 if kind in (TaskKind.BINARY, TaskKind.REGRESSION) else len(classes)
    speeds: dict[str, float] = {}
    for arch in IMAGE_CANDIDATES if probe else IMAGE_CANDIDATES[:1]:
        cand = NetworkPlan(architecture=arch, width=width, dropout=0.2)
        say(f"probing {arch.value} at {inputs.size} × {batch}")
        speeds[arch.value] = probe_classifier(
            cand, inputs=inputs, channels=len(dataset.channels), out=out, batch=batch, device=dev
        )
    horizon = time_budget_s or 600.0
    chosen, reason = next(iter(speeds)), "probe skipped: the preferred network"
    if probe:
        epochs_of = {a: 0.8 * horizon * s / max(len(ids), 1) for a, s in speeds.items()}
        good = [a for a in speeds if epochs_of[a] >= MIN_EPOCHS_IN_BUDGET]
        chosen = good[0] if good else max(speeds, key=lambda a: speeds[a])
        reason = f"{chosen} sees ~{epochs_of[chosen]:.0f} epochs in {horizon:.0f} s" + (
            f" (≥ {MIN_EPOCHS_IN_BUDGET}; preferred)" if good else " (the fastest)"
        )
    steps = max(2, int(np.ceil(len(ids) / batch)))
    plan = Plan(
        task=kind,
        channels=list(dataset.channels),
        classes=classes,
        network=NetworkPlan(architecture=Architecture(chosen), width=width, dropout=0.2),
        train=TrainPlan(
            batch_size=batch,
            epochs=epochs,
            time_budget_s=time_budget_s,
            steps_per_epoch=steps,
            lr=1e-3,
            weight_decay=1e-4,
            val_every=1,
            amp=dev.type == "cuda",
        ),
        input=inputs,
        target=TargetPlan(imbalance=imbalance),
    )
    plan.notes.update(
        device=str(dev),
        input_reason=input_note,
        imbalance_reason=imbalance_note,
        samples_per_s={k: round(v, 2) for k, v in speeds.items()},
        network_reason=reason,
    )
    return apply_overrides(plan, overrides)
