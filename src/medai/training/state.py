"""The trainer's mutable state: one typed object, saved whole in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Counters, the best validation so far and the history of one run.

    Everything here is plain data (numbers, strings, lists, dicts), so a checkpoint
    stores it with :meth:`as_dict` and a resume rebuilds it with :meth:`from_dict`.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed_s: float = 0.0
    samples: int = 0
    step_time_s: float = 0.0
    epoch_loss: list[float] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_elapsed_s: float | None = None
    best_cases: list[dict[str, Any]] = field(default_factory=list)
    bad_validations: int = 0
    validated_at: int = -1
    last_val_end_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """Rebuild from :meth:`as_dict`; unknown keys are refused by name.

        Raises:
            ValueError: If ``data`` holds a key this state does not have (a checkpoint
                from another medai version).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"checkpoint state has unknown fields {unknown}; it was written by another "
                "medai version: start the run afresh (without --resume)"
            )
        return cls(**data)
