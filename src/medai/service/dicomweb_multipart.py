"""multipart/related for DICOMweb: read a STOW-RS body as it streams in (with a size cap),
and write a WADO-RS answer from stored files without holding them in memory.

Follows RFC 2046 §5.1: a part is delimited by CRLF, ``--``, the boundary; the last
delimiter is followed by ``--``. What comes before the first delimiter (the preamble) and
after the last (the epilogue) is ignored.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BodyTooLargeError",
    "MultipartError",
    "Part",
    "boundary_of",
    "media_parameters",
    "multipart_stream",
    "read_parts",
]

_CHUNK = 1 << 20


class MultipartError(ValueError):
    """A body that is not well-formed multipart/related; the message says what is wrong."""


class BodyTooLargeError(ValueError):
    """A body longer than the configured upload limit."""


@dataclass(frozen=True)
class Part:
    """One part of a multipart body: its headers (lower-case names) and its bytes."""

    headers: dict[str, str]
    data: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def media_parameters(value: str) -> tuple[str, dict[str, str]]:
    """A media type (lower case) and its parameters (names lower case, quotes removed)."""
    media, *rest = value.split(";")
    parameters = {}
    for item in rest:
        name, _, text = item.partition("=")
        parameters[name.strip().lower()] = text.strip().strip('"')
    return media.strip().lower(), parameters


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/related`` content type.

    Raises:
        MultipartError: Another media type, or no usable boundary.
    """
    media, parameters = media_parameters(content_type)
    if media != "multipart/related":
        raise MultipartError(
            f"Content-Type {media or '(none)'!r} is not supported: send "
            "'multipart/related; type=\"application/dicom\"; boundary=…'"
        )
    boundary = parameters.get("boundary", "")
    if not re.fullmatch(r"[0-9A-Za-z'()+_,./:=? -]{1,70}", boundary):
        raise MultipartError(
            f"Content-Type has no valid boundary parameter ({boundary!r}): RFC 2046 allows "
            "1–70 characters"
        )
    return boundary.encode("ascii")


def _part(segment: bytes) -> Part:
    line_end = segment.find(b"\r\n")
    if line_end < 0:
        raise MultipartError("a part has no header section: end the delimiter line with CRLF")
    rest = segment[line_end + 2 :]
    if rest.startswith(b"\r\n"):
        return Part({}, rest[2:])
    head, separator, data = rest.partition(b"\r\n\r\n")
    if not separator:
        raise MultipartError("a part's headers are not followed by an empty line")
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Part(headers, data)


async def read_parts(chunks: AsyncIterable[bytes], boundary: bytes, *, limit: int) -> list[Part]:
    """The parts of a multipart body read from ``chunks``, at most ``limit`` bytes in all.

    Raises:
        BodyTooLargeError: More than ``limit`` bytes arrived (the rest is not read).
        MultipartError: No closing delimiter, or a malformed part.
    """
    delimiter = b"\r\n--" + boundary
    buffer = bytearray(b"\r\n")  # the first delimiter may open the body without a CRLF
    parts: list[Part] = []
    started = closed = False
    received = 0
    search = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise BodyTooLargeError(f"body over {limit} bytes")
        if closed:
            continue  # the epilogue
        buffer += chunk
        while (at := buffer.find(delimiter, search)) >= 0:
            segment = bytes(buffer[:at])
            del buffer[: at + len(delimiter)]
            search = 0
            if started:
                parts.append(_part(segment))
            started = True
            if buffer[:2] == b"--":
                closed = True
                break
        search = max(0, len(buffer) - len(delimiter))
    if not closed and not (started and buffer[:2] == b"--"):
        raise MultipartError(
            "the body ends without its closing boundary ('--boundary--'): send the whole "
            "multipart/related message"
        )
    return parts


def multipart_stream(
    files: Sequence[tuple[Path, str]], boundary: str | None = None
) -> tuple[str, Iterator[bytes]]:
    """A boundary and the chunks of a multipart/related body of ``application/dicom`` parts,
    one per ``(file, transfer syntax UID)``, read from disk as they are sent."""
    boundary = boundary or uuid.uuid4().hex

    def chunks() -> Iterator[bytes]:
        for path, syntax in files:
            suffix = f"; transfer-syntax={syntax}" if syntax else ""
            yield f"\r\n--{boundary}\r\nContent-Type: application/dicom{suffix}\r\n\r\n".encode()
            with path.open("rb") as stream:
                while block := stream.read(_CHUNK):
                    yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    return boundary, chunks()
