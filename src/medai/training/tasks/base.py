"""The one small interface through which the trainer serves every task.

The trainer owns the loop (schedule, checkpoints, resume, DDP, time budget); a task
owns what differs: which cases exist, how they are preprocessed and held in memory,
the dataset of training samples, the network's output width, the loss, the
validation score, and what is learnt from the best validation at the end
(segmentation: the ET volume threshold; classification: the decision threshold,
temperature and review threshold).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from medai.preprocess.plan import Plan, TrainPlan

__all__ = ["Finalised", "Task", "Validation"]


@dataclass(frozen=True)
class Validation:
    """One validation: the score that picks the best model (higher is better), the
    figures reported with it, and per-case records kept for finalisation."""

    score: float
    metrics: dict[str, float]
    cases: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Finalised:
    """What finalisation learnt: honest best-validation figures (anything tuned on the
    validation cases is cross-fitted), the optimistic tuned figures, and the record
    written to ``validation.json``."""

    metrics: dict[str, float]
    tuned: dict[str, float]
    record: dict[str, Any]


class Task(ABC):
    """One kind of run (segmentation, classification, regression)."""

    #: Name of the validation figures in metrics.csv (``val_<metric>_<name>``).
    metric: str = "score"
    #: Name of the score among them (segmentation: the mean of the regions' Dice).
    score_name: str = "score"

    train_ids: list[str]
    val_ids: list[str]

    @abstractmethod
    def ids(self) -> list[str]:
        """Every case id of the source, in its order."""

    @abstractmethod
    def require_targets(self, ids: Sequence[str]) -> None:
        """Refuse (naming them) cases in ``ids`` without a label or target."""

    @abstractmethod
    def preprocess(self, ids: list[str], plan: Plan, cache: Path) -> dict[str, Path]:
        """Preprocess (cached) ``ids``; returns case id → cache file."""

    @abstractmethod
    def load(self, paths: dict[str, Path], plan: Plan) -> list[Any]:
        """Hold the cached cases in memory for training or validation."""

    def fit_training(self, plan: Plan, items: Sequence[Any]) -> None:  # noqa: B027
        """Learn what the loss needs from the training items into ``plan`` (e.g. class
        weights, the target's scale); nothing by default."""

    @abstractmethod
    def dataset(
        self, items: Sequence[Any], plan: TrainPlan, *, seed: int, length: int, full: Plan
    ) -> Dataset[dict[str, torch.Tensor]]:
        """Training samples keyed by ``(epoch, index)``, each drawn from its own seed."""

    @abstractmethod
    def loss(self, plan: Plan) -> nn.Module:
        """``loss(output, batch["label"])``."""

    @abstractmethod
    def validate(
        self, net: nn.Module, items: Sequence[Any], plan: Plan, *, device: torch.device
    ) -> Validation:
        """Score the network on whole validation cases."""

    @abstractmethod
    def finalise(
        self,
        plan: Plan,
        best: Validation | None,
        *,
        net: nn.Module,
        items: Sequence[Any],
        device: torch.device,
    ) -> Finalised:
        """Learn output settings from the best validation into ``plan``; ``net`` holds
        the best weights and ``items`` are the validation cases."""
