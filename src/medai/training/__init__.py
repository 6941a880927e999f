"""Segmentation training: planner, MONAI networks, region-based trainer, DDP."""

from medai.training.callbacks import RunResult, StepInfo, TrainCallback, ValidationInfo
from medai.training.networks import build_network
from medai.training.planner import make_plan, probe_throughput
from medai.training.trainer import build_loss, lr_at, split_train_val, train

__all__ = [
    "RunResult",
    "StepInfo",
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
