"""The Radiology editorial checklist, answered from facts gathered from a run.

Every answer is derived from :class:`RunFacts` (splits, sites, interval widths, the
plan, the model file); nothing is typed by hand. :func:`answer_checklist` returns one
:class:`~medai.evaluation.report.ChecklistItem` per question, in the journal's order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medai.evaluation.report import Answer, ChecklistItem

__all__ = ["CHECKLIST_QUESTIONS", "RunFacts", "answer_checklist"]

CHECKLIST_QUESTIONS: tuple[str, ...] = (
    "Are the training, validation and test sets defined?",
    "Is an external test set used for the final figures?",
    "Were multi-vendor (multi-site) images used?",
    "Are the set sizes justified?",
    "Is the reference standard stated and accepted?",
    "Is the preprocessing described?",
    "Were the results compared with experts?",
    "Is the way the model decides shown?",
    "Is the model available?",
)


@dataclass(frozen=True)
class RunFacts:
    """What the checklist is answered from.

    Attributes:
        split_ids: Split name (``train``, ``validation``, ``test``, ``external``) → case
            ids as the run used them.
        patients: Case id → patient id.
        sites: Split name → site (or vendor) names seen in it; empty when the dataset
            has no site column.
        ci_widths: Region (or metric) → width of its 95 % interval on the internal test.
        ci_metric: What ``ci_widths`` measure (mean Dice; ROC-AUC or R² for image runs).
        test_patients: Patients in the internal test set.
        labelled: ``(cases with a reference label, cases evaluated)``.
        label_source: What the manifest says about the reference labels.
        preprocessing: One-line description of the plan's preprocessing ("" if none).
        reader_data: Whether the dataset holds segmentations by human readers to compare.
        heatmaps: Where heatmaps of this run are ("" when none).
        heatmap_reason: Why there are none.
        randomisation_checked: Whether the heatmaps passed through a parameter-randomisation
            check (their dependence on the trained weights was measured).
        uncertainty: What per-case uncertainty the report shows ("" when none).
        model_path: The model file.
        model_sha256: Its SHA-256.
        ci_width_target: Interval width regarded as precise enough.
    """

    split_ids: Mapping[str, Sequence[str]]
    patients: Mapping[str, str]
    sites: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ci_widths: Mapping[str, float] = field(default_factory=dict)
    ci_metric: str = "mean Dice"
    test_patients: int = 0
    labelled: tuple[int, int] = (0, 0)
    label_source: str = ""
    preprocessing: str = ""
    reader_data: bool = False
    heatmaps: str = ""
    heatmap_reason: str = ""
    randomisation_checked: bool = False
    uncertainty: str = ""
    model_path: Path | None = None
    model_sha256: str = ""
    ci_width_target: float = 0.1


def _sets(facts: RunFacts) -> ChecklistItem:
    sizes = {name: len(facts.split_ids.get(name, ())) for name in ("train", "validation", "test")}
    owners: dict[str, set[str]] = {}
    for name, ids in facts.split_ids.items():
        for case_id in ids:
            owners.setdefault(facts.patients.get(case_id, case_id), set()).add(name)
    shared = sorted(p for p, names in owners.items() if len(names) > 1)
    text = ", ".join(f"{name} {n} cases" for name, n in sizes.items())
    if shared:
        return ChecklistItem(
            CHECKLIST_QUESTIONS[0],
            Answer.NO,
            f"{text}; {len(shared)} patient(s) appear in more than one set "
            f"(e.g. {shared[0]}), so the sets leak",
        )
    answer = Answer.YES if all(sizes.values()) else Answer.PARTLY
    missing = [name for name, n in sizes.items() if n == 0]
    suffix = f"; no {', '.join(missing)} set" if missing else "; no patient in two sets"
    return ChecklistItem(CHECKLIST_QUESTIONS[0], answer, text + suffix)


def _external(facts: RunFacts) -> ChecklistItem:
    ids = facts.split_ids.get("external", ())
    if not ids:
        return ChecklistItem(
            CHECKLIST_QUESTIONS[1], Answer.NO, "the dataset has no external split; figures are "
            "from the internal test set only"
        )  # fmt: skip
    train_sites = set(facts.sites.get("train", ()))
    ext_sites = sorted(facts.sites.get("external", ()))
    unseen = [s for s in ext_sites if s not in train_sites]
    where = f" from site(s) {', '.join(unseen)} unseen in training" if unseen else ""
    return ChecklistItem(
        CHECKLIST_QUESTIONS[1],
        Answer.YES,
        f"external split of {len(ids)} cases{where}, reported in its own section",
    )


def _sites(facts: RunFacts) -> ChecklistItem:
    if not any(facts.sites.values()):
        return ChecklistItem(
            CHECKLIST_QUESTIONS[2], Answer.NO, "the dataset has no site or vendor column"
        )
    counts = {name: len(set(sites)) for name, sites in facts.sites.items() if sites}
    text = ", ".join(f"{n} site(s) in {name}" for name, n in counts.items())
    if counts.get("train", 0) >= 2 and counts.get("test", 0) >= 2:
        return ChecklistItem(CHECKLIST_QUESTIONS[2], Answer.YES, text)
    answer = Answer.PARTLY if max(counts.values()) >= 2 else Answer.NO
    return ChecklistItem(CHECKLIST_QUESTIONS[2], answer, text)


def _sizes(facts: RunFacts) -> ChecklistItem:
    if not facts.ci_widths:
        return ChecklistItem(CHECKLIST_QUESTIONS[3], Answer.NO, "no interval could be computed")
    widest_region = max(facts.ci_widths, key=lambda r: facts.ci_widths[r])
    widest = facts.ci_widths[widest_region]
    target = facts.ci_width_target
    text = (
        f"internal test: {facts.test_patients} patients; widest 95 % CI of {facts.ci_metric} "
        f"{widest:.3f} ({widest_region}); target width {target:g}"
    )
    if widest <= target:
        return ChecklistItem(CHECKLIST_QUESTIONS[3], Answer.YES, text)
    needed = math.ceil(facts.test_patients * (widest / target) ** 2)
    return ChecklistItem(
        CHECKLIST_QUESTIONS[3],
        Answer.NO,
        f"{text}; about {needed} test patients would reach the target",
    )


def _reference(facts: RunFacts) -> ChecklistItem:
    have, total = facts.labelled
    text = f"reference label files for {have} of {total} evaluated cases"
    if have < total or total == 0:
        return ChecklistItem(CHECKLIST_QUESTIONS[4], Answer.NO, text)
    if not facts.label_source.strip():
        return ChecklistItem(
            CHECKLIST_QUESTIONS[4],
            Answer.PARTLY,
            f"{text}; the manifest does not say who made them",
        )
    return ChecklistItem(
        CHECKLIST_QUESTIONS[4], Answer.YES, f"{text}; source per manifest: {facts.label_source}"
    )


def _preprocessing(facts: RunFacts) -> ChecklistItem:
    if not facts.preprocessing:
        return ChecklistItem(CHECKLIST_QUESTIONS[5], Answer.NO, "the run has no plan")
    return ChecklistItem(CHECKLIST_QUESTIONS[5], Answer.YES, facts.preprocessing)


def _experts(facts: RunFacts) -> ChecklistItem:
    if facts.reader_data:
        return ChecklistItem(CHECKLIST_QUESTIONS[6], Answer.PARTLY, "reader segmentations exist "
                             "in the dataset but are not compared in this report")  # fmt: skip
    return ChecklistItem(
        CHECKLIST_QUESTIONS[6],
        Answer.NO,
        "the dataset holds one reference label per case and no reader segmentations, "
        "so no model-versus-expert comparison is possible",
    )


def _decides(facts: RunFacts) -> ChecklistItem:
    if facts.heatmaps and facts.randomisation_checked:
        how = f"heatmaps: {facts.heatmaps}, with a parameter-randomisation check"
        return ChecklistItem(CHECKLIST_QUESTIONS[7], Answer.YES, how)
    if facts.uncertainty:
        also = (
            f"; heatmaps {facts.heatmaps} without a randomisation check" if facts.heatmaps else ""
        )
        return ChecklistItem(CHECKLIST_QUESTIONS[7], Answer.YES, facts.uncertainty + also)
    if facts.heatmaps:
        return ChecklistItem(
            CHECKLIST_QUESTIONS[7],
            Answer.PARTLY,
            f"heatmaps: {facts.heatmaps}; "
            "no parameter-randomisation check shows they depend on the model",
        )
    reason = facts.heatmap_reason or "no heatmaps were produced for this run"
    if facts.ci_metric == "mean Dice":  # a segmentation report shows its worst cases
        reason += "; the worst-case overlays show where predictions and references differ"
    return ChecklistItem(CHECKLIST_QUESTIONS[7], Answer.NO, reason)


def _model(facts: RunFacts) -> ChecklistItem:
    if facts.model_path is None or not facts.model_sha256:
        return ChecklistItem(CHECKLIST_QUESTIONS[8], Answer.NO, "the run has no model file")
    return ChecklistItem(
        CHECKLIST_QUESTIONS[8],
        Answer.YES,
        f"checkpoint {facts.model_path} (SHA-256 {facts.model_sha256})",
    )


def answer_checklist(facts: RunFacts) -> list[ChecklistItem]:
    """The nine checklist questions, each answered yes / no / partly with how."""
    builders = (
        _sets,
        _external,
        _sites,
        _sizes,
        _reference,
        _preprocessing,
        _experts,
        _decides,
        _model,
    )
    return [build(facts) for build in builders]
