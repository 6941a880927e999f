"""The segmentation :class:`Plan`: every choice of a run, typed, with working defaults.

A plan is plain data (pydantic), saved as YAML beside a run and overridable from a
YAML file or ``key.sub=value`` strings (:func:`parse_overrides` reads both, the one
place overrides are parsed). The planner (:mod:`medai.training.planner`) fills it from
a dataset fingerprint and the device; nothing here imports torch. A plan a user wrote
that does not validate raises :class:`~medai.errors.PlanError` naming the field, what
it allows and the value given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medai.errors import ConfigError, PlanError, validation_summary
from medai.fsutil import atomic_write_text
from medai.preprocess.task_plan import (
    Imbalance,
    InputPlan,
    TargetPlan,
    TaskKind,
    ThresholdPolicy,
    UncertaintyMethod,
)

__all__ = [
    "Architecture",
    "Imbalance",
    "InferencePlan",
    "InputPlan",
    "LossKind",
    "NetworkPlan",
    "Normalisation",
    "Plan",
    "PreprocessPlan",
    "ShiftPlan",
    "TargetPlan",
    "TaskKind",
    "ThresholdPolicy",
    "TrainPlan",
    "UncertaintyMethod",
    "apply_overrides",
    "load_plan",
    "parse_duration",
    "parse_overrides",
    "save_plan",
]

SECTIONS: tuple[str, ...] = ("preprocess", "network", "train", "inference", "input", "target")
#: Sub-sections whose fields are overridden one by one, like a section's.
SUBSECTIONS: tuple[str, ...] = ("train.shift",)


class Architecture(StrEnum):
    """The MONAI networks a plan can name."""

    UNET = "unet"
    BASICUNET = "basicunet"
    DYNUNET = "dynunet"
    SEGRESNET = "segresnet"
    # image → label or number (medai.classifiers)
    DENSENET121 = "densenet121"
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"
    EFFICIENTNET_B0 = "efficientnet-b0"

    @property
    def is_segmentation(self) -> bool:
        return self in _SEGMENTATION_NETS


_SEGMENTATION_NETS = frozenset(
    {Architecture.UNET, Architecture.BASICUNET, Architecture.DYNUNET, Architecture.SEGRESNET}
)


class Normalisation(StrEnum):
    """Intensity normalisation of the image channels."""

    ZSCORE_FOREGROUND = "zscore_foreground"


class LossKind(StrEnum):
    """Training loss on the sigmoid region channels."""

    DICE_CE = "dice_ce"
    DICE_FOCAL = "dice_focal"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PreprocessPlan(_Strict):
    """How a case becomes network input (the same at training and inference)."""

    target_spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    image_order: int = Field(default=1, ge=1, le=3, description="1 linear, 3 cubic")
    crop_to_foreground: bool = True
    crop_margin: int = Field(default=2, ge=0)
    normalisation: Normalisation = Normalisation.ZSCORE_FOREGROUND

    @field_validator("target_spacing")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError(f"target_spacing must be positive millimetres; got {v}")
        return v

    def digest(self) -> str:
        """Short hash of these settings: the cache key's plan part."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class NetworkPlan(_Strict):
    """Which MONAI network, how deep and wide."""

    architecture: Architecture = Architecture.UNET
    base_channels: int = Field(default=16, ge=2)
    depth: int = Field(default=5, ge=2, le=7, description="resolution levels")
    residual_units: int = Field(default=2, ge=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    output_prior: float = Field(
        default=0.02, gt=0, lt=1, description="initial sigmoid output (output bias = logit)"
    )
    width: float = Field(
        default=1.0, ge=1 / 16, le=4, description="classifiers: channel multiplier"
    )
    weights: str | None = Field(
        default=None, description="classifiers: local file of pretrained weights"
    )

    @property
    def downsampling(self) -> int:
        """Total down-sampling factor; patch sides must be multiples of it."""
        segresnet = self.architecture is Architecture.SEGRESNET
        return 2 ** (min(self.depth, 4) - 1 if segresnet else self.depth - 1)


class ShiftPlan(_Strict):
    """Augmentation for scanner, site and protocol shift, and for missing contrasts.

    Each sample draws which steps fire (``p_*``, per sample; ``p_lowres`` and
    ``p_ringing`` per channel) and their parameters, then applies them
    (:mod:`medai.training.augment`); ``strength`` scales every amplitude. Only the
    image changes, only inside the brain (non-zero voxels); label maps never change.
    """

    enabled: bool = False
    strength: float = Field(default=1.0, gt=0, le=2, description="scales every amplitude")
    p_redraw: float = Field(default=0.5, ge=0, le=1, description="per-label intensity redraw")
    p_gamma: float = Field(default=0.3, ge=0, le=1)
    p_warp: float = Field(default=0.2, ge=0, le=1, description="histogram warp")
    p_bias: float = Field(default=0.3, ge=0, le=1)
    p_lowres: float = Field(default=0.15, ge=0, le=1, description="per channel: thick slices")
    p_blur: float = Field(default=0.15, ge=0, le=1)
    p_noise: float = Field(default=0.2, ge=0, le=1, description="Rician noise")
    p_ringing: float = Field(default=0.05, ge=0, le=1, description="per channel: Gibbs ringing")
    channel_dropout: float = Field(
        default=0.0, ge=0, le=1, description="share of samples that lose 1 to C-1 channels"
    )
    healthy_classes: int = Field(
        default=3, ge=1, le=8, description="intensity classes of unlabelled brain for the redraw"
    )


class TrainPlan(_Strict):
    """Optimisation, sampling and budget."""

    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = Field(default=2, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    time_budget_s: float | None = Field(default=600.0, gt=0)
    steps_per_epoch: int = Field(default=25, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    grad_clip: float = Field(default=12.0, gt=0)
    loss: LossKind = LossKind.DICE_CE
    pos_fraction: float = Field(
        default=0.67, ge=0, le=1, description="share of tumour-centred patches"
    )
    augment: bool = True
    shift: ShiftPlan = ShiftPlan()
    amp: bool = True
    val_every: int = Field(default=2, ge=1)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    max_val_share: float = Field(
        default=0.15, gt=0, le=1, description="with a time budget: skip validations beyond it"
    )
    early_stop_patience: int | None = Field(
        default=None, ge=1, description="validations without gain"
    )
    checkpoint_every_steps: int = Field(default=0, ge=0, description="0: only at epoch ends")
    num_workers: int = Field(default=0, ge=0)
    seed: int = 0

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 8:
            raise ValueError(f"patch_size must be at least 8 voxels per axis; got {v}")
        return v


class InferencePlan(_Strict):
    """Sliding window, test-time augmentation and post-processing."""

    overlap: float = Field(default=0.5, ge=0, lt=1)
    tta_flips: bool = False
    threshold: float = Field(default=0.5, gt=0, lt=1)
    min_component_ml: float = Field(default=0.1, ge=0, description="drop smaller tumour blobs")
    et_min_volume_ml: float = Field(default=0.0, ge=0, description="ET below this is relabelled TC")


class Plan(_Strict):
    """Everything a run needs besides the data.

    ``task`` says what the run predicts. Segmentation uses ``labels``, ``regions`` and
    the patch-based sections; image → label or number runs use ``classes`` (the class
    names; for regression the target's name), ``input`` and ``target``.
    """

    task: TaskKind = TaskKind.SEGMENTATION
    channels: list[str] = Field(default_factory=lambda: ["image"])
    labels: dict[int, str] = Field(default_factory=lambda: {0: "background", 1: "foreground"})
    regions: dict[str, list[int]] = Field(default_factory=lambda: {"FG": [1]})
    preprocess: PreprocessPlan = PreprocessPlan()
    network: NetworkPlan = NetworkPlan()
    train: TrainPlan = TrainPlan()
    inference: InferencePlan = InferencePlan()
    classes: list[str] = Field(default_factory=list)
    input: InputPlan = InputPlan()
    target: TargetPlan = TargetPlan()
    notes: dict[str, Any] = Field(default_factory=dict, description="planner's reasoning")

    @model_validator(mode="after")
    def _task_fits(self) -> Plan:
        arch = self.network.architecture
        if self.task is not TaskKind.SEGMENTATION:
            if arch.is_segmentation:
                raise ValueError(
                    f"a {self.task.value} plan needs a classifier network (densenet121, "
                    f"resnet18, resnet50, efficientnet-b0); got {arch.value!r}"
                )
            wanted = 1 if self.task in (TaskKind.BINARY, TaskKind.REGRESSION) else 2
            if len(self.classes) < wanted:
                raise ValueError(f"a {self.task.value} plan names its classes; got {self.classes}")
            return self
        if not arch.is_segmentation:
            raise ValueError(
                f"a segmentation plan needs a segmentation network; got {arch.value!r}"
            )
        m = self.network.downsampling
        patch = self.train.patch_size
        if any(p % m or p < 2 * m for p in patch):
            raise ValueError(
                f"train.patch_size {patch} does not fit a {self.network.architecture} of depth "
                f"{self.network.depth}: each side must be a multiple of {m} and at least {2 * m} "
                "(lower network.depth or enlarge the patch)"
            )
        return self

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        if not v or any(not labels for labels in v.values()):
            raise ValueError(f"regions must name at least one region with labels; got {v}")
        return v


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan`` as YAML (atomic; closed sets as plain strings)."""
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False))
    return path


def load_plan(path: str | Path) -> Plan:
    """Read a plan YAML written by :func:`save_plan` (or by hand; missing keys default).

    Raises:
        PlanError: If the file is missing, not a YAML mapping, names an unknown field or
            holds a value the field does not allow.
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError(
            f"plan file {path} not found; write one with `medai plan DATASET -o {path}`"
        )
    data = _read_yaml_mapping(path, "a plan")
    return _validated(_tree_with(Plan(), flatten_overrides(data), where=str(path)), str(path))


def _read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PlanError(f"{path}: not valid YAML ({exc}); fix its syntax") from exc
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: not a text file; {what} is YAML") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError(
            f"{path}: {what} YAML holds a mapping such as 'train: {{lr: 0.001}}'; "
            f"got a {type(data).__name__}"
        )
    return data


def _known(node: Mapping[str, Any]) -> str:
    return ", ".join(sorted(node))


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            known = ", ".join(SECTIONS) if depth == 0 else _known(node)
            raise PlanError(f"override {key!r}: {part!r} is not a plan section; sections: {known}")
        node = node[part]
    if parts[-1] not in node:
        section = ".".join(parts[:-1]) or "the plan"
        raise PlanError(
            f"override {key!r}: unknown plan field {parts[-1]!r}; fields of {section}: "
            f"{_known(node)}"
        )
    node[parts[-1]] = value


def _tree_with(plan: Plan, items: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    tree = plan.model_dump(mode="json")
    for key, value in items.items():
        try:
            _set_dotted(tree, key, value)
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None
    return tree


def _validated(tree: dict[str, Any], where: str) -> Plan:
    try:
        return Plan.model_validate(tree)
    except ValidationError as exc:
        raise PlanError(f"{where}: invalid plan: {validation_summary(exc)}") from exc


def flatten_overrides(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` → ``{"train.lr": 1e-3}`` (plan sections only; other
    mappings, such as ``labels`` or ``regions``, stay whole values)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name in SECTIONS + SUBSECTIONS:
            flat.update(flatten_overrides(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _parse_set(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise PlanError(f"override {text!r} must look like section.field=value, e.g. train.lr=1e-3")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PlanError(f"override {text!r}: the value is not a YAML value ({exc})") from None


def parse_overrides(
    sets: Sequence[str] = (), *, config: str | Path | None = None
) -> dict[str, Any]:
    """Flat plan overrides from a YAML file and ``section.field=value`` strings.

    Values are parsed as YAML (``train.lr=1e-3``, ``train.patch_size=[64,64,64]``);
    strings come after the file, so they win. Every key is checked against the plan's
    fields here, before any slow planning starts.

    Args:
        sets: ``section.field=value`` strings (``--set`` on the command line).
        config: A YAML file holding plan fields, nested (``train: {lr: 1e-3}``) or dotted.

    Raises:
        PlanError: If the file is not a YAML mapping, a string lacks ``=``, or a key
            names no plan field.
    """
    out: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise PlanError(f"override file {path} not found")
        out.update(flatten_overrides(_read_yaml_mapping(path, "an override")))
    out.update(dict(_parse_set(text) for text in sets))
    _tree_with(Plan(), out, where="plan overrides")  # names every unknown key now
    return out


def apply_overrides(plan: Plan, overrides: Mapping[str, Any] | Sequence[str] | None) -> Plan:
    """A new plan with ``overrides`` applied.

    Args:
        plan: The base plan.
        overrides: Nested mapping (as from YAML), flat ``{"train.lr": 1e-3}``, or
            ``["train.lr=1e-3", ...]`` strings whose values are parsed as YAML.

    Raises:
        PlanError: If a key names no plan field or a value is invalid (the message
            names the field, what it allows and the value given).
    """
    if not overrides:
        return plan
    if isinstance(overrides, Mapping):
        items = flatten_overrides(overrides)
    else:
        items = dict(_parse_set(text) for text in overrides)
    return _validated(_tree_with(plan, items, where="plan overrides"), "plan overrides")


def parse_duration(text: str | float) -> float:
    """Seconds from ``"10m"``, ``"90s"``, ``"1.5h"`` or a number of seconds.

    Raises:
        ConfigError: If ``text`` is not a positive duration.
    """
    if isinstance(text, int | float):
        value = float(text)
    else:
        raw = str(text).strip().lower()
        units = {"s": 1.0, "m": 60.0, "h": 3600.0}
        scale = units.get(raw[-1:])
        number = raw[:-1] if scale is not None else raw
        try:
            value = float(number) * (scale or 1.0)
        except ValueError:
            raise ConfigError(f"duration {text!r} must look like 600, 90s, 10m or 1.5h") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"duration must be a positive, finite time such as 10m; got {text!r}")
    return value
