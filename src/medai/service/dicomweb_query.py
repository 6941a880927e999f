"""QIDO-RS for ``medai serve``: DICOM JSON records of studies, series and instances built
from the index (never from files), and the matching rules of PS3.18 §8.3.4 on them.

A record is a DICOM JSON object (``{"0020000D": {"vr": "UI", "Value": [...]}, ...}``).
Studies and series are answered from their index rows; instances from their rows and the
header each keeps (:attr:`medai.service.db.Instance.header`), so an instance-level query
can match and return any attribute of the header.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medai.service.archive import (
    PARTICIPANT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    valid_uid,
)
from medai.service.db import Instance, Participant, Series, Study

__all__ = [
    "SERIES_MATCHING",
    "STUDY_MATCHING",
    "DicomJson",
    "Query",
    "QueryError",
    "element",
    "instance_records",
    "parse_query",
    "run_query",
    "series_records",
    "study_records",
    "tag_of",
]

DicomJson = dict[str, Any]
_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_MAX_LIMIT = 100_000


class QueryError(ValueError):
    """A QIDO-RS query parameter that is not valid; the message names it and the fix."""


@dataclass(frozen=True)
class Query:
    """A parsed QIDO-RS query: matching keys (tag → value), paging, extra fields."""

    match: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    offset: int = 0
    include: frozenset[str] = frozenset()
    include_all: bool = False
    fuzzy: bool = False


def tag_of(key: str) -> str:
    """The 8-digit hex tag of a keyword or tag (``PatientID`` or ``00100020``).

    Raises:
        QueryError: Neither a known keyword nor an 8-digit hex tag.
    """
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return key.upper()
    tag = tag_for_keyword(key)
    if tag is None:
        raise QueryError(
            f"query parameter {key!r} is neither a DICOM keyword nor a tag: use a keyword "
            "such as PatientID or an 8-digit hex tag such as 00100020"
        )
    return f"{tag:08X}"


@functools.lru_cache(maxsize=4096)
def _vr(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16))).split(" or ")[0]
    except KeyError:
        return "UN"


def _int(name: str, text: str) -> int:
    if not text.isdigit() or int(text) > _MAX_LIMIT:
        raise QueryError(f"{name}={text!r} is not valid: give a whole number 0–{_MAX_LIMIT}")
    return int(text)


def _check_value(key: str, tag: str, value: str) -> None:
    vr = _vr(tag)
    if vr == "UI" and value:
        for uid in re.split(r"[,\\]", value):
            if not valid_uid(uid):
                raise QueryError(
                    f"{key}={value!r}: {uid!r} is not a valid UID (digits and dots, at most "
                    "64 characters); separate several UIDs with commas"
                )
    if vr in _RANGE_VRS and value and not re.fullmatch(r"[0-9.+]*(-[0-9.+]*)?", value):
        raise QueryError(
            f"{key}={value!r} is not a {vr} value or range: use e.g. 20240101, "
            "20240101-20241231, -20241231 or 20240101-"
        )


def parse_query(params: Iterable[tuple[str, str]]) -> Query:
    """Parse the query string's ``(name, value)`` pairs.

    Raises:
        QueryError: An unknown attribute, a bad UID, date range, limit or offset.
    """
    match: dict[str, str] = {}
    include: set[str] = set()
    include_all = fuzzy = False
    limit: int | None = None
    offset = 0
    for key, value in params:
        if key == "limit":
            limit = _int("limit", value)
        elif key == "offset":
            offset = _int("offset", value)
        elif key == "fuzzymatching":
            fuzzy = value.lower() == "true"
        elif key == "includefield":
            for name in filter(None, (v.strip() for v in value.split(","))):
                if name == "all":
                    include_all = True
                else:
                    include.add(tag_of(name))
        else:
            tag = tag_of(key)
            _check_value(key, tag, value)
            match[tag] = value
    return Query(match, limit, offset, frozenset(include), include_all, fuzzy)


def element(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    """One DICOM JSON element from an index value (a backslash joins multiple values)."""
    tag = f"{tag_for_keyword(keyword):08X}"
    vr = _vr(tag)
    if value is None or value == "":
        return tag, {"vr": vr}
    values: list[Any]
    if isinstance(value, list | tuple):
        values = list(value)
    elif isinstance(value, str) and vr not in _TEXT_VRS:
        values = value.split("\\")
    else:
        values = [value]
    if vr == "SQ":
        pass  # items are DICOM JSON objects already
    elif vr == "PN":
        values = [{"Alphabetic": str(v)} for v in values]
    elif vr in _INT_VRS:
        values = [int(float(v)) for v in values]
    elif vr in _FLOAT_VRS:
        values = [float(v) for v in values]
    else:
        values = [str(v) for v in values]
    return tag, {"vr": vr, "Value": values}


def _record(values: Mapping[str, Any]) -> DicomJson:
    return dict(element(keyword, value) for keyword, value in values.items())


def _patient(participant: Participant) -> dict[str, Any]:
    return {"PatientID": participant.patient_id, **participant.attributes}


def study_records(
    session: Session, project_id: int, url: str, *, study_uid: str | None = None
) -> list[DicomJson]:
    """One record per study of the project (or just ``study_uid``), sorted by arrival."""
    query = (
        select(Study, Participant)
        .join(Participant, Participant.id == Study.participant_id)
        .where(Study.project_id == project_id)
        .order_by(Study.id)
    )
    if study_uid is not None:
        query = query.where(Study.study_uid == study_uid)
    rows = session.execute(query).all()
    ids = [study.id for study, _ in rows]
    n_series: dict[int, int] = {}
    modalities: dict[int, set[str]] = {}
    for study_id, modality in session.execute(
        select(Series.study_id, Series.modality).where(Series.study_id.in_(ids))
    ):
        n_series[study_id] = n_series.get(study_id, 0) + 1
        if modality:
            modalities.setdefault(study_id, set()).add(modality)
    n_instances: dict[int, int] = {
        study_id: count
        for study_id, count in session.execute(
            select(Series.study_id, func.count(Instance.id))
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id.in_(ids))
            .group_by(Series.study_id)
        )
    }
    return [
        _record(
            {
                **_patient(participant),
                **study.attributes,
                "StudyInstanceUID": study.study_uid,
                "ModalitiesInStudy": sorted(modalities.get(study.id, ())),
                "NumberOfStudyRelatedSeries": n_series.get(study.id, 0),
                "NumberOfStudyRelatedInstances": n_instances.get(study.id, 0),
                "InstanceAvailability": "ONLINE",
                "RetrieveURL": f"{url}/studies/{study.study_uid}",
            }
        )
        for study, participant in rows
    ]


def _study_parts(study: Study, participant: Participant) -> dict[str, Any]:
    return {**_patient(participant), **study.attributes, "StudyInstanceUID": study.study_uid}


def series_records(
    session: Session, project_id: int, url: str, *, study_uid: str | None = None
) -> list[DicomJson]:
    """One record per series (with its study's attributes), by study, number and arrival."""
    query = (
        select(Series, Study, Participant, func.count(Instance.id))
        .join(Study, Study.id == Series.study_id)
        .join(Participant, Participant.id == Study.participant_id)
        .outerjoin(Instance, Instance.series_id == Series.id)
        .where(Study.project_id == project_id)
        .group_by(Series.id, Study.id, Participant.id)
        .order_by(Study.id, Series.id)
    )
    if study_uid is not None:
        query = query.where(Study.study_uid == study_uid)
    records = []
    for series, study, participant, count in session.execute(query):
        base = f"{url}/studies/{study.study_uid}/series/{series.series_uid}"
        values = {
            **_study_parts(study, participant),
            **series.attributes,
            "Modality": series.modality,
            "SeriesInstanceUID": series.series_uid,
            "NumberOfSeriesRelatedInstances": count,
            "RetrieveURL": base,
        }
        records.append(_record(values))
    return records


_INSTANCE_DEFAULTS = ("00280010", "00280011", "00280100", "00280008", "00080016", "00080018")


def _series_parts(
    session: Session, project_id: int, url: str, study_uid: str | None, series_uid: str | None
) -> dict[int, tuple[DicomJson, str]]:
    """Per series id: its study's and its own record elements, and its RetrieveURL."""
    query = (
        select(Series, Study, Participant)
        .join(Study, Study.id == Series.study_id)
        .join(Participant, Participant.id == Study.participant_id)
        .where(Study.project_id == project_id)
    )
    if study_uid is not None:
        query = query.where(Study.study_uid == study_uid)
    if series_uid is not None:
        query = query.where(Series.series_uid == series_uid)
    parts = {}
    for series, study, participant in session.execute(query):
        values = {
            **_study_parts(study, participant),
            "Modality": series.modality,
            "SeriesDescription": series.description,
            "SeriesNumber": series.attributes.get("SeriesNumber"),
            "SeriesInstanceUID": series.series_uid,
            "InstanceAvailability": "ONLINE",
        }
        base = f"{url}/studies/{study.study_uid}/series/{series.series_uid}/instances/"
        parts[series.id] = (_record(values), base)
    return parts


_TAG = {k: f"{tag_for_keyword(k):08X}" for k in ("SOPClassUID", "SOPInstanceUID",
                                                 "InstanceNumber", "RetrieveURL")}  # fmt: skip


def instance_records(
    session: Session, project_id: int, url: str, *, study_uid: str | None = None,
    series_uid: str | None = None, query: Query | None = None,
) -> list[DicomJson]:  # fmt: skip
    """One record per instance: its study and series attributes, the default instance
    attributes, and whatever of its header ``query`` matches on or includes.

    Two queries: the series in scope, then the instances' columns (no ORM objects)."""
    wanted = set(_INSTANCE_DEFAULTS)
    include_all = False
    if query is not None:
        wanted |= set(query.match) | query.include
        include_all = query.include_all
    parts = _series_parts(session, project_id, url, study_uid, series_uid)
    columns = (Instance.series_id, Instance.sop_class_uid, Instance.sop_uid)
    statement = (
        select(*columns, Instance.instance_number, Instance.header)
        .where(Instance.project_id == project_id, Instance.series_id.in_(list(parts)))
        .order_by(Instance.series_id, Instance.instance_number, Instance.id)
    )
    records = []
    for series_id, sop_class, sop_uid, number, header in session.execute(statement):
        record = dict(header) if include_all else {t: header[t] for t in wanted if t in header}
        common, base = parts[series_id]
        record.update(common)
        record[_TAG["SOPClassUID"]] = {"vr": "UI", "Value": [sop_class]}
        record[_TAG["SOPInstanceUID"]] = {"vr": "UI", "Value": [sop_uid]}
        record[_TAG["InstanceNumber"]] = (
            {"vr": "IS", "Value": [number]} if number is not None else {"vr": "IS"}
        )
        record[_TAG["RetrieveURL"]] = {"vr": "UR", "Value": [base + sop_uid]}
        records.append(record)
    return records


def _texts(item: Mapping[str, Any]) -> list[str]:
    out = []
    for value in item.get("Value", []):
        if isinstance(value, dict):  # PN: match the alphabetic group
            out.append(str(value.get("Alphabetic", "")))
        elif isinstance(value, int | float | str):
            out.append(str(value))
    return out


def _matcher(tag: str, wanted: str, *, fuzzy: bool) -> Callable[[list[str]], bool]:
    vr = _vr(tag)
    if vr == "UI":
        uids = set(re.split(r"[,\\]", wanted))
        return lambda values: any(v in uids for v in values)
    if vr in _RANGE_VRS and "-" in wanted:
        low, high = wanted.split("-", 1)
        return lambda values: any(
            (not low or v >= low) and (not high or v[: len(high)] <= high) for v in values
        )
    if vr in _INT_VRS | _FLOAT_VRS:
        try:
            number = float(wanted)
        except ValueError as error:
            raise QueryError(f"{keyword_for_tag(int(tag, 16)) or tag}={wanted!r}: "
                             f"expected a number for this {vr} attribute") from error  # fmt: skip
        return lambda values: any(float(v) == number for v in values)
    flags = re.IGNORECASE if fuzzy or vr == "PN" else 0
    pattern = re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in wanted), flags
    )
    return lambda values: any(pattern.fullmatch(v) for v in values)


def _tags(*keywords: str) -> frozenset[str]:
    return frozenset(f"{tag_for_keyword(k):08X}" for k in keywords)


STUDY_MATCHING = _tags(
    "PatientID", *PARTICIPANT_KEYWORDS, *STUDY_KEYWORDS, "StudyInstanceUID", "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_MATCHING = STUDY_MATCHING - _tags(
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"
) | _tags(*SERIES_KEYWORDS, "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")


def run_query(
    records: list[DicomJson], query: Query, *, supported: frozenset[str] | None = None
) -> tuple[list[DicomJson], list[str]]:
    """The records that match ``query``, paged; and the keywords it could not match on
    because the index does not hold them at this level (``supported``; None: any), which
    are ignored and answered with a warning, as PS3.18 asks."""
    tests = []
    unsupported = []
    for tag, wanted in query.match.items():
        if not wanted:  # universal matching: only asks for the attribute
            continue
        if supported is not None and tag not in supported:
            unsupported.append(keyword_for_tag(int(tag, 16)) or tag)
            continue
        tests.append((tag, _matcher(tag, wanted, fuzzy=query.fuzzy)))
    kept = [r for r in records if all(test(_texts(r.get(tag, {}))) for tag, test in tests)]
    end = None if query.limit is None else query.offset + query.limit
    return kept[query.offset : end], unsupported
