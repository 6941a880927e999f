"""The medai arm: ``make_plan(time budget)`` → preprocess → ``train``, all on the arm clock.

The planner's fingerprint and throughput probe and the preprocessing cache are timed
inside the arm's budget: the training budget handed to ``train`` is what is left of the
arm's budget after them. Weight snapshots for the time-to-Dice curve are taken from a
step callback; the network object is captured by wrapping the ``build_network`` the
trainer calls (a benchmark-side hook: the library's callbacks do not receive the model).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import medai.training.trainer as trainer_module
from medai.image import ScalarImage
from medai.inference import LoadedRun, load_run
from medai.networks import build_network
from medai.preprocess import apply_overrides, as_cohort, preprocess_cohort, preprocess_image
from medai.training import StepInfo, TrainCallback, make_plan, train
from seg_common import ScoredNet, Snapshots, Split


@contextmanager
def _capture_network() -> Iterator[list[torch.nn.Module]]:
    """Record the network(s) the trainer builds while the context is open."""
    built: list[torch.nn.Module] = []
    original = trainer_module.build_network

    def wrapped(*args: Any, **kwargs: Any) -> torch.nn.Module:
        net = original(*args, **kwargs)
        built.append(net)
        return net

    trainer_module.build_network = wrapped  # type: ignore[assignment]
    try:
        yield built
    finally:
        trainer_module.build_network = original  # type: ignore[assignment]


class _SnapshotCallback(TrainCallback):
    def __init__(self, built: list[torch.nn.Module], snaps: Snapshots) -> None:
        self.built, self.snaps = built, snaps

    def on_step(self, step: StepInfo) -> None:
        self.snaps.maybe(self.built[-1].state_dict, step.global_step)


def train_medai(
    root: Path, split: Split, *, seed: int, budget_s: float, out: Path, snap_every_s: float
) -> dict[str, Any]:
    """Plan, preprocess and train within ``budget_s`` of arm clock."""
    t0 = time.perf_counter()
    cohort = as_cohort(root)
    cohort.train_ids = list(split.train)  # fingerprint and probe on the training cases
    plan = make_plan(cohort, time_budget_s=budget_s, device="cpu", overrides={"train.seed": seed})
    plan_s = time.perf_counter() - t0
    cache = out / "cache"
    preprocess_cohort(cohort.subset(split.train), plan.preprocess, cache)
    before_train_s = time.perf_counter() - t0
    plan = apply_overrides(plan, {"train.time_budget_s": budget_s - before_train_s})
    cohort.train_ids, cohort.val_ids = list(split.fit), list(split.val)  # fixed split
    snaps = Snapshots(out / "snapshots", t0, snap_every_s)
    with _capture_network() as built:
        result = train(
            cohort,
            plan,
            out / "run",
            callbacks=[_SnapshotCallback(built, snaps)],
            cache_dir=cache,
            device="cpu",
        )
    wall = time.perf_counter() - t0
    kpis = dict(result.kpis)
    return {
        "arm": "medai",
        "seed": seed,
        "wall_s": round(wall, 2),
        "plan_s": round(plan_s, 2),
        "preprocess_s": round(before_train_s - plan_s, 2),
        "samples": kpis["samples"],
        "steps": kpis["steps"],
        "samples_per_s": kpis["samples_per_s"],
        "architecture": plan.network.architecture,
        "patch": list(plan.train.patch_size),
        "probe_samples_per_s": plan.notes.get("samples_per_s"),
        "network_reason": plan.notes.get("network_reason"),
        "best_val_s": kpis.get("time_to_best_validation_s"),
        "stopped": str(result.stopped),
        "final": str(out / "run"),
        "snapshots": snaps.taken,
    }


def _prepare(run: LoadedRun) -> Any:
    """medai's own preprocessing without the crop (normalisation is the same: z-score in
    the non-zero mask, 0 outside), so the window runs over the whole input grid."""
    pp = run.plan.preprocess.model_copy(update={"crop_to_foreground": False})

    def prepare(image: ScalarImage) -> Any:
        return preprocess_image(image, pp).image.array

    return prepare


def scored_net(run_dir: Path, weights: Path | None = None) -> tuple[ScoredNet, LoadedRun]:
    """The trained (or a snapshot's) network with medai's normalisation and patch."""
    run = load_run(run_dir, device="cpu")
    model = run.model
    if weights is not None:
        model = build_network(
            run.plan.network, in_channels=len(run.plan.channels), out_channels=len(run.plan.regions)
        )
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    net = ScoredNet("medai", model.eval(), tuple(run.plan.train.patch_size), _prepare(run))  # type: ignore[arg-type]
    return net, run
