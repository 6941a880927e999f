"""Segmentation training: planner, region-based trainer, DDP (networks: medai.networks)."""

from medai.training.callbacks import (
    RunResult,
    StepInfo,
    StopReason,
    TrainCallback,
    ValidationInfo,
)
from medai.training.planner import make_plan, probe_throughput
from medai.training.recipe import build_loss, lr_at
from medai.training.trainer import split_train_val, train

__all__ = [
    "RunResult",
    "StepInfo",
    "StopReason",
    "TrainCallback",
    "ValidationInfo",
    "build_loss",
    "lr_at",
    "make_plan",
    "probe_throughput",
    "split_train_val",
    "train",
]
