"""The planner: dataset fingerprint + device → :class:`~medai.preprocess.plan.Plan`.

Patch and batch size are fitted to the device's memory (GPU memory with CUDA, else
host RAM), and the network is chosen by measured speed: a short forward/backward
probe per candidate architecture gives samples/s on *this* device, and within a
time budget the planner only picks a heavier network when it would still see enough
samples (on a CPU a plain UNet runs several times faster per sample than SegResNet).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medai.data import TaskType
from medai.networks import build_network, patch_multiple
from medai.preprocess.cases import SegCohort, as_cohort
from medai.preprocess.fingerprint import Fingerprint, compute_fingerprint
from medai.preprocess.plan import (
    Architecture,
    NetworkPlan,
    Plan,
    PreprocessPlan,
    ShiftPlan,
    TrainPlan,
    apply_overrides,
)
from medai.training.tasks import as_dataset

__all__ = [
    "CANDIDATES",
    "available_memory_bytes",
    "choose_shift",
    "make_plan",
    "probe_throughput",
]

log = logging.getLogger(__name__)

#: Candidate networks, preferred (higher quality per sample) first.
CANDIDATES: tuple[NetworkPlan, ...] = (
    NetworkPlan(architecture=Architecture.SEGRESNET, base_channels=16, depth=4, residual_units=0),
    NetworkPlan(architecture=Architecture.UNET, base_channels=16, depth=5, residual_units=2),
)
#: Relative samples/s used when the probe is skipped (measured on a 2-core CPU).
STATIC_SPEED = {"unet": 1.0, "basicunet": 0.5, "dynunet": 0.8, "segresnet": 1 / 7}
MIN_SAMPLES_IN_BUDGET = 2000
#: Samples seen at which shift augmentation runs at full strength (half at the minimum).
FULL_SHIFT_SAMPLES = 8000
#: Whether the planner turns shift augmentation on. Issue 10's keep rule (in-domain Dice
#: drops by at most one point, and the gain under shift has a paired CI above zero)
#: failed in ``benchmarks/robustness.py``, so it is off unless asked for.
SHIFT_BY_DEFAULT = False
SHIFT_OFF_REASON = (
    "off by default (benchmarks/robustness.py, 3 seeds: it cost in-domain Dice beyond the "
    "one-point keep rule and gave no gain under shift); with train.shift.enabled=true: "
)
#: Share of samples that lose channels when the data have several contrasts.
CHANNEL_DROPOUT = 0.2
BYTES_PER_VOXEL_FEATURE = 4 * 24  # float32 × (activations kept for backward, norms, grads)


def available_memory_bytes(device: torch.device) -> int:
    """Free GPU memory for CUDA, else available host RAM (``MemAvailable``)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def _activation_bytes(net: NetworkPlan, patch: tuple[int, int, int], batch: int) -> float:
    voxels = float(np.prod(patch))
    features = sum(net.base_channels * 2**lvl / 8**lvl for lvl in range(net.depth))
    return batch * voxels * features * BYTES_PER_VOXEL_FEATURE


def _fit_patch(
    extent: tuple[int, int, int], net: NetworkPlan, budget: float, cap: int, batch: int
) -> tuple[int, int, int]:
    """Largest patch (multiple of the down-sampling) ≤ the brain box and ≤ memory."""
    m = patch_multiple(net)
    patch = [max(2 * m, min(cap, int(np.ceil(e / m) * m))) for e in extent]
    while _activation_bytes(net, tuple(patch), batch) > budget and max(patch) > 2 * m:  # type: ignore[arg-type]
        axis = int(np.argmax(patch))
        patch[axis] -= m
    return (patch[0], patch[1], patch[2])


def _probe_patch(
    patch: tuple[int, int, int], net: NetworkPlan, dev: torch.device
) -> tuple[int, int, int]:
    """On a CPU, probe at ≤ 32³ and scale by voxels (compute is ~linear in voxels)."""
    if dev.type == "cuda":
        return patch
    m = net.downsampling
    side = max(2 * m, 32)
    return (min(patch[0], side), min(patch[1], side), min(patch[2], side))


def probe_throughput(
    net: NetworkPlan,
    *,
    channels: int,
    regions: int,
    patch: tuple[int, int, int],
    batch: int,
    device: torch.device,
    steps: int = 2,
) -> float:
    """Measured training samples/s of ``net`` (forward + backward + AdamW step)."""
    model = build_network(net, in_channels=channels, out_channels=regions).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, *patch, device=device)
    y = (torch.rand(batch, regions, *patch, device=device) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    timings = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up allocators and kernels
            timings.append(time.perf_counter() - t)
    return batch / float(np.median(timings))


def _choose_network(
    speeds: dict[str, float], budget_s: float | None, device: torch.device
) -> tuple[str, str]:
    """(architecture, reason) from samples/s per candidate and the time budget."""
    fastest = max(speeds, key=lambda k: speeds[k])
    if budget_s is None:
        if device.type == "cuda":
            return next(iter(speeds)), "no time budget on a GPU: the preferred network"
        return fastest, "no time budget on a CPU: the fastest network"
    for name, sps in speeds.items():
        expected = 0.8 * budget_s * sps
        if expected >= MIN_SAMPLES_IN_BUDGET:
            return name, (
                f"{name} sees ~{expected:.0f} samples in {budget_s:.0f} s "
                f"(≥ {MIN_SAMPLES_IN_BUDGET}); preferred among those that do"
            )
    return fastest, f"no candidate reaches {MIN_SAMPLES_IN_BUDGET} samples; the fastest"


def choose_shift(channels: int, samples: float) -> tuple[ShiftPlan, str]:
    """Shift augmentation for a run that will see about ``samples`` training samples.

    Off unless the user turns it on (``train.shift.enabled=true``): the robustness
    benchmark found it does not pay at the budgets medai plans for (see
    :data:`SHIFT_OFF_REASON`). When on, it runs as planned here.

    Redrawn intensities make every sample harder, so a short run gets a milder
    version: full strength from :data:`FULL_SHIFT_SAMPLES`, half at
    :data:`MIN_SAMPLES_IN_BUDGET` or fewer, linear between. Channel dropout (which lets
    the model predict with contrasts missing) only when there are several channels.
    """
    span = FULL_SHIFT_SAMPLES - MIN_SAMPLES_IN_BUDGET
    strength = 0.5 + 0.5 * float(np.clip((samples - MIN_SAMPLES_IN_BUDGET) / span, 0.0, 1.0))
    dropout = CHANNEL_DROPOUT if channels > 1 else 0.0
    shift = ShiftPlan(
        enabled=SHIFT_BY_DEFAULT, strength=round(strength, 2), channel_dropout=dropout
    )
    reason = (
        ("" if SHIFT_BY_DEFAULT else SHIFT_OFF_REASON)
        + f"~{samples:.0f} training samples expected: shift augmentation at strength "
        f"{shift.strength:g} (1 from {FULL_SHIFT_SAMPLES} samples, 0.5 at "
        f"{MIN_SAMPLES_IN_BUDGET} or fewer: redrawn contrasts slow learning); "
        + (
            f"{channels} channels: {dropout:.0%} of samples lose 1 to {channels - 1} of them, "
            "so a declared missing contrast can be predicted without"
            if channels > 1
            else "one channel: no channel dropout"
        )
    )
    return shift, reason


def _summary(fp: Fingerprint) -> dict[str, Any]:
    return {
        "n_cases": fp.n_cases,
        "median_spacing": list(fp.median_spacing),
        "median_foreground_mm": np.median(np.asarray(fp.foreground_extent_mm), axis=0).tolist(),
        "region_case_fraction": fp.region_case_fraction,
        "median_region_ml": {k: float(np.median(v)) for k, v in fp.region_volume_ml.items()},
        "channel_mean": [c.mean for c in fp.channels],
    }


def make_plan(
    source: Any,
    *,
    overrides: dict[str, Any] | list[str] | None = None,
    epochs: int | None = None,
    time_budget_s: float | None = 600.0,
    target_spacing: tuple[float, float, float] | None = None,
    device: str | None = None,
    probe: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> Plan:
    """Plan a run for a dataset on this device: segmentation here, classification and
    regression datasets by :func:`~medai.training.planner_image.make_image_plan`.

    Args:
        source: MSD folder, ``medai.data.Dataset`` (or its manifest) or :class:`SegCohort`.
        overrides: Plan fields to force (nested mapping, dotted keys, or
            ``"train.lr=1e-3"`` strings); applied last.
        epochs: Train for this many epochs (``time_budget_s`` then only caps).
        time_budget_s: Wall-clock training budget in seconds; ``None`` for none.
        target_spacing: Force a voxel size (mm); default the cohort's median.
        device: Device to plan for; default CUDA when available.
        probe: Measure each candidate's speed (a few seconds); else use a table.
        on_progress: Called with a short message per stage.

    Returns:
        A validated :class:`Plan`; ``plan.notes`` explains the choices.
    """
    if not isinstance(source, SegCohort):
        dataset = as_dataset(source)
        if dataset.task is not TaskType.SEGMENTATION:
            from medai.training.planner_image import make_image_plan

            return make_image_plan(
                dataset, overrides=overrides, epochs=epochs, time_budget_s=time_budget_s,
                device=device, probe=probe, on_progress=on_progress,
            )  # fmt: skip
        source = dataset
    say = on_progress or (lambda _msg: None)
    cohort = as_cohort(source)
    ids = cohort.train_ids or [c.case_id for c in cohort.cases]
    cohort.require_labels(ids)
    say(f"fingerprinting {len(ids)} cases")
    fp = compute_fingerprint(cohort.subset(ids), regions=cohort.regions)
    med = fp.median_spacing
    spacing = target_spacing or (round(med[0], 3), round(med[1], 3), round(med[2], 3))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extent_mm = np.median(np.asarray(fp.foreground_extent_mm), axis=0)
    extent = tuple(int(np.ceil(e / s)) for e, s in zip(extent_mm, spacing, strict=True))
    memory = available_memory_bytes(dev)
    batch = 2
    cap = 128 if dev.type == "cuda" else 64
    budget_bytes = 0.4 * memory
    speeds: dict[str, float] = {}
    patches: dict[str, tuple[int, int, int]] = {}
    for cand in CANDIDATES:
        patch = _fit_patch(extent, cand, budget_bytes, cap, batch)  # type: ignore[arg-type]
        patches[cand.architecture] = patch
        if probe:
            small = _probe_patch(patch, cand, dev)
            say(f"probing {cand.architecture} at {small} × {batch}")
            sps = probe_throughput(
                cand,
                channels=len(cohort.channels),
                regions=len(cohort.regions),
                patch=small,
                batch=batch,
                device=dev,
            )
            scale = float(np.prod(small)) / float(np.prod(patch))
            speeds[cand.architecture] = sps * scale
        else:
            speeds[cand.architecture] = STATIC_SPEED[cand.architecture] * 4.0
    arch, reason = _choose_network(speeds, time_budget_s if not epochs else None, dev)
    net = next(c for c in CANDIDATES if c.architecture == arch)
    sps = speeds[arch]
    plan = _assemble(cohort, net, patches[arch], batch, spacing, epochs, time_budget_s, sps, dev)
    tp = plan.train
    samples = (
        tp.epochs * tp.steps_per_epoch * tp.batch_size
        if tp.epochs
        else 0.8 * (time_budget_s or 600.0) * sps
    )
    shift, shift_reason = choose_shift(len(plan.channels), samples)
    plan.train.shift = shift
    plan.notes.update(
        fingerprint=_summary(fp),
        device=str(dev),
        memory_gib=round(memory / 2**30, 1),
        samples_per_s={k: round(v, 3) for k, v in speeds.items()} if probe else None,
        relative_speed=None if probe else dict(STATIC_SPEED),
        probed=probe,
        network_reason=reason,
        shift_reason=shift_reason,
    )
    return apply_overrides(plan, overrides)


def _assemble(
    cohort: Any,
    net: NetworkPlan,
    patch: tuple[int, int, int],
    batch: int,
    spacing: tuple[float, float, float],
    epochs: int | None,
    time_budget_s: float | None,
    sps: float,
    dev: torch.device,
) -> Plan:
    """Fill the plan's sections; an epoch is ~1/10 of the budget, validated each time."""
    horizon = time_budget_s or 600.0
    steps = max(5, int(horizon / 10 * sps / batch))
    train = TrainPlan(
        patch_size=patch,
        batch_size=batch,
        epochs=epochs,
        time_budget_s=time_budget_s,
        steps_per_epoch=steps,
        val_every=1,
        amp=dev.type == "cuda",
        num_workers=0 if dev.type == "cpu" else min(8, os.cpu_count() or 1),
    )
    return Plan(
        channels=list(cohort.channels),
        labels=dict(cohort.labels),
        regions={k: list(v) for k, v in cohort.regions.items()},
        preprocess=PreprocessPlan(target_spacing=spacing),
        network=net.model_copy(),
        train=train,
    )
