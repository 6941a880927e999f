"""The archive's batch store and its id cache: a batch's outcomes are those of storing its
items one by one (duplicates, conflicts, repeats, bad and other-study items), rows reach
the right participant, study and series whatever the cache holds, and projects sharing
UIDs stay apart."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from _service import STUDY_UID, phantom_study, populate, service_context
from medai.service.archive import (
    InstanceRejectedError,
    OtherStudyError,
    Stored,
    StoreStatus,
    archive_tree,
)
from medai.service.archive_index import IdCache
from medai.service.db import Conflict, Instance, Participant, Project, Series, Study
from medai.service.dicomweb_multipart import Part
from medai.service.dicomweb_stow import store_parts


@pytest.fixture
def context(tmp_path: Path):  # type: ignore[no-untyped-def]
    context = service_context(tmp_path / "svc")
    populate(context)
    yield context
    context.close()


def _project(context, name: str = "glioma") -> Project:  # type: ignore[no-untyped-def]
    with context.factory() as session:
        return session.scalar(select(Project).where(Project.name == name))


def _edited(data: bytes, **values: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _count(context, table: type) -> int:  # type: ignore[no-untyped-def]
    with context.factory() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_a_batch_gives_what_storing_one_by_one_gives(context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = phantom_study(tmp_path / "study", shape=(16, 16, 4))
    other = phantom_study(tmp_path / "other", study_uid="1.2.826.0.1.3680043.8.498.99",
                          shape=(16, 16, 4))  # fmt: skip
    project = _project(context)
    flair = [f.read_bytes() for f in files["FLAIR"]]
    context.archive.store(project, flair[0])
    conflicting = _edited(flair[1], SeriesDescription="edited")
    context.archive.store(project, flair[1])
    batch = [
        flair[0],  # a duplicate of a stored instance
        conflicting,  # a conflict with a stored instance
        b"not a DICOM file" * 10,  # a bad part
        other["T1w"][0].read_bytes(),  # a part of another study
        flair[2],
        flair[2],  # a repeat within the batch
        _edited(flair[3], SeriesDescription="edited"),  # ... and a conflicting repeat
        flair[3],
        *[f.read_bytes() for f in files["T1w"]],
    ]
    results = context.archive.store_many(project, batch, study=STUDY_UID)
    assert len(results) == len(batch)
    kinds = [r.status if isinstance(r, Stored) else type(r) for r in results]
    assert kinds[:8] == [
        StoreStatus.DUPLICATE, StoreStatus.CONFLICT, InstanceRejectedError, OtherStudyError,
        StoreStatus.STORED, StoreStatus.DUPLICATE, StoreStatus.STORED, StoreStatus.CONFLICT,
    ]  # fmt: skip
    assert kinds[8:] == [StoreStatus.STORED] * len(files["T1w"])
    assert "not a readable DICOM" in str(results[2])
    first = pydicom.dcmread(io.BytesIO(flair[0]))
    assert isinstance(results[0], Stored)
    assert results[0].sop_class_uid == first.SOPClassUID
    assert results[0].sop_uid == first.SOPInstanceUID
    assert _count(context, Instance) == 4 + len(files["T1w"])
    assert _count(context, Conflict) == 2
    with context.factory() as session:
        for result in results:
            if isinstance(result, Stored) and result.status is StoreStatus.STORED:
                row = session.scalar(select(Instance).where(Instance.sop_uid == result.sop_uid))
                data = (context.config.archive / row.path).read_bytes()
                assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == result.sop_uid
        (participant,) = archive_tree(session, project.id)
    (study,) = participant.studies
    assert [(s.description, s.instances) for s in study.series] == [
        ("FLAIR", 4), ("T1w", len(files["T1w"]))]  # fmt: skip
    # the edited repeat was stored first, so the original is the conflict
    stored = context.archive.root / _stored_path(context, pydicom.dcmread(files["FLAIR"][3]))
    assert pydicom.dcmread(stored).SeriesDescription == "edited"
    assert not list(context.config.archive.rglob("*.tmp*"))


def _stored_path(context, ds: pydicom.Dataset) -> str:  # type: ignore[no-untyped-def]
    with context.factory() as session:
        return str(
            session.scalar(select(Instance.path).where(Instance.sop_uid == ds.SOPInstanceUID))
        )


def test_a_second_study_of_a_participant_and_two_projects(context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = phantom_study(tmp_path / "a", shape=(16, 16, 3))
    second = phantom_study(tmp_path / "b", study_uid="1.2.826.0.1.3680043.8.498.90",
                           shape=(16, 16, 3))  # fmt: skip
    glioma, other = _project(context), _project(context, "other")
    for data in [f.read_bytes() for f in first["FLAIR"]]:
        assert context.archive.store(glioma, data).status is StoreStatus.STORED
    results = context.archive.store_many(glioma, [f.read_bytes() for f in second["FLAIR"]])
    assert {r.status for r in results if isinstance(r, Stored)} == {StoreStatus.STORED}
    # the same UIDs in another project: new rows, not the cached ids of the first
    again = [context.archive.store(other, f.read_bytes()) for f in first["FLAIR"]]
    assert {r.status for r in again} == {StoreStatus.STORED}
    assert again[0].path.parts[0] == str(other.id)
    with context.factory() as session:
        participants = session.scalars(select(Participant)).all()
        assert sorted(p.project_id for p in participants) == sorted([glioma.id, other.id])
        studies = session.scalars(select(Study).order_by(Study.id)).all()
        assert [(s.project_id, s.study_uid) for s in studies] == [
            (glioma.id, STUDY_UID), (glioma.id, "1.2.826.0.1.3680043.8.498.90"),
            (other.id, STUDY_UID)]  # fmt: skip
        owner = {p.id: p.project_id for p in participants}
        assert [owner[s.participant_id] for s in studies] == [glioma.id, glioma.id, other.id]
        series = session.scalars(select(Series)).all()
        assert sorted(s.study_id for s in series) == sorted(s.id for s in studies)
        for project, n_studies in ((glioma, 2), (other, 1)):
            (participant,) = archive_tree(session, project.id)
            assert len(participant.studies) == n_studies
            assert all(s.series[0].instances == 3 for s in participant.studies)


def test_stale_cached_ids_fall_back_to_the_lookup(context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = phantom_study(tmp_path / "s", shape=(16, 16, 4))
    project = _project(context)
    flair = [f.read_bytes() for f in files["FLAIR"]]
    context.archive.store(project, flair[0])
    with context.factory() as session:
        study = session.scalars(select(Study)).one()
        series = session.scalars(select(Series)).one()
        study.complete = True
        session.commit()
        study_id, series_id = study.id, series.id
    ids = context.archive._ids
    ids.update({("study", project.id, STUDY_UID): 9999})  # no such study: the UPDATE says so
    assert context.archive.store(project, flair[1]).status is StoreStatus.STORED
    assert ids.get(("study", project.id, STUDY_UID)) == study_id
    ids.update({("series", study_id, series.series_uid): 9999})  # a foreign key refuses it
    results = context.archive.store_many(project, flair[2:])
    assert [r.status for r in results if isinstance(r, Stored)] == [StoreStatus.STORED] * 2
    assert context.archive.store(project, _edited(flair[0], SOPInstanceUID="1.2.3.4")).status \
        is StoreStatus.STORED  # fmt: skip
    with context.factory() as session:
        assert set(session.scalars(select(Instance.series_id))) == {series_id}
        assert not session.scalars(select(Study)).one().complete  # reopened by the stores
    assert _count(context, Instance) == 5


def test_the_id_cache_is_bounded() -> None:
    cache = IdCache(2)
    cache.update({("study", 1, "1.2"): 5, ("study", 1, "1.3"): 6})
    assert cache.get(("study", 1, "1.2")) == 5  # now the most recently used
    cache.update({("study", 1, "1.4"): 7})
    assert len(cache) == 2
    assert cache.get(("study", 1, "1.3")) is None
    assert cache.get(("study", 1, "1.2")) == 5
    cache.drop([("study", 1, "1.2")])
    assert cache.get(("study", 1, "1.2")) is None
    with pytest.raises(ValueError, match="size must be at least 1"):
        IdCache(0)


def test_stow_maps_each_outcome_of_a_batch(context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = phantom_study(tmp_path / "s", shape=(16, 16, 3))
    other = phantom_study(tmp_path / "o", study_uid="1.2.826.0.1.3680043.8.498.91",
                          shape=(16, 16, 3))  # fmt: skip
    project = _project(context)
    flair = [f.read_bytes() for f in files["FLAIR"]]
    context.archive.store(project, flair[0])
    blocked = pydicom.dcmread(files["FLAIR"][2])  # a folder where its file should go
    target = (context.archive.root / str(project.id) / STUDY_UID / blocked.SeriesInstanceUID
              / f"{blocked.SOPInstanceUID}.dcm")  # fmt: skip
    target.mkdir(parents=True)
    dicom = {"content-type": "application/dicom"}
    parts = [
        Part(dicom, _edited(flair[0], SeriesDescription="edited")),
        Part({"content-type": "image/png"}, b"png"),
        Part(dicom, other["T1w"][0].read_bytes()),
        Part(dicom, b"junk" * 40),
        Part(dicom, flair[1]),
        Part(dicom, flair[2]),
    ]
    outcome = store_parts(context.archive, project, parts, study=STUDY_UID, url="http://x/p")
    assert (outcome.status, outcome.stored, outcome.failed) == (202, 1, 5)
    ds = pydicom.Dataset.from_json(outcome.body)
    reasons = [item.FailureReason for item in ds.FailedSOPSequence]
    assert reasons == [0x0111, 0xC000, 0xA900, 0xC000, 0xA700]
    (referenced,) = ds.ReferencedSOPSequence
    second = pydicom.dcmread(files["FLAIR"][1])
    assert referenced.ReferencedSOPInstanceUID == second.SOPInstanceUID
    assert referenced.ReferencedSOPClassUID == second.SOPClassUID
    assert referenced.RetrieveURL.endswith(f"/instances/{second.SOPInstanceUID}")
    assert _count(context, Instance) == 2
    assert not list(context.config.archive.rglob("*.tmp*"))
