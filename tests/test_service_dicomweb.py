"""DICOMweb of ``medai serve`` against a real uvicorn and the real ``dicomweb-client``:
STOW-RS of the phantom study, QIDO-RS searches, WADO-RS retrieval and metadata, a
rejected part, another study than the URL names, the upload limit, and refusals."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import select

from _service import STUDY_UID, api_server, bearer, phantom_study, populate, service_context
from medai.service.db import AuditEntry, Instance, Project
from medai.service.dicomweb_multipart import (
    BodyTooLargeError,
    MultipartError,
    boundary_of,
    read_parts,
)
from medai.service.dicomweb_query import QueryError, parse_query

SHAPE = (16, 18, 5)
GLIOMA = "/dicomweb/projects/glioma"


def _multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(
        f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p for p in parts
    )
    body += f"\r\n--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, {"Content-Type": content_type}


def _parts(response: httpx.Response) -> list[bytes]:
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    chunks = response.content.split(f"\r\n--{boundary}".encode())[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1] for chunk in chunks]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("dicomweb")
    context = service_context(root / "svc")
    tokens = populate(context)
    files = phantom_study(root / "study", shape=SHAPE)
    with api_server(context) as http:
        client = DICOMwebClient(f"{http.base_url}{GLIOMA}", headers=bearer(tokens["alice"]))
        datasets = [pydicom.dcmread(f) for fs in files.values() for f in fs]
        answer = client.store_instances(datasets)
        yield {"context": context, "tokens": tokens, "files": files, "http": http,
               "client": client, "answer": answer}  # fmt: skip
    context.close()


def test_stow_answers_every_stored_instance(served: dict[str, Any]) -> None:
    answer = served["answer"]
    n = sum(len(fs) for fs in served["files"].values())
    assert len(answer.ReferencedSOPSequence) == n
    assert "FailedSOPSequence" not in answer
    first = answer.ReferencedSOPSequence[0]
    # the path; dicomweb-client sends 'Host' without the port, and the URL follows 'Host'
    assert urlsplit(first.RetrieveURL).path.startswith(f"{GLIOMA}/studies/{STUDY_UID}/series/")
    assert first.ReferencedSOPClassUID == pydicom.uid.MRImageStorage


def test_qido_studies_series_instances(served: dict[str, Any]) -> None:
    client, files = served["client"], served["files"]
    (study,) = client.search_for_studies(search_filters={"PatientID": "P001"})
    ds = pydicom.Dataset.from_json(study)
    assert ds.StudyInstanceUID == STUDY_UID
    assert ds.NumberOfStudyRelatedSeries == 4
    assert ds.NumberOfStudyRelatedInstances == 4 * SHAPE[2]
    assert ds.ModalitiesInStudy == "MR"
    assert str(ds.PatientName) == "Test^Phantom"
    assert client.search_for_studies(search_filters={"PatientID": "P002"}) == []
    today = dt.date.today().strftime("%Y%m%d")
    assert len(client.search_for_studies(search_filters={"StudyDate": f"{today}-"})) == 1
    assert client.search_for_studies(search_filters={"StudyDate": "-19991231"}) == []
    series = client.search_for_series(STUDY_UID, search_filters={"SeriesDescription": "T1*"})
    assert [pydicom.Dataset.from_json(s).SeriesDescription for s in series] == ["T1w"]
    fuzzy = client.search_for_series(
        STUDY_UID, search_filters={"SeriesDescription": "t1*"}, fuzzymatching=True
    )
    assert sorted(pydicom.Dataset.from_json(s).SeriesDescription for s in fuzzy) == ["T1w", "t1gd"]
    every = client.search_for_series(search_filters={"Modality": "MR"}, limit=2, offset=1)
    assert [pydicom.Dataset.from_json(s).SeriesNumber for s in every] == [2, 3]
    flair = pydicom.dcmread(files["FLAIR"][0])
    found = client.search_for_instances(
        STUDY_UID, flair.SeriesInstanceUID, search_filters={"InstanceNumber": 3},
        fields=["ImagePositionPatient"],
    )  # fmt: skip
    (instance,) = [pydicom.Dataset.from_json(i) for i in found]
    assert instance.SOPInstanceUID == pydicom.dcmread(files["FLAIR"][2]).SOPInstanceUID
    assert instance.Rows == SHAPE[1] or instance.Rows == SHAPE[0]
    assert len(instance.ImagePositionPatient) == 3


def test_wado_instance_bytes_and_metadata(served: dict[str, Any]) -> None:
    client, files, http = served["client"], served["files"], served["http"]
    path = files["T2w"][1]
    sent = pydicom.dcmread(path)
    uids = (sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID)
    got = client.retrieve_instance(*uids)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.pixel_array.tolist() == sent.pixel_array.tolist()
    url = f"{GLIOMA}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
    raw = http.get(url, headers=bearer(served["tokens"]["bob"]))
    assert raw.status_code == 200
    assert _parts(raw) == [path.read_bytes()]
    series = http.get(f"{GLIOMA}/studies/{uids[0]}/series/{uids[1]}", headers=bearer(
        served["tokens"]["bob"]))  # fmt: skip
    assert sorted(_parts(series)) == sorted(f.read_bytes() for f in files["T2w"])
    metadata = client.retrieve_series_metadata(uids[0], uids[1])
    assert len(metadata) == SHAPE[2]
    headers = [pydicom.Dataset.from_json(m) for m in metadata]
    assert [h.InstanceNumber for h in headers] == list(range(1, SHAPE[2] + 1))
    assert headers[1].SOPInstanceUID == sent.SOPInstanceUID
    assert "PixelData" not in headers[1]
    assert len(client.retrieve_study_metadata(uids[0])) == 4 * SHAPE[2]


def test_refusals(served: dict[str, Any]) -> None:
    http, tokens = served["http"], served["tokens"]
    assert http.get(f"{GLIOMA}/studies").status_code == 401
    assert http.get(f"{GLIOMA}/studies", headers=bearer(tokens["eve"])).status_code == 403
    assert http.get("/dicomweb/projects/other/studies", headers=bearer(tokens["eve"])).json() == []
    alice = bearer(tokens["alice"])
    bad = http.get(f"{GLIOMA}/studies/1.2.abc/series", headers=alice)
    assert bad.status_code == 400
    assert "study" in bad.json()["detail"]
    bad_query = http.get(f"{GLIOMA}/studies", params={"StudyInstanceUID": "x;1"}, headers=alice)
    assert bad_query.status_code == 400
    assert "StudyInstanceUID" in bad_query.json()["detail"]
    unknown = http.get(f"{GLIOMA}/studies/1.2.3/metadata", headers=alice)
    assert unknown.status_code == 404
    assert http.get(f"{GLIOMA}/studies/1.2.3", headers=alice).status_code == 404
    assert http.get(f"{GLIOMA}/studies", params={"NoSuchKeyword": "1"},
                    headers=alice).status_code == 400  # fmt: skip
    with served["context"].factory() as session:
        actions = set(session.scalars(select(AuditEntry.action)))
    assert {"store", "view", "retrieve"} <= actions


def test_rejected_part_and_other_study(served: dict[str, Any], tmp_path: Path) -> None:
    http, alice = served["http"], bearer(served["tokens"]["alice"])
    study_uid = f"2.25.{uuid.uuid4().int}"
    files = phantom_study(tmp_path / "s2", patient_id="P002", study_uid=study_uid, shape=SHAPE)
    good = files["FLAIR"][0].read_bytes()
    body, headers = _multipart([good, b"not a DICOM file at all"])
    answer = http.post(f"{GLIOMA}/studies", content=body, headers=headers | alice)
    assert answer.status_code == 202
    assert answer.headers["content-type"] == "application/dicom+json"
    ds = pydicom.Dataset.from_json(answer.json())
    assert len(ds.ReferencedSOPSequence) == 1
    assert ds.FailedSOPSequence[0].FailureReason == 0xC000
    # a part of another study than the URL names fails; nothing was stored: 409
    other = files["T2w"][0].read_bytes()
    body, headers = _multipart([other])
    refused = http.post(f"{GLIOMA}/studies/{STUDY_UID}", content=body, headers=headers | alice)
    assert refused.status_code == 409
    failed = pydicom.Dataset.from_json(refused.json()).FailedSOPSequence[0]
    assert failed.FailureReason == 0xA900
    assert failed.ReferencedSOPInstanceUID == pydicom.dcmread(files["T2w"][0]).SOPInstanceUID
    client = DICOMwebClient(f"{http.base_url}{GLIOMA}", headers=alice)
    assert len(client.search_for_studies(search_filters={"PatientID": "P002"})) == 1
    assert len(client.search_for_instances(study_uid)) == 1
    wrong_type = http.post(f"{GLIOMA}/studies", content=b"{}", headers=alice | {
        "Content-Type": "application/json"})  # fmt: skip
    assert wrong_type.status_code == 415


def test_upload_limit_with_and_without_content_length(tmp_path: Path) -> None:
    context = service_context(tmp_path / "svc", max_upload_mb=0.02)
    tokens = populate(context)
    files = phantom_study(tmp_path / "study", shape=SHAPE)
    body, headers = _multipart([f.read_bytes() for fs in files.values() for f in fs])
    assert len(body) > 0.02 * 1024 * 1024
    try:
        with api_server(context) as http:
            headers |= bearer(tokens["alice"])
            declared = http.post(f"{GLIOMA}/studies", content=body, headers=headers)
            assert declared.status_code == 413

            def chunks() -> Iterator[bytes]:
                for at in range(0, len(body), 4096):
                    yield body[at : at + 4096]

            streamed = http.post(f"{GLIOMA}/studies", content=chunks(), headers=headers)
            assert streamed.status_code == 413
            assert "max_upload_mb" in streamed.json()["detail"]
            small, small_headers = _multipart([files["FLAIR"][0].read_bytes()])
            ok = http.post(f"{GLIOMA}/studies", content=small, headers=small_headers | bearer(
                tokens["alice"]))  # fmt: skip
            assert ok.status_code == 200
    finally:
        context.close()


def test_query_parsing_names_the_bad_parameter() -> None:
    query = parse_query([("PatientID", "P*"), ("00080060", "MR"), ("limit", "5"),
                         ("includefield", "StudyDescription,00081030")])  # fmt: skip
    assert query.match == {"00100020": "P*", "00080060": "MR"}
    assert query.limit == 5
    assert query.include == frozenset({"00081030"})
    with pytest.raises(QueryError, match="limit"):
        parse_query([("limit", "-1")])
    with pytest.raises(QueryError, match="StudyDate"):
        parse_query([("StudyDate", "2020/01/01")])
    with pytest.raises(QueryError, match="SeriesInstanceUID"):
        parse_query([("SeriesInstanceUID", "1.2.3,abc")])


def test_metadata_of_many_instances_comes_from_the_index(tmp_path: Path) -> None:
    """Scale sanity (no timing assert; benchmarks/ingest.py measures): 400 indexed
    instances whose files do not exist are still answered, so nothing reads a file."""
    context = service_context(tmp_path / "svc")
    tokens = populate(context)
    files = phantom_study(tmp_path / "study", shape=SHAPE)
    with context.factory() as session:
        project = session.scalar(select(Project).where(Project.name == "glioma"))
    first = context.archive.store(project, files["FLAIR"][0].read_bytes())
    with context.factory() as session:
        row = session.scalar(select(Instance))
        for i in range(399):
            session.add(Instance(
                project_id=row.project_id, series_id=row.series_id, sop_uid=f"2.25.{i}",
                sop_class_uid=row.sop_class_uid, path=f"missing/{i}.dcm", sha256=row.sha256,
                size=row.size, instance_number=i + 2, header=row.header,
            ))  # fmt: skip
        session.commit()
    series = f"{GLIOMA}/studies/{STUDY_UID}/series/{first.series_uid}"
    try:
        with api_server(context) as http:
            alice = bearer(tokens["alice"])
            metadata = http.get(f"{series}/metadata", headers=alice)
            assert metadata.status_code == 200
            assert len(metadata.json()) == 400
            page = http.get(f"{series}/instances", params={"limit": 5, "offset": 395},
                            headers=alice).json()  # fmt: skip
            numbers = [pydicom.Dataset.from_json(i).InstanceNumber for i in page]
            assert numbers == [396, 397, 398, 399, 400]
    finally:
        context.close()


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_multipart_reader_whatever_the_chunking(size: int) -> None:
    parts = [b"first\r\n--not-the-boundary", b"", b"\r\n--b0undar", b"x" * 5000]
    body, headers = _multipart(parts)

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(body), size):
            yield body[at : at + size]

    boundary = boundary_of(headers["Content-Type"])
    got = asyncio.run(read_parts(chunks(), boundary, limit=len(body)))
    assert [p.data for p in got] == parts
    assert got[0].content_type == "application/dicom"
    with pytest.raises(BodyTooLargeError):
        asyncio.run(read_parts(chunks(), boundary, limit=len(body) - 1))
    truncated = body[: len(body) - 12]

    async def cut() -> AsyncIterator[bytes]:
        yield truncated

    with pytest.raises(MultipartError, match="closing boundary"):
        asyncio.run(read_parts(cut(), boundary, limit=len(body)))
