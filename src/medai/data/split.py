"""Patient-level splits: train / validation / test, k folds, and an external site.

All cases of a patient land in one split. Within each stratum (a value of a
clinical column, e.g. grade) patients are shuffled with a seeded generator and cut
by rounding ``fraction × patients``, so every split's share of every stratum is
within one patient of its target.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from medai.data.manifest import Case, Dataset, Splits
from medai.errors import ConfigError, DatasetError

__all__ = ["split_dataset"]

logger = logging.getLogger(__name__)

_MISSING = "<missing>"


def _value(case: Case, column: str) -> str:
    value: Any = case.clinical.get(column)
    if column == "target":
        value = case.target
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return _MISSING
    return str(value)


def _check_column(ds: Dataset, column: str, argument: str) -> None:
    if column == "target":
        return
    if not any(column in c.clinical for c in ds.cases):
        known = sorted({k for c in ds.cases for k in c.clinical})
        raise ConfigError(
            f"{argument}={column!r}: no case has this clinical column; known columns: {known}"
        )


def _patients(ds: Dataset) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in ds.cases:
        groups[case.patient_id].append(case)
    return groups


def _validate(test: float, validation: float, folds: int) -> None:
    for name, value in (("test", test), ("validation", validation)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be a fraction in [0, 1), e.g. 0.2; got {value}")
    if test + validation >= 1.0:
        raise ConfigError(
            f"test + validation = {test + validation:g} leaves no case to train on; "
            "make the two fractions sum to less than 1"
        )
    if folds < 0 or folds == 1:
        raise ConfigError(f"folds must be 0 (none) or at least 2; got {folds}")


def split_dataset(
    ds: Dataset,
    *,
    test: float = 0.2,
    validation: float = 0.1,
    folds: int = 0,
    stratify: str | None = None,
    external_site: str | None = None,
    site_column: str = "site",
    seed: int = 0,
) -> Dataset:
    """A copy of ``ds`` with new patient-level :class:`Splits`.

    Args:
        ds: The dataset.
        test: Fraction of (non-external) patients held out for testing.
        validation: Fraction of patients for validation.
        folds: If ≥ 2, the train patients are also cut into this many folds
            (``splits.folds[i]`` = validation cases of fold ``i``).
        stratify: Clinical column (or ``"target"``) whose values are balanced
            across splits; a patient's stratum is that of its first case.
        external_site: Value of ``site_column`` whose patients all go to ``external``.
        site_column: Clinical column naming the site.
        seed: Seed of the shuffle; recorded in the splits.

    Raises:
        ConfigError: If a fraction is out of range or a column is unknown.
        DatasetError: If the external site has no patient or leaves none to train on.
    """
    _validate(test, validation, folds)
    if stratify is not None:
        _check_column(ds, stratify, "stratify")
    groups = _patients(ds)
    external = _external(ds, groups, external_site, site_column)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, cases in sorted(groups.items()):
        if patient not in external:
            strata[_value(cases[0], stratify) if stratify else ""].append(patient)
    chosen, fold_lists = _allocate(strata, test, validation, folds, seed)
    chosen["external"] = sorted(external)

    def case_ids(patients: list[str]) -> list[str]:
        return [c.case_id for p in patients for c in groups[p]]

    splits = Splits(
        train=case_ids(chosen["train"]),
        validation=case_ids(chosen["validation"]),
        test=case_ids(chosen["test"]),
        external=case_ids(chosen["external"]),
        folds=[case_ids(f) for f in fold_lists],
        seed=seed,
        stratify=stratify,
    )
    logger.info("split %s: %s", ds.name, {k: len(v) for k, v in chosen.items()})
    return ds.model_copy(update={"splits": splits})


def _external(
    ds: Dataset, groups: dict[str, list[Case]], site: str | None, column: str
) -> list[str]:
    """Patients at the held-out ``site`` (none when ``site`` is None)."""
    if site is None:
        return []
    _check_column(ds, column, "site_column")
    external = [p for p, cases in groups.items() if _value(cases[0], column) == site]
    if not external:
        raise DatasetError(f"no patient has {column}={site!r}")
    if len(external) == len(groups):
        raise DatasetError(f"every patient is at site {site!r}; none left to train on")
    return external


def _allocate(
    strata: dict[str, list[str]], test: float, validation: float, folds: int, seed: int
) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Shuffle each stratum, cut test/validation/train by rounding, deal train into folds."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[str]] = defaultdict(list)
    fold_lists: list[list[str]] = [[] for _ in range(folds)]
    offset = 0
    for stratum in sorted(strata):
        patients = list(strata[stratum])
        rng.shuffle(patients)
        n_test = round(test * len(patients))
        n_val = round(validation * len(patients))
        chosen["test"] += patients[:n_test]
        chosen["validation"] += patients[n_test : n_test + n_val]
        train = patients[n_test + n_val :]
        chosen["train"] += train
        if folds:  # round robin, continuing across strata so fold sizes stay even
            for i, patient in enumerate(train):
                fold_lists[(offset + i) % folds].append(patient)
        offset += len(train)
    return chosen, fold_lists
