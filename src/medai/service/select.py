"""Which units of a project a job runs on: evaluating a selection on the archive tree.

The language and its grammar are in :mod:`medai.service.select_parse`; this module
evaluates a :class:`Selection` on :mod:`medai.service.tree` records (values, no database)
and says, for a dry run, which units were selected, the series each gets, and why the
others were left out.

Semantics:

- Units are ordered by participant, then study (StudyDate, StudyTime, UID), then series
  (SeriesNumber, UID); the same records give the same result.
- A study still receiving (``complete=False``) is never selected; at participant level a
  participant with such a study is left out, at project level that study is.
- ``has series ALIAS (…)`` searches: the unit qualifies when some assignment of series to
  aliases satisfies the whole condition (a small backtracking search). Each alias gets the
  series of the first such assignment in series order; a unit with no bound alias gets all
  its series under ``"all"`` (at series level: its own series under ``"series"``).
- At project level the condition is read as at study level; the one project unit gets the
  series of every study that qualifies (per alias) and the others are listed as excluded.
- String ``=`` is case-insensitive and ignores surrounding whitespace; values that both read
  as numbers compare as numbers; ``~`` is a case-insensitive regular-expression search,
  ``like`` a case-insensitive glob. A missing attribute makes every comparison false.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from medai.service.select_ast import (
    And,
    Attribute,
    Compare,
    Condition,
    CountSeries,
    Exists,
    HasSeries,
    InList,
    Literal,
    Not,
    Or,
    Selection,
)
from medai.service.select_parse import SelectionSyntaxError, parse_selection
from medai.service.tree import Level, ParticipantRecord, SeriesRecord, StudyRecord

__all__ = [
    "Exclusion",
    "Selection",
    "SelectionResult",
    "SelectionSyntaxError",
    "Unit",
    "evaluate_selection",
    "parse_selection",
]

STILL_RECEIVING = "still receiving"
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_Pair = tuple[StudyRecord, SeriesRecord]
_Env = Mapping[str, _Pair]


@dataclass(frozen=True)
class Unit:
    """One selected unit: one task of a job.

    ``key`` is the project name, participant id, study UID or series UID (by ``level``);
    ``series`` maps each alias to the series UIDs it gets.
    """

    level: Level
    key: str
    participant: str | None
    study_uid: str | None
    series: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Exclusion:
    """A unit left out, with a sentence naming the first clause that failed."""

    key: str
    reason: str


@dataclass(frozen=True)
class SelectionResult:
    """What a selection picked (``units``) and what it left out (``excluded``), in order."""

    level: Level
    units: tuple[Unit, ...]
    excluded: tuple[Exclusion, ...]


@dataclass(frozen=True)
class _Context:
    participant: ParticipantRecord
    study: StudyRecord | None
    pool: tuple[_Pair, ...]
    current: _Pair | None = None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _lookup(attribute: Attribute, ctx: _Context, env: _Env) -> str | int | float | None:
    scope, key = attribute.scope, attribute.keyword
    study = ctx.current[0] if ctx.current else ctx.study
    if scope is None:
        chain = [ctx.current[1].attributes] if ctx.current else []
        chain += [study.attributes] if study else []
        chain.append(ctx.participant.attributes)
    elif scope == "participant":
        chain = [ctx.participant.attributes]
    elif scope == "study":
        chain = [study.attributes] if study else []
    elif scope == "series":
        chain = [ctx.current[1].attributes] if ctx.current else []
    else:
        chain = [env[scope][1].attributes] if scope in env else []
    for attributes in chain:
        if key in attributes:
            return attributes[key]
    return None


def _equal(left: object, right: object) -> bool:
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return a == b
    return str(left).strip().casefold() == str(right).strip().casefold()


def _order(left: object, op: str, right: object) -> bool:
    compare = _ORDER[op]
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return compare(a, b)
    return compare(str(left).strip().casefold(), str(right).strip().casefold())


def _compare(left: object, op: str, right: object) -> bool:
    if op == "=":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op == "~":
        return re.search(str(right), str(left), re.IGNORECASE) is not None
    if op == "like":
        return fnmatch.fnmatchcase(str(left).strip().casefold(), str(right).casefold())
    return _order(left, op, right)


def _test(condition: Compare | InList | Exists, ctx: _Context, env: _Env) -> bool:
    value = _lookup(condition.attribute, ctx, env)
    if value is None:
        return False
    if isinstance(condition, Exists):
        return str(value).strip() != ""
    if isinstance(condition, InList):
        return any(_equal(value, v) for v in condition.values)
    other: Literal | None
    if isinstance(condition.value, Attribute):
        other = _lookup(condition.value, ctx, env)
    else:
        other = condition.value
    return other is not None and _compare(value, condition.op, other)


def _solve(condition: Condition, ctx: _Context, env: _Env) -> Iterator[_Env]:
    """Every alias binding (extending ``env``) under which ``condition`` holds, lazily."""
    if isinstance(condition, And):
        yield from _solve_all(condition.parts, ctx, env)
    elif isinstance(condition, Or):
        for part in condition.parts:
            yield from _solve(part, ctx, env)
    elif isinstance(condition, Not):
        if next(_solve(condition.condition, ctx, env), None) is None:
            yield env
    elif isinstance(condition, HasSeries):
        for pair in ctx.pool:
            bound = {**env, condition.alias: pair}
            if _holds(condition.condition, replace(ctx, current=pair), bound):
                yield bound
    elif isinstance(condition, CountSeries):
        if _compare(_count(condition, ctx, env), condition.op, condition.number):
            yield env
    elif _test(condition, ctx, env):
        yield env


def _solve_all(parts: Sequence[Condition], ctx: _Context, env: _Env) -> Iterator[_Env]:
    if not parts:
        yield env
        return
    for partial in _solve(parts[0], ctx, env):
        yield from _solve_all(parts[1:], ctx, partial)


def _holds(condition: Condition, ctx: _Context, env: _Env) -> bool:
    return next(_solve(condition, ctx, env), None) is not None


def _count(condition: CountSeries, ctx: _Context, env: _Env) -> int:
    if condition.condition is None:
        return len(ctx.pool)
    inner = condition.condition
    return sum(_holds(inner, replace(ctx, current=pair), env) for pair in ctx.pool)


def _why_not(condition: Condition, ctx: _Context) -> str:
    """The sentence for a unit that failed: the first top-level clause no binding satisfies."""
    parts = condition.parts if isinstance(condition, And) else (condition,)
    env: _Env = {}
    for index, part in enumerate(parts):
        found = next(_solve_all(parts[: index + 1], ctx, {}), None)
        if found is None:
            return _explain(part, ctx, env)
        env = found
    return f"not satisfied: {condition}"  # pragma: no cover - only reached if solve is inconsistent


def _explain(part: Condition, ctx: _Context, env: _Env) -> str:
    if isinstance(part, HasSeries):
        return f"no series matched {part.alias} ({part.condition})"
    if isinstance(part, CountSeries):
        return f"not satisfied: {part} ({_count(part, ctx, env)} series matched)"
    if isinstance(part, Compare | InList | Exists):
        value = _lookup(part.attribute, ctx, env)
        shown = "missing" if value is None else repr(value)
        return f"not satisfied: {part} ({part.attribute} is {shown})"
    return f"not satisfied: {part}"


def _series_key(series: SeriesRecord) -> tuple[float, str]:
    number = _number(series.attributes.get("SeriesNumber", ""))
    return (number if number is not None else float("inf"), series.series_uid)


def _study_key(study: StudyRecord) -> tuple[str, str, str]:
    date = str(study.attributes.get("StudyDate", ""))
    return (date, str(study.attributes.get("StudyTime", "")), study.study_uid)


def _pool(studies: Sequence[StudyRecord]) -> tuple[_Pair, ...]:
    return tuple(
        (study, series) for study in studies for series in sorted(study.series, key=_series_key)
    )


def _match(selection: Selection, ctx: _Context) -> dict[str, tuple[str, ...]] | str:
    """The unit's series by alias when ``ctx`` qualifies, else the reason it does not."""
    if not ctx.pool:
        return "has no series"
    if selection.condition is None:
        return {"all": tuple(series.series_uid for _, series in ctx.pool)}
    env = next(_solve(selection.condition, ctx, {}), None)
    if env is None:
        return _why_not(selection.condition, ctx)
    if not env:
        return {"all": tuple(series.series_uid for _, series in ctx.pool)}
    return {alias: (pair[1].series_uid,) for alias, pair in sorted(env.items())}


def _studies(participant: ParticipantRecord) -> list[StudyRecord]:
    return sorted(participant.studies, key=_study_key)


def _by_study(
    selection: Selection, participants: Sequence[ParticipantRecord], level: Level
) -> tuple[list[Unit], list[Exclusion]]:
    units: list[Unit] = []
    excluded: list[Exclusion] = []
    for participant in participants:
        for study in _studies(participant):
            if not study.complete:
                excluded.append(Exclusion(study.study_uid, STILL_RECEIVING))
                continue
            ctx = _Context(participant, study, _pool([study]))
            found = _match(selection, ctx)
            if isinstance(found, str):
                excluded.append(Exclusion(study.study_uid, found))
            else:
                pid = participant.participant
                units.append(Unit(level, study.study_uid, pid, study.study_uid, found))
    return units, excluded


def _by_series(
    selection: Selection, participants: Sequence[ParticipantRecord]
) -> tuple[list[Unit], list[Exclusion]]:
    units: list[Unit] = []
    excluded: list[Exclusion] = []
    for participant in participants:
        for study in _studies(participant):
            for pair in _pool([study]):
                uid = pair[1].series_uid
                if not study.complete:
                    excluded.append(Exclusion(uid, STILL_RECEIVING))
                    continue
                ctx = _Context(participant, study, (pair,), current=pair)
                if selection.condition is not None and not _holds(selection.condition, ctx, {}):
                    excluded.append(Exclusion(uid, _why_not(selection.condition, ctx)))
                    continue
                series = {"series": (uid,)}
                units.append(
                    Unit(Level.SERIES, uid, participant.participant, study.study_uid, series)
                )
    return units, excluded


def _by_participant(
    selection: Selection, participants: Sequence[ParticipantRecord]
) -> tuple[list[Unit], list[Exclusion]]:
    units: list[Unit] = []
    excluded: list[Exclusion] = []
    for participant in participants:
        pid = participant.participant
        receiving = [s.study_uid for s in _studies(participant) if not s.complete]
        if receiving:
            excluded.append(Exclusion(pid, f"study {receiving[0]} is {STILL_RECEIVING}"))
            continue
        ctx = _Context(participant, None, _pool(_studies(participant)))
        found = _match(selection, ctx)
        if isinstance(found, str):
            excluded.append(Exclusion(pid, found))
        else:
            units.append(Unit(Level.PARTICIPANT, pid, pid, None, found))
    return units, excluded


def _by_project(
    selection: Selection, participants: Sequence[ParticipantRecord]
) -> tuple[list[Unit], list[Exclusion]]:
    studies, excluded = _by_study(selection, participants, Level.STUDY)
    projects = sorted({p.project for p in participants})
    if len(projects) > 1:
        raise ValueError(
            f"participants come from several projects {projects}; "
            "evaluate a selection on one project's participants at a time"
        )
    if not studies:
        return [], excluded
    merged: dict[str, list[str]] = {}
    for unit in studies:
        for alias, uids in unit.series.items():
            merged.setdefault(alias, []).extend(uids)
    series = {alias: tuple(uids) for alias, uids in sorted(merged.items())}
    return [Unit(Level.PROJECT, projects[0], None, None, series)], excluded


def evaluate_selection(
    selection: Selection, participants: Sequence[ParticipantRecord]
) -> SelectionResult:
    """The units ``selection`` picks from one project's ``participants``, and those it leaves.

    Args:
        selection: From :func:`parse_selection`.
        participants: The project's archive tree (any order; the result is ordered).

    Returns:
        The selected units (each with the series it gets, by alias) and the excluded ones,
        each with a sentence naming the clause that failed or ``"still receiving"``.

    Raises:
        TypeError: ``selection`` is not a :class:`Selection`.
        ValueError: ``participants`` span several projects.

    Example:
        >>> sel = parse_selection('select series where Modality = "MR"')
        >>> evaluate_selection(sel, []).units
        ()
    """
    if not isinstance(selection, Selection):
        raise TypeError(
            f"selection must be a Selection (from parse_selection), got {type(selection).__name__}"
        )
    ordered = sorted(participants, key=lambda p: p.participant)
    if selection.level is Level.SERIES:
        units, excluded = _by_series(selection, ordered)
    elif selection.level is Level.STUDY:
        units, excluded = _by_study(selection, ordered, Level.STUDY)
    elif selection.level is Level.PARTICIPANT:
        units, excluded = _by_participant(selection, ordered)
    else:
        units, excluded = _by_project(selection, ordered)
    return SelectionResult(selection.level, tuple(units), tuple(excluded))
