"""What a training run reports while it runs: step, validation and end events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["RunResult", "StepInfo", "StopReason", "TrainCallback", "ValidationInfo"]


class StopReason(StrEnum):
    """Why a training run ended."""

    EPOCHS = "epochs"  # the planned number of epochs is done
    EARLY_STOP = "early_stop"  # validation stopped improving
    TIME_BUDGET = "time_budget"  # the wall-clock budget is spent


@dataclass(frozen=True)
class StepInfo:
    """After one optimiser step."""

    epoch: int
    global_step: int
    total_steps: int | None
    loss: float
    lr: float
    samples_per_s: float
    elapsed_s: float
    progress: float
    best_score: float | None


@dataclass(frozen=True)
class ValidationInfo:
    """After one validation: the task's figures (segmentation: Dice per region) and
    the score that picks the best model."""

    epoch: int
    metrics: dict[str, float]
    score: float
    is_best: bool
    elapsed_s: float


@dataclass(frozen=True)
class RunResult:
    """What a finished run left behind.

    ``best_metrics`` are the best validation's figures with anything tuned on the
    validation cases cross-fitted. Segmentation: Dice per region, the innermost region's
    (ET's) volume threshold cross-fitted (each validation case scored at the threshold
    chosen on the other validation cases); ``best_tuned`` holds that region's Dice with
    the threshold chosen on the very cases it is scored on (optimistic; empty when
    nothing was tuned), and ``best_score`` is the mean of ``best_metrics``.
    Classification and regression: the validation figures at the learnt threshold
    (cross-fitted), and ``best_score`` the validation score that chose the model.
    """

    run_dir: Path
    best_score: float
    best_epoch: int
    best_metrics: dict[str, float]
    epochs: int
    steps: int
    stopped: StopReason
    kpis: dict[str, Any] = field(default_factory=dict)
    best_tuned: dict[str, float] = field(default_factory=dict)
    task: str = "segmentation"


class TrainCallback:
    """Override what you need; the library calls these and never prints."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Run set up: ``info`` holds case counts, device, plan summary."""

    def on_step(self, step: StepInfo) -> None:
        """After every optimiser step."""

    def on_validation(self, result: ValidationInfo) -> None:
        """After every validation."""

    def on_end(self, result: RunResult) -> None:
        """Run finished (budget spent, epochs done, or stopped early)."""
