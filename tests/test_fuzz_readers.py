"""Fuzz the image readers with mutated copies of real and synthetic files.

Every mutated input must either read or raise a :class:`medai.errors.MedaiError`
subclass whose message names the file; no other exception, no crash, no hang.

The inputs are drawn from one seed: the real DICOM files of pydicom-data, a small
DICOM series written by medai (one slice mutated, read as a folder), and small NIfTI,
NRRD/MetaImage, PNG, JPEG and TIFF files written here. Each mutation is a list of
byte edits (truncate, overwrite, delete) recorded as a recipe, so a failure prints
the seed, the input index and the exact edits, and
``python tests/test_fuzz_readers.py --replay INDEX`` rebuilds the same bytes.

Each input is read in a worker process with a time limit: a hang or a segfault
kills only the worker, is reported with its recipe, and a fresh worker goes on.
``MEDAI_FUZZ_SCALE=10`` draws ten times as many inputs (for a longer hunt).
"""

from __future__ import annotations

import gzip
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

SEED = 20261124
SCALE = float(os.environ.get("MEDAI_FUZZ_SCALE", "1"))
#: Inputs drawn per source family.
COUNTS = {"dicom": 300, "rle": 60, "series": 50, "nifti": 140, "other": 60}
#: Seconds one read may take before the worker counts as hung (the first read in a
#: worker also imports medai), and seconds a worker may take to start.
READ_TIMEOUT_S = 20.0
STARTUP_TIMEOUT_S = 60.0
#: Worker address-space limit: a file that makes a reader allocate without bound
#: must fail cleanly, not take the machine down.
WORKER_MEMORY_BYTES = 3 << 30

DATA = Path(pydicom.__file__).parent.parent / "data_store" / "data"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: RLE files get inputs of their own: a damaged RLE stream makes pylibjpeg-rle panic
#: (pyo3's PanicException, a BaseException) for about one mutation in ten.
RLE_FILES = (
    DATA / "emri_small_RLE.dcm",
    TEST_FILES / "MR_small_RLE.dcm",
    TEST_FILES / "rtdose_rle.dcm",
)
#: pydicom-data files used as seeds: small enough to mutate and decode quickly.
DICOM_MAX_BYTES = 560_000
#: Left out: slow to decode, or broken already (tests/test_io_pydicom_data.py covers it).
DICOM_SKIP = {
    "MR2_J2KR.dcm",
    "RG3_J2KI.dcm",
    "MR2_J2KI.dcm",
    "US1_J2KR.dcm",
    "693_J2KR.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm",
}

#: Attributes the readers rely on; header mutations aim at them more often.
GEOMETRY_TAGS = (
    0x00020010,  # TransferSyntaxUID
    0x00080016,  # SOPClassUID
    0x00180050,  # SliceThickness
    0x00180088,  # SpacingBetweenSlices
    0x00200032,  # ImagePositionPatient
    0x00200037,  # ImageOrientationPatient
    0x0020000E,  # SeriesInstanceUID
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280006,  # PlanarConfiguration
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280030,  # PixelSpacing
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280102,  # HighBit
    0x00280103,  # PixelRepresentation
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
    0x52009229,  # SharedFunctionalGroupsSequence
    0x52009230,  # PerFrameFunctionalGroupsSequence
)
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_VRS = (b"US", b"SS", b"UL", b"DS", b"IS", b"SQ", b"OB", b"UN", b"CS", b"FD", b"ZZ", b"\0\0")
_TEXTS = (b"NaN", b"1e400", b"-0", b"\\\\\\\\", b"abc", b"0", b"-1", b"65535", b"1\\0\\0\\0\\0")
#: NIfTI-1 header fields (offset, struct size) worth breaking.
NIFTI_FIELDS = {
    "sizeof_hdr": (0, 4),
    "dim": (40, 16),
    "datatype": (70, 2),
    "bitpix": (72, 2),
    "pixdim": (76, 32),
    "vox_offset": (108, 4),
    "scl_slope": (112, 4),
    "scl_inter": (116, 4),
    "qform_code": (252, 2),
    "sform_code": (254, 2),
    "quatern": (256, 24),
    "srow": (280, 48),
    "magic": (344, 4),
}
_EXTREMES = (
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x00",
    b"\x00\x00\xc0\x7f",
    b"\xff\xff",
    b"\x01\x80",
)


@dataclass(frozen=True)
class Element:
    """Where one top-level DICOM element sits in its file."""

    tag: int
    label: str  # "(0028,0010)US"
    header_at: int  # offset of its tag
    value_at: int  # offset of its value
    length: int  # bytes of value
    length_width: int  # 2 or 4 bytes of length field, just before the value
    has_vr: bool  # explicit VR: two VR characters at header_at + 4


@dataclass(frozen=True)
class Source:
    """One file (or one slice of a series folder) that mutations start from."""

    name: str
    family: str  # a key of COUNTS
    path: Path
    elements: tuple[Element, ...] = ()


@dataclass
class Recipe:
    """How one input was made: the source, the operation and its byte edits."""

    index: int
    source: str
    op: str
    layer: str = "file"  # "file", or "inner" for the decompressed bytes of a .gz
    target: str = ""  # which slice of a series, which element or field
    edits: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, at, hex|length)

    def describe(self) -> str:
        edits = "; ".join(f"{k}@{a}:{v[:40]}" for k, a, v in self.edits)
        where = f" {self.target}" if self.target else ""
        return (
            f"seed={SEED} index={self.index} source={self.source} op={self.op}{where} "
            f"layer={self.layer} edits=[{edits}]"
        )


def apply_edits(data: bytes, edits: list[tuple[str, int, str]]) -> bytes:
    """Apply recipe edits in order: ``truncate`` at, ``write`` hex at, ``delete`` length at."""
    out = bytearray(data)
    for kind, at, value in edits:
        if kind == "truncate":
            del out[at:]
        elif kind == "write":
            chunk = bytes.fromhex(value)
            out[at : at + len(chunk)] = chunk
        elif kind == "delete":
            del out[at : at + int(value)]
        else:
            raise ValueError(f"unknown edit {kind!r}")
    return bytes(out)


# --- drawing mutations ---------------------------------------------------------------


def _dicom_elements(path: Path) -> tuple[Element, ...]:
    """Every top-level element of a DICOM file with its byte offsets."""
    ds = pydicom.dcmread(path, force=True)
    found = []
    for container in (ds.file_meta, ds):
        for tag in list(container.keys()):
            elem = container.get_item(tag)
            value_at = getattr(elem, "value_tell", None) or getattr(elem, "file_tell", None)
            if value_at is None:
                continue
            explicit = tag.group == 2 or not getattr(elem, "is_implicit_VR", False)
            width = 4 if not explicit or elem.VR in _LONG_VRS else 2
            header = 8 if width == 2 or not explicit else 12
            raw = getattr(elem, "value", b"")
            size = len(raw) if isinstance(raw, bytes) else int(getattr(elem, "length", 0) or 0)
            label = f"({tag.group:04X},{tag.element:04X}){elem.VR if explicit else ''}"
            found.append(
                Element(int(tag), label, value_at - header, value_at, size, width, explicit)
            )
    return tuple(found)


def _rand(rng: np.random.Generator, n: int) -> str:
    return bytes(rng.integers(0, 256, n, dtype=np.uint8)).hex()


def _flip(rng: np.random.Generator, lo: int, hi: int) -> list[tuple[str, int, str]]:
    count = int(rng.integers(1, 9))
    return [("write", int(rng.integers(lo, max(hi, lo + 1))), _rand(rng, 1)) for _ in range(count)]


def _draw_generic(rng: np.random.Generator, size: int, recipe: Recipe, head: int) -> None:
    op = str(rng.choice(["truncate", "flip", "flip_header", "delete_chunk", "overwrite_chunk"]))
    recipe.op = op
    if op == "truncate":
        recipe.edits = [("truncate", int(rng.integers(0, size)), "")]
    elif op == "flip":
        recipe.edits = _flip(rng, 0, size)
    elif op == "flip_header":
        recipe.edits = _flip(rng, 0, min(size, head))
    elif op == "delete_chunk":
        at = int(rng.integers(0, size))
        recipe.edits = [("delete", at, str(int(rng.integers(1, 1 + min(4096, size - at)))))]
    else:
        at = int(rng.integers(0, size))
        recipe.edits = [("write", at, _rand(rng, int(rng.integers(1, 65))))]


def _draw_element(rng: np.random.Generator, source: Source, recipe: Recipe) -> None:
    aimed = [e for e in source.elements if e.tag in GEOMETRY_TAGS]
    pool = aimed if aimed and rng.random() < 0.7 else list(source.elements)
    elem = pool[int(rng.integers(0, len(pool)))]
    recipe.target = elem.label
    kind = str(rng.choice(["vr", "length", "value", "text", "delete_element"]))
    if kind == "vr" and not elem.has_vr:
        kind = "length"
    recipe.op = f"element_{kind}"
    if kind == "vr":
        recipe.edits = [("write", elem.header_at + 4, _VRS[int(rng.integers(0, len(_VRS)))].hex())]
    elif kind == "length":
        choices = [elem.length + 1, max(elem.length - 1, 0), 0, 0xFFFFFFFF, elem.length * 7 + 3]
        value = int(choices[int(rng.integers(0, len(choices)))]) % (1 << (8 * elem.length_width))
        field_at = elem.value_at - elem.length_width
        recipe.edits = [("write", field_at, value.to_bytes(elem.length_width, "little").hex())]
    elif kind == "value":
        recipe.edits = [("write", elem.value_at, _rand(rng, int(rng.integers(1, 9))))]
    elif kind == "text":
        text = _TEXTS[int(rng.integers(0, len(_TEXTS)))][: max(elem.length, 1)]
        recipe.edits = [("write", elem.value_at, text.hex())]
    else:
        span = elem.value_at - elem.header_at + elem.length
        recipe.edits = [("delete", elem.header_at, str(span))]


def _draw_dicom(rng: np.random.Generator, source: Source, size: int, recipe: Recipe) -> None:
    pixel = [e for e in source.elements if e.tag == 0x7FE00010]
    choice = rng.random()
    if choice < 0.45 and source.elements:
        _draw_element(rng, source, recipe)
    elif choice < 0.7 and pixel:
        elem = pixel[0]
        recipe.op, recipe.target = "pixel_data", elem.label
        span = min(elem.length, 256) if rng.random() < 0.6 else elem.length
        recipe.edits = _flip(rng, elem.value_at, elem.value_at + max(span, 1))
        if rng.random() < 0.3:
            cut = elem.value_at + int(rng.integers(0, max(elem.length, 1)))
            recipe.edits.append(("truncate", cut, ""))
    else:
        _draw_generic(rng, size, recipe, pixel[0].header_at if pixel else size)


def _draw_nifti(rng: np.random.Generator, size: int, recipe: Recipe) -> None:
    if rng.random() < 0.5:
        name = str(rng.choice(sorted(NIFTI_FIELDS)))
        at, width = NIFTI_FIELDS[name]
        recipe.op, recipe.target = "header_field", name
        slot = at + 2 * int(rng.integers(0, max(width // 2 - 1, 1)))
        pick = rng.random()
        if pick < 0.4:
            value = _EXTREMES[int(rng.integers(0, len(_EXTREMES)))]
        elif pick < 0.7:
            value = bytes.fromhex(_rand(rng, min(width, 4)))
        else:
            number = int(rng.choice([0, -1, 3, 7, 8, 9, 255, 32767, 1024]))
            value = number.to_bytes(2, "little", signed=True)
        recipe.edits = [("write", slot, value.hex())]
    else:
        _draw_generic(rng, size, recipe, 352)


def draw_recipe(index: int, source: Source, data: bytes) -> Recipe:
    """The mutation of input ``index`` (a pure function of the seed and ``index``)."""
    rng = np.random.default_rng([SEED, index])
    recipe = Recipe(index=index, source=source.name, op="")
    if source.family in ("dicom", "rle", "series"):
        _draw_dicom(rng, source, len(data), recipe)
    elif source.family == "nifti":
        gz = source.name.endswith(".gz")
        recipe.layer = "inner" if gz and rng.random() < 0.7 else "file"
        if recipe.layer == "inner":
            _draw_nifti(rng, len(gzip.decompress(data)), recipe)
        else:
            _draw_generic(rng, len(data), recipe, 64 if gz else 352)
    else:
        _draw_generic(rng, len(data), recipe, 256)
    return recipe


def mutate(recipe: Recipe, data: bytes) -> bytes:
    """The bytes of the mutated input."""
    if recipe.layer == "inner":
        return gzip.compress(apply_edits(gzip.decompress(data), recipe.edits), mtime=0)
    return apply_edits(data, recipe.edits)


# --- sources ---------------------------------------------------------------------------


def _synthetic_sources(root: Path) -> list[Source]:
    import tifffile
    from PIL import Image as PILImage

    from medai.image import LabelMap, ScalarImage
    from medai.io import write_dicom_series, write_image

    rng = np.random.default_rng(SEED)
    affine = np.array([[0, -0.9, 0, 10], [1.1, 0, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1.0]])
    scalar = ScalarImage(rng.normal(100, 20, (1, 12, 10, 6)).astype(np.float32), affine)
    channels = ScalarImage(rng.integers(-50, 900, (2, 9, 8, 5)).astype(np.int16), np.eye(4))
    label = LabelMap(rng.integers(0, 4, (1, 12, 10, 6)).astype(np.uint8), affine)
    flat = ScalarImage(rng.integers(0, 255, (1, 16, 12, 1)).astype(np.float32), np.eye(4))
    sources = []
    for name, image in (
        ("scalar.nii.gz", scalar),
        ("scalar.nii", scalar),
        ("channels.nii", channels),
        ("label.nii.gz", label),
        ("scalar.nrrd", scalar),
        ("label.mha", label),
        ("flat.png", flat),
    ):
        write_image(image, root / name)
        family = "nifti" if ".nii" in name else "other"
        sources.append(Source(name, family, root / name))
    pixels = rng.integers(0, 255, (14, 11, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(root / "rgb.jpg", quality=90)
    pages = rng.integers(0, 4000, (3, 10, 9), dtype=np.uint16)
    tifffile.imwrite(root / "pages.tif", pages, photometric="minisblack")
    sources += [Source(n, "other", root / n) for n in ("rgb.jpg", "pages.tif")]
    series = write_dicom_series(
        scalar,
        root / "series",
        patient_id="FUZZ",
        patient_name="Fuzz^Series",
        study_uid=f"{_UID_ROOT}.1",
        series_uid=f"{_UID_ROOT}.2",
        study_date="20260101",
    )
    _fix_generated_uids(series)
    sources += [Source(p.name, "series", p, _dicom_elements(p)) for p in series]
    return sources


_UID_ROOT = "1.2.826.0.1.3680043.8.498.20261124"


def _fix_generated_uids(files: list[Path]) -> None:
    """Replace the random UIDs the writer makes, so the series' bytes are reproducible."""
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = f"{_UID_ROOT}.3"
        ds.SOPInstanceUID = f"{_UID_ROOT}.4.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)


def _dicom_sources() -> list[Source]:
    sources = []
    for path in sorted(DATA.iterdir()):
        if path.stat().st_size <= DICOM_MAX_BYTES and path.name not in DICOM_SKIP:
            sources.append(Source(path.name, "dicom", path, _dicom_elements(path)))
    sources += [Source(p.name, "rle", p, _dicom_elements(p)) for p in RLE_FILES]
    return sources


def build_inputs(
    root: Path, scale: float = SCALE, only: set[int] | None = None
) -> Iterator[tuple[Recipe, Path, str]]:
    """Yield ``(recipe, path, kind)`` for every mutated input (or those numbered in
    ``only``), written under ``root``."""
    sources = _dicom_sources() + _synthetic_sources(root / "sources")
    by_family: dict[str, list[Source]] = {}
    for source in sources:
        by_family.setdefault(source.family, []).append(source)
    index = 0
    for family, count in COUNTS.items():
        pool = by_family[family]
        for i in range(int(count * scale)):
            if only is None or index in only:
                source = pool[i % len(pool)]
                data = source.path.read_bytes()
                recipe = draw_recipe(index, source, data)
                yield _materialise(root, recipe, source, mutate(recipe, data))
            index += 1


def _kind(source: Source) -> str:
    return "label" if source.name.startswith("label") else "file"


def _materialise(
    root: Path, recipe: Recipe, source: Source, data: bytes
) -> tuple[Recipe, Path, str]:
    case = root / f"in{recipe.index:05d}"
    case.mkdir(parents=True)
    if source.family == "series":
        folder = case / "series"
        shutil.copytree(source.path.parent, folder)
        recipe.target = f"{source.name} {recipe.target}".strip()
        (folder / source.name).write_bytes(data)
        return recipe, folder, "series"
    path = case / source.name
    path.write_bytes(data)
    return recipe, path, _kind(source)


# --- the worker ------------------------------------------------------------------------


def _probe(kind: str) -> None:
    """Misbehave on purpose, so a test can show the harness catches each failure kind."""
    if kind == "probe:untyped":
        raise KeyError("a reader bug")
    if kind == "probe:panic":
        raise type("PanicException", (BaseException,), {})("decoder panicked")
    if kind == "probe:hang":
        time.sleep(3600)
    if kind == "probe:segfault":
        import ctypes

        ctypes.string_at(0)


def _read(path: Path, kind: str) -> None:
    if kind.startswith("probe:"):
        _probe(kind)
        return
    from medai.io import find_series, read_image, read_label

    if kind == "series":
        find_series(path)
        read_image(path)
    elif kind == "label":
        read_label(path)
    else:
        read_image(path)


def _worker() -> None:
    """Read the inputs named on stdin; answer one JSON line each on stdout."""
    import resource
    import traceback

    from medai.errors import MedaiError

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is reported, not dumped
    sys.stdout.write("ready\n")  # started: from here on, time counts against the read
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        path = Path(request["path"])
        answer: dict[str, Any] = {"outcome": "read"}
        try:
            _read(path, request["kind"])
        except MedaiError as exc:
            named = path.name in str(exc)
            answer = {"outcome": "typed" if named else "unnamed", "error": repr(exc)[:400]}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # anything else is what this test is looking for
            tail = traceback.format_exception(exc)[-3:]
            answer = {"outcome": "untyped", "error": "".join(tail)[-1200:]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class Reader:
    """A worker process with a per-request time limit, restarted after a crash."""

    def __init__(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.proc = proc
        if proc.stdout is None or self._wait(proc, STARTUP_TIMEOUT_S) != "ready\n":
            self.close()
            raise RuntimeError(f"fuzz worker did not start within {STARTUP_TIMEOUT_S} s")
        return proc

    @staticmethod
    def _wait(proc: subprocess.Popen[str], timeout_s: float) -> str | None:
        """The worker's next line ('' when it died), or None after ``timeout_s``."""
        if proc.stdout is None:
            return ""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                return None
        return proc.stdout.readline()

    def read(self, path: Path, kind: str, timeout_s: float | None = None) -> dict[str, Any]:
        """``{"outcome": read | typed | unnamed | untyped | hang | crash, "error": ...}``."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        if proc.stdin is None or proc.stdout is None:
            raise RuntimeError("worker started without pipes")
        proc.stdin.write(json.dumps({"path": str(path), "kind": kind}) + "\n")
        proc.stdin.flush()
        line = self._wait(proc, timeout_s)
        if line is None:
            self.close()
            return {"outcome": "hang", "error": f"no answer within {timeout_s} s"}
        if not line:
            code = proc.wait()
            self.close()
            return {"outcome": "crash", "error": f"worker died with exit status {code}"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.proc = None


# --- the test --------------------------------------------------------------------------


def test_mutated_files_read_or_fail_with_a_medai_error(tmp_path: Path) -> None:
    reader = Reader()
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    started = time.perf_counter()
    try:
        for recipe, path, kind in build_inputs(tmp_path):
            answer = reader.read(path, kind)
            outcomes[answer["outcome"]] = outcomes.get(answer["outcome"], 0) + 1
            if answer["outcome"] not in ("read", "typed"):
                failures.append(f"{answer['outcome']}: {recipe.describe()}\n  {answer['error']}")
            shutil.rmtree(path.parent, ignore_errors=True)
    finally:
        reader.close()
    elapsed = time.perf_counter() - started
    total = sum(outcomes.values())
    summary = f"seed {SEED}: {total} inputs in {elapsed:.1f} s: {outcomes}"
    assert not failures, summary + "\n" + "\n".join(failures)
    assert total == sum(int(count * SCALE) for count in COUNTS.values()), summary
    # both outcomes are common, so readable and broken inputs are both exercised
    assert outcomes["read"] > total // 5, summary
    assert outcomes["typed"] > total // 5, summary


def test_harness_reports_every_failure_kind(tmp_path: Path) -> None:
    """The harness sees a stray exception, a BaseException, a hang and a segfault, and a
    fresh worker reads the next input after each."""
    probes = ["probe:untyped", "probe:panic", "probe:hang", "probe:segfault"]
    reader = Reader()
    try:
        seen = [reader.read(tmp_path / "x", kind, timeout_s=3.0)["outcome"] for kind in probes]
        answer = reader.read(tmp_path / "missing.nii", "file")
    finally:
        reader.close()
    assert seen == ["untyped", "untyped", "hang", "crash"]
    assert answer["outcome"] == "typed", answer
    assert "missing.nii: file or folder not found" in answer["error"]


def test_recipes_are_reproducible(tmp_path: Path) -> None:
    """The same seed and index give the same bytes in every family (a failure replays)."""
    starts = np.cumsum([0, *COUNTS.values()])[:-1]
    picked = {int(start) + offset for start in starts for offset in (0, 1, 7)}

    def inputs(root: Path) -> list[tuple[str, bytes]]:
        out = []
        for recipe, path, _kind in build_inputs(root, scale=1, only=picked):
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            out.append((recipe.describe(), b"".join(f.read_bytes() for f in files)))
        return out

    first, again = inputs(tmp_path / "a"), inputs(tmp_path / "b")
    assert len(first) == len(picked)
    assert first == again
    assert len({data for _, data in first}) == len(first)


def test_apply_edits() -> None:
    data = bytes(range(10))
    edits = [("write", 2, "ffee"), ("delete", 5, "2"), ("truncate", 6, "")]
    assert apply_edits(data, edits) == bytes([0, 1, 0xFF, 0xEE, 4, 7])
    with pytest.raises(ValueError, match="unknown edit"):
        apply_edits(data, [("swap", 0, "")])


def _replay(index: int, out: Path) -> None:
    for recipe, path, kind in build_inputs(out, only={index}):
        print(f"{recipe.describe()}\n{path} (read as {kind})")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
    elif len(sys.argv) == 4 and sys.argv[1] == "--replay":
        _replay(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: test_fuzz_readers.py --worker | --replay INDEX OUT_FOLDER")
