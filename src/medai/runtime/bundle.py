"""Reading a model bundle: a folder (or one ``.zip``) of JSON, Markdown and one ONNX
model, every file listed with its SHA-256 in ``manifest.json``. An ensemble of ``k``
models holds ``model_<i>.onnx`` and ``plan_<i>.json`` per member instead of
``model.onnx``, listed in ``bundle.json`` ``members``.

Loading checks the manifest before anything is parsed: a missing, changed or unlisted
file is refused, and a bundle never holds anything that would be unpickled (no
``.pt``/``.pkl``; only the suffixes in :data:`ALLOWED_SUFFIXES`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from medai.errors import BundleError, BundleIntegrityError, validation_summary
from medai.preprocess.plan import Plan

__all__ = [
    "ALLOWED_SUFFIXES",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST",
    "MAX_BUNDLE_BYTES",
    "REQUIRED_FILES",
    "TASKS",
    "Bundle",
    "Member",
    "build_manifest",
    "load_bundle",
    "member_files",
    "read_bundle_files",
    "verify_manifest",
]

BUNDLE_FORMAT = "medai-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_FILES: tuple[str, ...] = ("bundle.json", "plan.json", "model.onnx")
ALLOWED_SUFFIXES: tuple[str, ...] = (".json", ".yaml", ".yml", ".onnx", ".md", ".txt")
#: What a bundle's model may predict (``bundle.json`` ``task``: the plan's task).
TASKS: tuple[str, ...] = ("segmentation", "binary", "multiclass", "multilabel", "regression")
_FIX = "re-export it with `medai export RUN OUT`"
MODEL = "model.onnx"
#: Largest total size of a bundle's files (a zip's are checked before decompressing).
MAX_BUNDLE_BYTES = 8 * 2**30


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member_files(index: int) -> tuple[str, str]:
    """The ONNX model and plan file names of ensemble member ``index`` (0-based)."""
    return f"model_{index}.onnx", f"plan_{index}.json"


def build_manifest(files: Mapping[str, bytes]) -> dict[str, Any]:
    """The ``manifest.json`` document for ``files`` (name → content, manifest excluded)."""
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "files": {
            name: {"sha256": _sha256(data), "bytes": len(data)}
            for name, data in sorted(files.items())
            if name != MANIFEST
        },
    }


def read_bundle_files(path: str | Path, *, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, bytes]:
    """Every file of a bundle folder or ``.zip``, by name (flat: no sub-folders).

    Raises:
        BundleError: If ``path`` is neither a folder nor a readable zip archive.
        BundleIntegrityError: If the bundle holds a sub-folder, or its files add up to
            more than ``max_bytes`` (checked before a zip member is decompressed).
    """
    path = Path(path)
    if path.is_dir():
        items = sorted(path.iterdir())
        for item in items:
            if not item.is_file():
                raise BundleIntegrityError(f"{path}: {item.name!r} is not a file; {_FIX}")
        _check_size(path, sum(item.stat().st_size for item in items), max_bytes)
        return {item.name: item.read_bytes() for item in items}
    if not path.is_file():
        raise BundleError(f"no bundle at {path}; {_FIX}")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_size(path, sum(i.file_size for i in archive.infolist()), max_bytes)
            files: dict[str, bytes] = {}
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or len(PurePosixPath(name).parts) != 1:
                    raise BundleIntegrityError(
                        f"{path}: member {name!r} is not a top-level file; {_FIX}"
                    )
                files[name] = archive.read(info)
            return files
    except zipfile.BadZipFile as exc:
        raise BundleError(
            f"{path} is neither a bundle folder nor a zip archive ({exc}); {_FIX}"
        ) from exc


def _check_size(path: Path, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise BundleIntegrityError(
            f"{path}: its files hold {size / 2**20:.0f} MiB, more than the "
            f"{max_bytes / 2**20:.0f} MiB a bundle may; it is not a medai bundle"
        )


def verify_manifest(files: Mapping[str, bytes], source: str | Path) -> dict[str, Any]:
    """Check ``files`` against their manifest; return the manifest.

    Raises:
        BundleIntegrityError: If the manifest is missing or unreadable, a listed file is
            missing or its SHA-256 differs, a file is not listed, a required file is
            absent, or a file has a suffix a bundle may not hold.
    """
    if MANIFEST not in files:
        raise BundleIntegrityError(f"{source}: {MANIFEST} is missing; {_FIX}")
    try:
        manifest = json.loads(files[MANIFEST])
        listed: dict[str, Any] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleIntegrityError(f"{source}: {MANIFEST} is unreadable ({exc}); {_FIX}") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleIntegrityError(
            f"{source}: {MANIFEST} is not a {BUNDLE_FORMAT} manifest; {_FIX}"
        )
    for name in sorted(set(files) | set(listed)):
        if name == MANIFEST:
            continue
        if not name.endswith(ALLOWED_SUFFIXES):
            raise BundleIntegrityError(
                f"{source}: {name!r} is not a file a bundle may hold (only "
                f"{', '.join(ALLOWED_SUFFIXES)}; nothing is ever unpickled); {_FIX}"
            )
        if name not in files:
            raise BundleIntegrityError(
                f"{source}: {name} is missing (listed in {MANIFEST}); copy the whole "
                f"bundle, or {_FIX}"
            )
        if name not in listed:
            raise BundleIntegrityError(
                f"{source}: {name} is not listed in {MANIFEST}; remove it, or {_FIX}"
            )
        want = str(listed[name].get("sha256", ""))
        got = _sha256(files[name])
        if got != want:
            raise BundleIntegrityError(
                f"{source}: {name} changed since export (SHA-256 {got[:12]}…, {MANIFEST} says "
                f"{want[:12]}…); restore the original file, or {_FIX}"
            )
    for name in REQUIRED_FILES:
        if name == MODEL and member_files(0)[0] in files:
            continue  # an ensemble: load_bundle checks its members
        if name not in files:
            raise BundleIntegrityError(f"{source}: {name} is missing; {_FIX}")
    return dict(manifest)


@dataclass(frozen=True)
class Member:
    """One network of an ensemble bundle.

    Attributes:
        model: Its ONNX model, serialised.
        plan: The plan it was trained with (its own temperature, target scaling).
        run: The training run it was exported from (its folder name).
    """

    model: bytes
    plan: Plan
    run: str = ""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its description, the model's plan and the ONNX model.

    Attributes:
        source: The folder or zip it was read from.
        info: ``bundle.json`` (name, version, task, input, output, settings).
        plan: The plan the model was trained with (preprocessing, regions,
            thresholds, post-processing), from ``plan.json``; an ensemble's is its
            first member's, and governs the whole ensemble.
        model: ``model.onnx`` (an ensemble's first member), serialised.
        documents: Every other JSON file by name (reference, model card, parity …).
        digest: SHA-256 of ``manifest.json``: identifies this exact bundle.
        ensemble: The ``k >= 2`` members of an ensemble (empty for one model).

    Raises:
        ValueError: If ``ensemble`` holds exactly one member.
    """

    source: Path
    info: dict[str, Any]
    plan: Plan
    model: bytes
    documents: dict[str, Any]
    digest: str = ""
    ensemble: tuple[Member, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ensemble) == 1:
            raise ValueError(
                "an ensemble has at least 2 members; give a single model as model and "
                "plan, with ensemble=()"
            )

    @property
    def members(self) -> tuple[Member, ...]:
        """Every network the bundle runs: the ensemble's members, or the one model."""
        return self.ensemble or (Member(self.model, self.plan, ""),)

    @property
    def name(self) -> str:
        return str(self.info.get("name", self.source.stem))

    @property
    def version(self) -> str:
        return str(self.info.get("version", "0"))

    @property
    def channels(self) -> list[str]:
        return list(self.plan.channels)

    @property
    def task(self) -> str:
        """``segmentation``, ``binary``, ``multiclass``, ``multilabel`` or ``regression``."""
        return str(self.info.get("task", "segmentation"))


def _json(files: Mapping[str, bytes], name: str, source: Path) -> Any:
    try:
        return json.loads(files[name])
    except ValueError as exc:
        raise BundleIntegrityError(f"{source}: {name} is not valid JSON ({exc}); {_FIX}") from exc


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle folder or ``.zip``. Nothing is unpickled.

    Raises:
        BundleError: If there is no bundle at ``path``, or it is of another format
            version or task.
        BundleIntegrityError: If a file is missing, changed or not allowed.
    """
    source = Path(path)
    files = read_bundle_files(source)
    verify_manifest(files, source)
    info = _json(files, "bundle.json", source)
    if info.get("format") != BUNDLE_FORMAT or info.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format {info.get('format')!r} v{info.get('format_version')} is not "
            f"{BUNDLE_FORMAT} v{BUNDLE_FORMAT_VERSION}; {_FIX} with this medai version"
        )
    if info.get("task") not in TASKS:
        raise BundleError(
            f"{source}: task {info.get('task')!r} is not supported; this runtime runs "
            f"{', '.join(TASKS)} bundles"
        )
    try:
        plan = Plan.model_validate(_json(files, "plan.json", source))
    except ValidationError as exc:
        raise BundleError(
            f"{source}: plan.json does not validate ({validation_summary(exc)}); {_FIX}"
        ) from exc
    if plan.task.value != info["task"]:
        raise BundleError(
            f"{source}: bundle.json says task {info['task']!r}, plan.json {plan.task.value!r}; "
            f"{_FIX}"
        )
    documents = {
        name: _json(files, name, source)
        for name in files
        if name.endswith(".json") and name not in ("bundle.json", "plan.json", MANIFEST)
    }
    documents = {k: v for k, v in documents.items() if not _is_member_plan(k)}
    digest = _sha256(files[MANIFEST])
    members = _members(files, info, source)
    model = members[0].model if members else files[MODEL]
    return Bundle(source, info, plan, model, documents, digest, members)


def _is_member_plan(name: str) -> bool:
    return name.startswith("plan_") and name.endswith(".json")


def _members(
    files: Mapping[str, bytes], info: Mapping[str, Any], source: Path
) -> tuple[Member, ...]:
    """An ensemble's members as ``bundle.json`` lists them (none for one model)."""
    listed = info.get("members") or []
    if not isinstance(listed, list) or len(listed) == 1:
        raise BundleIntegrityError(
            f"{source}: bundle.json members must list 2 or more members; {_FIX}"
        )
    if listed and MODEL in files:
        raise BundleIntegrityError(f"{source}: holds both {MODEL} and ensemble members; {_FIX}")
    if not listed and MODEL not in files:
        raise BundleIntegrityError(f"{source}: {MODEL} is missing; {_FIX}")
    out = []
    for i, entry in enumerate(listed):
        model_name, plan_name = member_files(i)
        for name in (model_name, plan_name):
            if name not in files:
                raise BundleIntegrityError(
                    f"{source}: {name} of ensemble member {i} is missing; copy the whole "
                    f"bundle, or {_FIX}"
                )
        try:
            plan = Plan.model_validate(_json(files, plan_name, source))
        except ValidationError as exc:
            raise BundleError(
                f"{source}: {plan_name} does not validate ({validation_summary(exc)}); {_FIX}"
            ) from exc
        run = str(entry.get("run", "")) if isinstance(entry, dict) else ""
        out.append(Member(files[model_name], plan, run))
    models = [n for n in files if n.startswith("model_") and n.endswith(".onnx")]
    if len(models) != len(out):
        raise BundleIntegrityError(
            f"{source}: holds {len(models)} member models but bundle.json lists {len(out)}; {_FIX}"
        )
    return tuple(out)
