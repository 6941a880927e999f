"""Normality ranking: how odd is each result against the project's accepted results?

Pure numbers, no database: a :class:`MeasureTable` of accepted results (rows = tasks,
columns = measures, NaN where a measure is missing) in, one :class:`NormalityResult` per
task out, and :func:`rank` orders them for the review queue.

The rules, in order:

* **Scale and robust z per measure** (:mod:`medai.service.normality_measures`): a measure
  is ranked on its linear or ``log1p`` scale (declared in ``NormalityConfig.transforms`` or
  chosen from the data) as ``z = (t(x) − median) / max(1.4826·MAD, floors)``.
* **Point masses and sides** (also :mod:`~medai.service.normality_measures`): a value
  shared by at least ``point_mass_share`` of the accepted results (ET volume 0 in low-grade
  gliomas) is a normal state with z = 0, the other values set the scale; a measure declared
  one-sided in ``sides`` (by default the model's ``uncertainty``: ``upper``) has z = 0 on
  its harmless side.
* **Where the centre comes from.** A measure with at least ``min_results`` finite values in
  the project uses them; else the bundle's reference distribution for that measure when
  given (``reference median`` in the reasons); else it is not ranked. A task none of whose
  measures can be ranked is AMBER, "too few results to rank (n=…)" — never green by default.
* **Outlyingness** (:class:`Method`), over the project-scaled, two-sided measures whose MAD
  is not floored. ``iforest`` (the default): an isolation forest on the complete rows (at
  least ``max(min_results, rows_per_measure·p)`` of them), its anomaly score in robust SDs
  of the fitted rows' scores. It sees clusters and curved shapes (low- and high-grade
  tumours side by side; a point mass enters like any other value); the SDs are read off the
  scores' upper tail (they are skewed to the right). Its depth saturates, so a single
  measure at or beyond the red threshold makes the score at least its |z|. ``mcd``:
  scikit-learn's :class:`MinCovDet` on the same rows without the point-mass measures (a
  tied block degenerates its ellipse; they enter by their own |z|), its covariance rescaled
  so that the fitted rows' median d² is χ²_p's median (a small sample's reweighted MCD is
  too tight); a task's squared robust Mahalanobis distance over its observed measures is
  referred to χ² with that many degrees of freedom. ``maxz`` (also the fallback when no
  model can be fitted): the largest |z|. On the benchmark's tuning cohort
  (``benchmarks/normality_qc.py``) the forest separated failed segmentations best; MCD
  flagged low-grade tumours (ET = 0) as odd.
* **One score scale.** ``rank_score`` is in robust-SD units throughout: ``maxz`` is |z|; a
  χ² tail probability ``p`` becomes ``Φ⁻¹(1 − p/2)``, the |z| one normal measure would need
  for the same tail; measures outside the model add their |z| (the score is the maximum).
  The default :class:`Thresholds` (amber 3, red 5) are then two-sided normal tails of
  0.27 % and 5.7·10⁻⁷: about one clean result in 370 per score is amber by chance, red
  practically never (the 5-sigma convention); a tenfold tumour volume lands far beyond 5.
* **Uncertainty.** ``uncertainty > review_threshold`` (the bundle's, as in
  :func:`medai.evaluation.uncertainty.needs_review`) forces at least AMBER, with a reason.

The ranking fits on the accepted results as given; a task that is itself among them is
judged against a reference that includes it, which robust estimates barely notice.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import gammaln, ndtri_exp
from scipy.stats import chi2
from sklearn.covariance import MinCovDet
from sklearn.ensemble import IsolationForest

from medai.service.normality_measures import (
    Floats,
    MeasureTable,
    RobustScale,
    Side,
    Transform,
    bin_index,
    bin_opacity,
    choose_transform,
    finite_values,
    fit_scale,
    histogram,
)

__all__ = [
    "Colour",
    "MeasureTable",
    "Method",
    "NormalityConfig",
    "NormalityResult",
    "RobustScale",
    "Side",
    "Thresholds",
    "Transform",
    "bin_index",
    "bin_opacity",
    "choose_transform",
    "fit_scale",
    "histogram",
    "rank",
    "score_tasks",
]

logger = logging.getLogger(__name__)


class Colour(StrEnum):
    """The colour of a result; always shown together with its name and reasons."""

    GREEN = "green"
    AMBER = "amber"
    RED = "red"


_SEVERITY = {Colour.GREEN: 0, Colour.AMBER: 1, Colour.RED: 2}


class Method(StrEnum):
    """How the measures of one task are combined into one outlyingness."""

    MCD = "mcd"  # robust Mahalanobis distance (minimum covariance determinant)
    IFOREST = "iforest"  # isolation forest anomaly score
    MAXZ = "maxz"  # the largest |robust z|


class Thresholds(BaseModel):
    """Per-project colour thresholds on ``rank_score`` (robust-SD units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amber: float = Field(default=3.0, gt=0)
    red: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.red <= self.amber:
            raise ValueError(
                f"thresholds: red ({self.red}) must be above amber ({self.amber}); "
                "raise red or lower amber"
            )
        return self


class NormalityConfig(BaseModel):
    """How a project ranks its results; every field has a working default.

    Attributes:
        method: ``mcd``, ``iforest`` or ``maxz`` (module docstring).
        thresholds: Amber and red on ``rank_score``.
        min_results: Fewest values of a measure to rank on (project, else reference).
        rows_per_measure: Complete rows per measure a multivariate model needs.
        transforms: Declared scale per measure; others get ``default_transform``.
        default_transform: ``auto`` chooses per measure from the data.
        auto_skew: Octile skewness from which ``auto`` considers ``log1p``.
        point_mass_share: Share of the values at one value that makes it a point mass.
        sides: Measures where only one direction is odd (default: ``uncertainty`` upper).
        mad_floor_rel: Floor of the scale as a fraction of |median|.
        mad_floor_abs: Absolute floor of the scale.
        seed: Seed of MCD's and the isolation forest's random draws.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Method.IFOREST
    thresholds: Thresholds = Field(default_factory=Thresholds)
    min_results: int = Field(default=10, ge=3)
    rows_per_measure: float = Field(default=5.0, gt=0)
    transforms: dict[str, Transform] = Field(default_factory=dict)
    default_transform: Transform = Transform.AUTO
    auto_skew: float = 0.1
    point_mass_share: float = Field(default=0.2, gt=0, le=1)
    sides: dict[str, Side] = Field(default_factory=lambda: {"uncertainty": Side.UPPER})
    mad_floor_rel: float = Field(default=0.01, ge=0)
    mad_floor_abs: float = Field(default=1e-6, gt=0)
    seed: int = 0


@dataclass(frozen=True)
class NormalityResult:
    """How odd one task's measures are.

    Attributes:
        task_key: The task.
        z: Robust z per ranked measure the task has (missing or unranked measures absent).
        outlyingness: The method's own statistic: robust Mahalanobis distance (``mcd``),
            anomaly score in robust SDs (``iforest``) or max |z| (``maxz``); NaN if unranked.
        rank_score: Robust-SD units, compared with :class:`Thresholds`; NaN if unranked.
        colour: GREEN, AMBER or RED.
        reasons: The colour in words, naming the measures that drove it.
        uncertain: The model's uncertainty is above the bundle's review threshold.
        method: The method actually used (``maxz`` when the model could not be fitted).
    """

    task_key: str
    z: Mapping[str, float]
    outlyingness: float
    rank_score: float
    colour: Colour
    reasons: tuple[str, ...]
    uncertain: bool
    method: Method


class _Model(Protocol):
    @property
    def method(self) -> Method: ...

    @property
    def measures(self) -> tuple[str, ...]: ...

    def score(self, z: Floats) -> tuple[Floats, Floats, Floats]:
        """Outlyingness, score in robust SDs and per-measure contributions of z's rows."""
        ...


def _chi2_log_tail(d2: float, df: int) -> float:
    """log P(χ²_df > d2); past scipy's underflow (d2 ≳ 1400) the leading asymptotic term."""
    log_tail = float(chi2.logsf(d2, df))
    if np.isfinite(log_tail):
        return log_tail
    return (df / 2 - 1) * math.log(d2 / 2) - d2 / 2 - float(gammaln(df / 2))


def _tail_to_z(log_tail: float) -> float:
    """|z| of a normal measure with two-sided tail ``exp(log_tail)``."""
    return float(-ndtri_exp(min(log_tail, 0.0) - math.log(2)))


@dataclass(frozen=True)
class _Mcd:
    measures: tuple[str, ...]
    location: Floats
    covariance: Floats
    method: Method = Method.MCD

    def score(self, z: Floats) -> tuple[Floats, Floats, Floats]:
        rows = [self._row(row) for row in z]
        outlying, score = (np.array([r[i] for r in rows], dtype=np.float64) for i in (0, 1))
        return outlying, score, np.array([r[2] for r in rows]).reshape(z.shape)

    def _row(self, z: Floats) -> tuple[float, float, Floats]:
        seen = np.isfinite(z)
        contribution = np.zeros_like(z)
        if not seen.any():
            return np.nan, np.nan, contribution
        diff = z[seen] - self.location[seen]
        weights = np.linalg.solve(self.covariance[np.ix_(seen, seen)], diff)
        d2 = max(float(diff @ weights), 0.0)
        contribution[seen] = diff * weights
        log_tail = _chi2_log_tail(d2, int(seen.sum()))
        return math.sqrt(d2), _tail_to_z(log_tail), contribution


@dataclass(frozen=True)
class _Forest:
    measures: tuple[str, ...]
    forest: IsolationForest
    calibration: RobustScale
    method: Method = Method.IFOREST

    def score(self, z: Floats) -> tuple[Floats, Floats, Floats]:
        filled = np.where(np.isfinite(z), z, 0.0)  # a missing measure sits at the median
        anomaly = -self.forest.score_samples(filled) if len(z) else np.empty(0)
        s = np.maximum(self.calibration.z(anomaly), 0.0)
        s[~np.isfinite(z).any(axis=1)] = np.nan
        return s, s, np.where(np.isfinite(z), z**2, 0.0)


_Z90 = 1.2816  # Φ⁻¹(0.9)


def _upper_scale(scores: Floats, config: NormalityConfig) -> RobustScale:
    """The forest's scores in SDs read off their upper tail: ``(Q₀.₉ − median) / Φ⁻¹(0.9)``.

    Anomaly scores are skewed to the right and their tail is long, so the symmetric MAD
    under-states the spread that matters: on Gaussian and uniform measures (80 fitted
    rows) it made 2.4 % of new clean points amber and 0.07 % red; the 90th percentile
    gives 0.1 % and none, about the normal rates of the thresholds, and keeps strongly
    correlated clean rows (where the forest's tail is longest) out of red.
    """
    median = float(np.median(scores))
    upper = (float(np.quantile(scores, 0.9)) - median) / _Z90
    floor = max(config.mad_floor_rel * abs(median), config.mad_floor_abs)
    n = int(scores.size)
    return RobustScale("isolation forest", Transform.LINEAR, median, max(upper, floor), n,
                       "project", upper < floor)  # fmt: skip


def _fit_model(zref: Floats, measures: tuple[str, ...], config: NormalityConfig) -> _Model | None:
    """The multivariate model on the complete rows of ``zref``, or None (→ max |z|)."""
    complete = zref[np.isfinite(zref).all(axis=1)]
    needed = max(config.min_results, math.ceil(config.rows_per_measure * len(measures)))
    if config.method is Method.MAXZ or not measures or len(complete) < needed:
        return None
    if config.method is Method.IFOREST:
        forest = IsolationForest(n_estimators=200, random_state=config.seed).fit(complete)
        return _Forest(measures, forest, _upper_scale(-forest.score_samples(complete), config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mcd = MinCovDet(random_state=config.seed).fit(complete)
        except (ValueError, np.linalg.LinAlgError) as exc:
            logger.warning("MCD could not be fitted (%s); ranking by max |z|", exc)
            return None
    for w in caught:
        logger.debug("MCD: %s", w.message)
    covariance = np.asarray(mcd.covariance_, dtype=np.float64)
    if np.linalg.cond(covariance) > 1e12:
        logger.warning("MCD covariance is singular over %s; ranking by max |z|", measures)
        return None
    # consistency on the fitted rows: their median d² is χ²_p's median (the reweighted
    # MCD covariance of a small sample is too tight, which would make clean rows amber)
    covariance *= float(np.median(mcd.mahalanobis(complete))) / chi2.median(len(measures))
    return _Mcd(measures, np.asarray(mcd.location_, dtype=np.float64), covariance)


def _fit_scales(
    accepted: MeasureTable,
    measures: Iterable[str],
    reference: Mapping[str, ArrayLike],
    config: NormalityConfig,
) -> dict[str, RobustScale]:
    scales = {}
    for m in measures:
        transform = config.transforms.get(m, config.default_transform)
        project = finite_values(accepted.column(m))
        ref = finite_values(reference.get(m, ()))
        values, source = (
            (project, "project") if project.size >= config.min_results else (ref, "reference")
        )
        if values.size >= config.min_results:
            scales[m] = fit_scale(
                values,
                measure=m,
                transform=transform,
                source=source,
                auto_skew=config.auto_skew,
                mad_floor_rel=config.mad_floor_rel,
                mad_floor_abs=config.mad_floor_abs,
                point_mass_share=config.point_mass_share,
                side=config.sides.get(m, Side.BOTH),
            )
    return scales


def _fmt(x: float) -> str:
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _measure_reason(scale: RobustScale, x: float, z: float, unit: str) -> str:
    side = "above" if z > 0 else "below"
    unit = f" {unit}" if unit else ""
    log = " on the log scale" if scale.transform is Transform.LOG1P else ""
    other = f" of the values other than {_fmt(scale.mass)}" if scale.mass is not None else ""
    return (
        f"{scale.measure} = {_fmt(x)}{unit} is {abs(z):.1f} robust SDs{log} {side} the "
        f"{scale.source} median{other} {_fmt(scale.centre)}{unit}"
    )


def _combination_reason(model: _Model, outlying: float, contribution: Floats) -> str:
    order = np.argsort(-contribution, kind="stable")
    positive = contribution[order][contribution[order] > 0]
    keep = max(1, int(np.searchsorted(np.cumsum(positive), 0.8 * positive.sum()) + 1))
    names = [model.measures[i] for i in order[: min(keep, 3)]]
    what = (
        f"{names[0]} is unusual given the other measures"
        if len(names) == 1
        else f"the combination of {' and '.join(names)} is unusual"
    )
    if model.method is Method.MCD:
        return f"{what} (robust Mahalanobis distance {outlying:.1f})"
    return f"{what} (isolation forest: {outlying:.1f} robust SDs of anomaly)"


@dataclass(frozen=True)
class _Context:
    counts: Mapping[str, int]  # accepted results with each measure
    scales: Mapping[str, RobustScale]
    model: _Model | None
    config: NormalityConfig
    units: Mapping[str, str]


_ModelRow = tuple[float, float, Floats]  # outlyingness, score, contributions


def _scores(
    ctx: _Context, z: Mapping[str, float], scored: _ModelRow | None
) -> tuple[Method, float, float, str | None]:
    """(method used, outlyingness, rank score, reason for an odd combination) of one task."""
    if not z:
        return Method.MAXZ, np.nan, np.nan, None
    maxz = max(abs(v) for v in z.values())
    if ctx.model is None or scored is None:
        return Method.MAXZ, maxz, maxz, None
    outlying, model_score, contribution = scored
    if not np.isfinite(model_score):
        return Method.MAXZ, maxz, maxz, None
    outside = [abs(v) for m, v in z.items() if m not in ctx.model.measures]
    if maxz >= ctx.config.thresholds.red:  # one measure this far out is red on its own
        outside.append(maxz)
    # the combination is worth saying when it is odder than any one measure
    why = _combination_reason(ctx.model, outlying, contribution) if model_score > maxz else None
    return ctx.model.method, outlying, max([model_score, *outside]), why


def _score_one(
    ctx: _Context, key: str, row: Mapping[str, float], scored: _ModelRow | None
) -> NormalityResult:
    """Scores, colour and reasons of one task, before the uncertainty flag."""
    th = ctx.config.thresholds
    z = {m: float(ctx.scales[m].z(x)) for m, x in row.items() if m in ctx.scales}
    method, outlying, score, combination = _scores(ctx, z, scored)
    if not z:
        n = max((ctx.counts.get(m, 0) for m in row), default=0)
        why = f"too few results to rank (n={n})" if row else "no measures to rank"
        return NormalityResult(key, z, outlying, score, Colour.AMBER, (why,), False, method)
    if score < th.amber:
        why = f"rank score {score:.1f} is below the amber threshold {th.amber:g}"
        return NormalityResult(key, z, outlying, score, Colour.GREEN, (why,), False, method)
    reasons = [
        _measure_reason(ctx.scales[m], row[m], v, ctx.units.get(m, ""))
        for m, v in sorted(z.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        if abs(v) >= th.amber
    ]
    if combination is not None:
        reasons.append(combination)
    colour = Colour.RED if score >= th.red else Colour.AMBER
    return NormalityResult(key, z, outlying, score, colour, tuple(reasons), False, method)


def _flag_uncertain(result: NormalityResult, value: float, threshold: float) -> NormalityResult:
    colour = Colour.AMBER if result.colour is Colour.GREEN else result.colour
    reasons = result.reasons if result.colour is not Colour.GREEN else ()
    why = f"the model's uncertainty {_fmt(value)} is above the review threshold {_fmt(threshold)}"
    return NormalityResult(
        result.task_key,
        result.z,
        result.outlyingness,
        result.rank_score,
        colour,
        (*reasons, why),
        True,
        result.method,
    )


def score_tasks(
    accepted: MeasureTable,
    tasks: MeasureTable | None = None,
    *,
    reference: Mapping[str, ArrayLike] | None = None,
    uncertainty: Mapping[str, float] | None = None,
    review_threshold: float | None = None,
    units: Mapping[str, str] | None = None,
    config: NormalityConfig | None = None,
) -> list[NormalityResult]:
    """Rank ``tasks`` (default: every accepted task) against the project's accepted results.

    Args:
        accepted: The project's accepted results, the distribution a task is judged against.
        tasks: The tasks to score, in the order returned.
        reference: The bundle's reference distribution, measure → values, used for a measure
            with fewer than ``config.min_results`` values in the project.
        uncertainty: The model's uncertainty score per task key (missing keys: not flagged).
        review_threshold: The bundle's review threshold; required with ``uncertainty``.
        units: Unit per measure for the reasons, e.g. ``{"volume_ml.WT": "mL"}``.
        config: Method, thresholds and floors; defaults to :class:`NormalityConfig()`.

    Returns:
        One result per task, in the order of ``tasks``; :func:`rank` orders them.

    Raises:
        ValueError: If ``uncertainty`` is given without ``review_threshold``.

    Example:
        >>> table = MeasureTable.from_records({f"t{i}": {"v": 40.0 + i} for i in range(12)})
        >>> [r.colour.value for r in score_tasks(table)][:2]
        ['green', 'green']
    """
    if uncertainty is not None and review_threshold is None:
        raise ValueError("uncertainty needs review_threshold: pass the bundle's review threshold")
    config = config or NormalityConfig()
    tasks = accepted if tasks is None else tasks
    scales = _fit_scales(accepted, tasks.measures, reference or {}, config)
    model = _model_for(accepted, scales, config)
    counts = {m: int(np.isfinite(accepted.column(m)).sum()) for m in tasks.measures}
    ctx = _Context(counts, scales, model, config, units or {})
    model_rows = _model_rows(model, scales, tasks)
    results = []
    for i, (key, values) in enumerate(zip(tasks.tasks, tasks.values, strict=True)):
        row = {m: float(x) for m, x in zip(tasks.measures, values, strict=True) if np.isfinite(x)}
        result = _score_one(ctx, key, row, model_rows[i] if model_rows else None)
        u = (uncertainty or {}).get(key)
        if u is not None and review_threshold is not None and u > review_threshold:
            result = _flag_uncertain(result, u, review_threshold)
        results.append(result)
    return results


def _model_for(
    accepted: MeasureTable, scales: Mapping[str, RobustScale], config: NormalityConfig
) -> _Model | None:
    # a tree splits a point mass off like any other cluster; MCD's ellipse degenerates on
    # the tied block, so there such a measure enters by its own |z|
    measures = tuple(
        m
        for m, s in scales.items()
        if s.source == "project"
        and not s.floored
        and s.side is Side.BOTH
        and (s.mass is None or config.method is Method.IFOREST)
    )
    if not measures:
        return None
    zref = np.column_stack([scales[m].z(accepted.column(m)) for m in measures])
    return _fit_model(zref, measures, config)


def _model_rows(
    model: _Model | None, scales: Mapping[str, RobustScale], tasks: MeasureTable
) -> list[_ModelRow] | None:
    """The model's outputs for every task, in one call (an isolation forest is slow per row)."""
    if model is None:
        return None
    z = np.column_stack([scales[m].z(tasks.column(m)) for m in model.measures])
    outlying, score, contribution = model.score(z)
    return [(float(o), float(s), c) for o, s, c in zip(outlying, score, contribution, strict=True)]


def rank(results: Iterable[NormalityResult]) -> list[NormalityResult]:
    """The review queue's order: red, amber, green; within a colour the highest score first.

    Unscored results (NaN score) come last within their colour, then ties by task key.
    """

    def key(r: NormalityResult) -> tuple[int, float, str]:
        score = r.rank_score if np.isfinite(r.rank_score) else -np.inf
        return (-_SEVERITY[r.colour], -score, r.task_key)

    return sorted(results, key=key)
