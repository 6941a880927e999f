"""Image → label (binary, multi-class, multi-label) and image → number as trainer tasks.

Cases are preprocessed once to the plan's fixed-size input (:mod:`medai.preprocess.fixed`)
and held in memory. Training samples are drawn per ``(seed, epoch, index)``: the case
(uniformly over classes with balanced sampling), then a small affine and intensity
augmentation (no flips: they would swap left and right, front and back). The best model
is chosen on validation (ROC-AUC; regression: −MAE); finalisation fits the temperature,
the decision threshold for the plan's policy, and the uncertainty above which a case
goes to a person, all on the best validation's cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from medai.data import Dataset
from medai.errors import DatasetError
from medai.evaluation.uncertainty import fit_review_threshold
from medai.preprocess.fixed import preprocess_fixed
from medai.preprocess.plan import Imbalance, Plan, TaskKind, TrainPlan, UncertaintyMethod
from medai.training.data import sample_seed
from medai.training.tasks.base import Finalised, Task, Validation
from medai.training.tasks.outputs import finalise_outputs, validation_metrics

__all__ = ["ImageTask", "TargetCase", "encode_target"]


@dataclass(frozen=True)
class TargetCase:
    """One preprocessed case in memory: fixed-size image and encoded target."""

    case_id: str
    image: NDArray[np.float32]  # (C, *size)
    target: NDArray[np.float32]  # binary/regression (1,), multi-class (), multi-label (K,)


def encode_target(value: Any, plan: Plan, *, case_id: str) -> NDArray[np.float32]:
    """A case's target as the loss wants it (regression: raw units; scaled later).

    Raises:
        DatasetError: Naming the case, for a missing target, an unknown class or a
            non-numeric regression target.
    """
    if value is None:
        raise DatasetError(f"case {case_id!r} has no target; give every training case one")
    classes = plan.classes
    if plan.task is TaskKind.REGRESSION:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DatasetError(f"case {case_id!r}: target {value!r} is not a number") from None
        if not np.isfinite(number):
            raise DatasetError(f"case {case_id!r}: target is {number}; give a finite number")
        return np.array([number], dtype=np.float32)
    names = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DatasetError(f"case {case_id!r}: unknown class {unknown[0]!r}; classes: {classes}")
    if plan.task is TaskKind.MULTILABEL:
        return np.array([float(c in names) for c in classes], dtype=np.float32)
    if len(names) != 1:
        raise DatasetError(f"case {case_id!r}: one class expected, got {names}")
    index = classes.index(names[0])
    if plan.task is TaskKind.BINARY:
        return np.array([float(index == len(classes) - 1)], dtype=np.float32)
    return np.array(index, dtype=np.float32)


def class_of(target: NDArray[np.float32], plan: Plan) -> int:
    """The class index a sample is balanced on (multi-label: its first positive label)."""
    if plan.task is TaskKind.MULTICLASS:
        return int(target)
    if plan.task is TaskKind.MULTILABEL:
        hits = np.flatnonzero(target)
        return int(hits[0]) + 1 if hits.size else 0
    return int(target[0] > 0.5)


class _Samples(TorchDataset[dict[str, torch.Tensor]]):
    """Item ``(epoch, index)``: a case (balanced over classes or in turn), augmented."""

    def __init__(self, cases: Sequence[TargetCase], plan: Plan, *, seed: int, length: int):
        import monai.transforms as mt

        self.cases, self.plan, self.seed, self.length = list(cases), plan, seed, length
        self.balanced = plan.target.imbalance is Imbalance.BALANCED_SAMPLING
        by_class: dict[int, list[int]] = {}
        for i, case in enumerate(self.cases):
            by_class.setdefault(class_of(case.target, plan), []).append(i)
        self.by_class = [by_class[k] for k in sorted(by_class)]
        dims = plan.input.spatial_dims
        steps = []
        if plan.train.augment:
            shift = tuple(s // 12 for s in plan.input.size)
            steps = [
                mt.RandAffine(
                    prob=0.7,
                    rotate_range=(0.2,) * (1 if dims == 2 else 3),
                    scale_range=(0.1,) * dims,
                    translate_range=shift,
                    padding_mode="zeros",
                ),
                mt.RandScaleIntensity(factors=0.1, prob=0.5),
                mt.RandShiftIntensity(offsets=0.1, prob=0.5),
                mt.RandAdjustContrast(prob=0.2, gamma=(0.8, 1.25)),
                mt.RandGaussianNoise(prob=0.15, std=0.05),
            ]
        self.transform = mt.Compose(steps)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        if self.balanced:
            rng = np.random.default_rng(seed)
            members = self.by_class[int(rng.integers(len(self.by_class)))]
            case = self.cases[members[int(rng.integers(len(members)))]]
        else:
            case = self.cases[index % len(self.cases)]
        self.transform.set_random_state(seed=seed)
        image = np.asarray(self.transform(case.image), dtype=np.float32)
        target = case.target
        if self.plan.task is TaskKind.REGRESSION:
            target = (target - self.plan.target.mean) / self.plan.target.std
        return {"image": torch.as_tensor(image), "label": torch.as_tensor(target)}


class _Loss(nn.Module):
    """The task's loss on logits ``(B, out)``; class weights from the plan."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.task = plan.task
        weights = plan.target.class_weights
        w = torch.tensor(weights, dtype=torch.float32) if weights else None
        if self.task is TaskKind.MULTICLASS:
            self.fn: nn.Module = nn.CrossEntropyLoss(weight=w)
        elif self.task is TaskKind.REGRESSION:
            self.fn = nn.SmoothL1Loss()
        else:  # binary / multi-label: weights are (negative, positive) per label
            pos = None if w is None else w.reshape(-1, 2)[:, 1] / w.reshape(-1, 2)[:, 0]
            self.fn = nn.BCEWithLogitsLoss(pos_weight=pos)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task is TaskKind.MULTICLASS:
            return self.fn(logits, target.long())
        return self.fn(logits, target.reshape(logits.shape))


class ImageTask(Task):
    """Classification or regression on a :class:`~medai.data.Dataset` with targets."""

    metric = ""

    def __init__(self, dataset: Dataset) -> None:
        if not dataset.cases:
            raise DatasetError(f"dataset {dataset.name!r} has no case")
        self.data = dataset
        self.train_ids = list(dataset.splits.train)
        self.val_ids = list(dataset.splits.validation)
        self.score_name = "score"

    def ids(self) -> list[str]:
        return [c.case_id for c in self.data.cases]

    def require_targets(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if self.data.case(i).target is None]
        if missing:
            raise DatasetError(
                f"{len(missing)} case(s) have no target, e.g. {missing[:5]}; give every "
                "training and validation case a 'target' in the manifest"
            )

    def preprocess(self, ids: list[str], plan: Plan, cache: Path) -> dict[str, Path]:
        cases = [self.data.case(i) for i in ids]
        settings = plan.input
        return preprocess_fixed(cases, dataset=self.data, settings=settings, cache_dir=cache)

    def load(self, paths: dict[str, Path], plan: Plan) -> list[TargetCase]:
        return [
            TargetCase(
                case_id,
                np.load(path).astype(np.float32),
                encode_target(self.data.case(case_id).target, plan, case_id=case_id),
            )
            for case_id, path in paths.items()
        ]

    def fit_training(self, plan: Plan, items: Sequence[Any]) -> None:
        """Regression: the target's mean and scale. Weighted loss: inverse-frequency
        class weights (mean 1), per label as (negative, positive) for sigmoid outputs."""
        targets = np.stack([c.target for c in items])
        if plan.task is TaskKind.REGRESSION:
            plan.target.mean = float(targets.mean())
            plan.target.std = float(max(targets.std(), 1e-6))
            return
        if plan.target.imbalance is not Imbalance.WEIGHTED_LOSS:
            plan.target.class_weights = None
            return
        if plan.task is TaskKind.MULTICLASS:
            counts = np.bincount(targets.astype(int), minlength=len(plan.classes)).astype(float)
            weights = counts.sum() / (len(counts) * np.maximum(counts, 1.0))
        else:
            pos = targets.reshape(len(items), -1).mean(axis=0).clip(1e-3, 1 - 1e-3)
            weights = np.stack([0.5 / (1 - pos), 0.5 / pos], axis=1).ravel()
        plan.target.class_weights = [round(float(w), 6) for w in weights]

    def dataset(
        self, items: Sequence[Any], plan: TrainPlan, *, seed: int, length: int, full: Plan
    ) -> TorchDataset[dict[str, torch.Tensor]]:
        return _Samples(items, full, seed=seed, length=length)

    def loss(self, plan: Plan) -> nn.Module:
        return _Loss(plan)

    def validate(
        self, net: nn.Module, items: Sequence[Any], plan: Plan, *, device: torch.device
    ) -> Validation:
        from medai.inference.classify import forward_logits

        images = np.stack([c.image for c in items])
        logits = forward_logits(net, images, device=device)
        targets = [c.target.tolist() for c in items]
        score, metrics = validation_metrics(logits, np.stack([c.target for c in items]), plan)
        cases = [
            {"case_id": c.case_id, "target": t, "logits": z.tolist()}
            for c, t, z in zip(items, targets, logits, strict=True)
        ]
        return Validation(score, metrics, cases)

    def finalise(
        self,
        plan: Plan,
        best: Validation | None,
        *,
        net: nn.Module,
        items: Sequence[Any],
        device: torch.device,
    ) -> Finalised:
        """Temperature and threshold (:func:`finalise_outputs`), then the uncertainty of
        every validation case and the level above which the top 10 % go to review."""
        from medai.inference.classify import case_uncertainty, member_logits, outputs_from_logits

        final = finalise_outputs(plan, best)
        if plan.target.uncertainty is UncertaintyMethod.NONE or len(items) < 2:
            return final
        images = np.stack([c.image for c in items])
        members = outputs_from_logits(member_logits(net, images, plan, device=device), plan)
        uncertainty = case_uncertainty(members, plan)
        plan.target.review_above = fit_review_threshold(uncertainty, refer_fraction=0.1)
        record = {
            **final.record,
            "uncertainty": {c.case_id: float(u) for c, u in zip(items, uncertainty, strict=True)},
            "review_above": plan.target.review_above,
        }
        return Finalised(final.metrics, final.tuned, record)
