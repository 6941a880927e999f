"""Segmentation training: planner, MONAI networks, region-based trainer, DDP."""

from medai.training.callbacks import (
    RunResult,
    StepInfo,
    StopReason,
    TrainCallback,
    ValidationInfo,
)
from medai.training.networks import build_network
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
    "build_network",
    "lr_at",
    "make_plan",
    "probe_throughput",
    "split_train_val",
    "train",
]
