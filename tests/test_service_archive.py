"""The service's index and archive: atomic stores, duplicates and conflicts, rejected
input, de-identification on arrival, quiet-period completion, the tree, tokens, and the
schema Alembic builds matching the models."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pydicom
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from _service import (
    CHANNELS,
    FOR_UID,
    STUDY_UID,
    api_server,
    bearer,
    phantom_study,
    populate,
    service_context,
)
from medai.service.archive import (
    InstanceRejectedError,
    StoreStatus,
    archive_tree,
    complete_quiet_studies,
)
from medai.service.auth import authenticate, hash_token
from medai.service.db import Base, Conflict, Instance, Project, Study, User


@pytest.fixture
def ctx(tmp_path: Path):  # type: ignore[no-untyped-def]
    context = service_context(tmp_path / "svc")
    tokens = populate(context)
    yield context, tokens
    context.close()


def _project(context, name: str = "glioma") -> Project:  # type: ignore[no-untyped-def]
    with context.factory() as session:
        return session.scalar(select(Project).where(Project.name == name))


def test_the_migrated_schema_is_the_models_schema(ctx) -> None:  # type: ignore[no-untyped-def]
    context, _ = ctx
    with context.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_store_index_duplicate_and_conflict(ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context, _ = ctx
    files = phantom_study(tmp_path / "study")
    project = _project(context)
    outcomes = [context.archive.store(project, f.read_bytes()) for fs in files.values() for f in fs]
    assert {o.status for o in outcomes} == {StoreStatus.STORED}
    first = files["FLAIR"][0].read_bytes()
    again = context.archive.store(project, first)
    assert again.status is StoreStatus.DUPLICATE
    ds = pydicom.dcmread(io.BytesIO(first))
    ds.SeriesDescription = "edited"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    changed = context.archive.store(project, buffer.getvalue())
    assert changed.status is StoreStatus.CONFLICT
    with context.factory() as session:
        n = session.scalar(select(func.count()).select_from(Instance))
        assert n == sum(len(fs) for fs in files.values())
        conflict = session.scalars(select(Conflict)).one()
        stored = session.scalar(select(Instance).where(Instance.sop_uid == ds.SOPInstanceUID))
        # the stored file is the first one, unchanged; the conflicting one is kept aside
        assert context.archive.path_of(stored).read_bytes() == first
        assert (context.config.archive / conflict.path).read_bytes() == buffer.getvalue()
        tree = archive_tree(session, project.id)
    (participant,) = tree
    (study,) = participant.studies
    assert study.study_uid == STUDY_UID
    assert not study.complete
    assert [s.description for s in study.series] == CHANNELS
    assert {s.attributes["FrameOfReferenceUID"] for s in study.series} == {FOR_UID}
    assert [s.instances for s in study.series] == [len(files[c]) for c in CHANNELS]
    assert not list(context.config.archive.rglob("*.tmp*"))


def test_bad_input_is_refused_and_nothing_is_stored(ctx) -> None:  # type: ignore[no-untyped-def]
    context, _ = ctx
    project = _project(context)
    with pytest.raises(InstanceRejectedError, match="not a readable DICOM"):
        context.archive.store(project, b"not dicom at all" * 20)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    buffer = io.BytesIO()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.SOPInstanceUID = "1.2.3.abc"
    ds.save_as(buffer)
    with (
        pytest.warns(UserWarning, match="Invalid value for VR UI"),
        pytest.raises(InstanceRejectedError, match=r"SOPInstanceUID .* not a valid UID"),
    ):
        context.archive.store(project, buffer.getvalue())
    with context.factory() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert not [p for p in context.config.archive.rglob("*") if p.is_file()]


def test_a_real_clinical_file_is_stored_and_deidentified_on_arrival(tmp_path: Path) -> None:
    context = service_context(tmp_path / "svc")
    from medai.service.auth import add_project

    with context.factory() as session:
        project = add_project(
            session, "anon", ae_title="ANON", deidentify=True, keys=context.config.keys
        )
        session.commit()
    original = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    stored = context.archive.store(project, original)
    kept = pydicom.dcmread(context.config.archive / stored.path)
    source = pydicom.dcmread(io.BytesIO(original))
    assert kept.SOPInstanceUID != source.SOPInstanceUID
    assert str(kept.PatientName) != str(source.PatientName)
    assert kept.PatientIdentityRemoved == "YES"
    assert (kept.pixel_array == source.pixel_array).all()
    assert (context.config.keys / f"{project.id}.key").stat().st_mode & 0o077 == 0
    context.close()


def test_studies_complete_after_the_quiet_period(ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context, _ = ctx
    files = phantom_study(tmp_path / "study")
    project = _project(context)
    context.archive.store(project, files["T2w"][0].read_bytes())
    with context.factory() as session:
        study = session.scalars(select(Study)).one()
        last = study.last_received.replace(tzinfo=dt.UTC)
        assert complete_quiet_studies(session, quiet_seconds=30, now=last) == []
        done = complete_quiet_studies(
            session, quiet_seconds=30, now=last + dt.timedelta(seconds=31)
        )
        assert [s.study_uid for s in done] == [STUDY_UID]
        session.commit()
    context.archive.store(project, files["T2w"][1].read_bytes())  # a late instance reopens it
    with context.factory() as session:
        assert not session.scalars(select(Study)).one().complete


def test_tokens_are_stored_hashed_and_routes_need_them(ctx) -> None:  # type: ignore[no-untyped-def]
    context, tokens = ctx
    with context.factory() as session:
        alice = session.scalar(select(User).where(User.name == "alice"))
        assert alice.token_hash == hash_token(tokens["alice"]) != tokens["alice"]
        assert authenticate(session, tokens["alice"]).name == "alice"
        assert authenticate(session, tokens["alice"] + "x") is None
    with api_server(context) as client:
        assert client.get("/api/me").status_code == 401
        bad = client.get("/api/me", headers=bearer("nope"))
        assert bad.status_code == 401
        assert "medai serve user add" in bad.json()["detail"]
        alice = bearer(tokens["alice"])
        assert client.get("/api/me", headers=alice).json()["projects"] == ["glioma"]
        assert client.get("/api/projects/glioma/tree", headers=alice).status_code == 200
        eve = bearer(tokens["eve"])
        assert client.get("/api/projects/glioma/tree", headers=eve).status_code == 403
        assert client.get("/api/projects/nosuch/tree", headers=alice).status_code == 403
