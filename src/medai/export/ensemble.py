"""What an ensemble bundle adds to a one-model bundle: the check that its runs share
one plan, its member files (``model_<i>.onnx``, ``plan_<i>.json``) with their
``bundle.json`` entries, and the model card's ensemble section.

The first run leads: its plan (``plan.json``) sets the preprocessing, thresholds and
post-processing of the whole ensemble; every member keeps its own plan for what it
learnt about its outputs (temperature, target scaling).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from medai.errors import ExportError
from medai.preprocess.plan import Plan, TaskKind
from medai.runtime.bundle import Member, member_files

__all__ = ["check_same_plan", "ensemble_card", "ensemble_members"]

#: Plan fields every member must share (then the task's input geometry and normalisation).
_SHARED = ("task", "channels", "labels", "regions", "classes")


def _contract(plan: Plan) -> dict[str, Any]:
    """The plan fields that decide what the network reads and predicts, by dotted name."""
    doc = plan.model_dump(mode="json")
    out = {key: doc[key] for key in _SHARED}
    if plan.task is TaskKind.SEGMENTATION:
        out.update({f"preprocess.{k}": v for k, v in doc["preprocess"].items()})
        out["train.patch_size"] = doc["train"]["patch_size"]
    else:
        out.update({f"input.{k}": v for k, v in doc["input"].items()})
    return out


def check_same_plan(plans: Sequence[Plan], runs: Sequence[str]) -> None:
    """Refuse an ensemble whose runs do not share one plan.

    Args:
        plans: Each member's plan, the lead first.
        runs: Each member's name (for the message).

    Raises:
        ExportError: Naming the first member and field that differ from the lead's.
    """
    if len(plans) != len(runs):
        raise ExportError(f"{len(plans)} plans but {len(runs)} run names; give one each")
    lead = _contract(plans[0])
    for plan, run in zip(plans[1:], runs[1:], strict=True):
        other = _contract(plan)
        for key, value in lead.items():  # task first: the other keys exist once it matches
            if other.get(key) != value:
                raise ExportError(
                    f"ensemble member {run} differs from {runs[0]} in {key}: "
                    f"{other.get(key)!r} instead of {value!r}; an ensemble's runs must share "
                    "one plan (train them from the same plan, e.g. with other seeds)"
                )


def ensemble_members(
    models: Sequence[bytes], plans: Sequence[Plan], runs: Sequence[str]
) -> tuple[dict[str, bytes], list[dict[str, Any]], tuple[Member, ...]]:
    """The model files of a bundle of ``len(models)`` networks.

    Returns:
        The files (``model.onnx`` for one network; ``model_<i>.onnx`` and
        ``plan_<i>.json`` per member of an ensemble), ``bundle.json``'s ``members``
        entries and the runtime's :class:`~medai.runtime.Member` list (both empty for
        one network).
    """
    if len(models) == 1:
        return {"model.onnx": models[0]}, [], ()
    files: dict[str, bytes] = {}
    listed: list[dict[str, Any]] = []
    for i, (model, plan, run) in enumerate(zip(models, plans, runs, strict=True)):
        model_name, plan_name = member_files(i)
        files[model_name] = model
        doc = json.dumps(plan.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
        files[plan_name] = doc.encode()
        sha = hashlib.sha256(model).hexdigest()
        listed.append({"model": model_name, "plan": plan_name, "run": run, "sha256": sha})
    members = tuple(Member(m, p, r) for m, p, r in zip(models, plans, runs, strict=True))
    return files, listed, members


def ensemble_card(listed: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The model card's ``ensemble`` section (``None`` for one network)."""
    if not listed:
        return None
    return {
        "members": len(listed),
        "runs": [entry["run"] for entry in listed],
        "combination": "mean of the members' probabilities (regression: of their "
        "predictions); their disagreement enters the uncertainty as TTA members' does",
        "lead": f"{listed[0]['run']}: its plan sets preprocessing, thresholds and post-processing",
    }
