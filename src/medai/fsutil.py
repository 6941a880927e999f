"""Safe file writing: write to a temporary sibling, flush it to disk, then rename it over
the target.

A crash, a power cut or a bad input half-way through never leaves a half-written file,
and whatever was stored at the target before stays intact until the new file is whole
and on disk. Temporary files are created with ``O_CREAT | O_EXCL`` and mode ``0o666``
(or ``0o600`` for secrets) so the kernel applies the process umask: the umask is never
read or changed, which would race with other threads of a service.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "fsync_dir",
    "fsync_tree",
    "write_secret_text",
]

#: Mode of ordinary files before the umask (the kernel applies it).
FILE_MODE = 0o666
#: Mode of key files and other secrets: readable and writable by the owner only.
SECRET_MODE = 0o600

#: ``fsync`` on a directory is refused by a few file systems; nothing more can be done.
_DIR_SYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def _create_temp(target: Path, mode: int) -> tuple[int, Path]:
    """Create a new hidden sibling of ``target`` (same suffixes) and open it for writing."""
    suffix = "".join(target.suffixes)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {target}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Flush a directory's entries (new, renamed or removed names) to disk."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _DIR_SYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file and directory under ``folder`` (and ``folder`` itself) to disk."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder", str(root))
    for current, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_file(Path(current) / name)
        fsync_dir(current)


def publish_folder(staging: str | Path, folder: str | Path) -> None:
    """Flush the finished ``staging`` folder, then rename it onto ``folder``.

    An existing ``folder`` is first renamed aside and removed only after the new one is
    in place, so a crash leaves either the old or the new folder, never a half-written one.
    """
    staging, folder = Path(staging), Path(folder)
    fsync_tree(staging)
    old: Path | None = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{secrets.token_hex(4)}")
        folder.rename(old)
    staging.rename(folder)
    fsync_dir(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish(tmp: Path, target: Path, *, overwrite: bool) -> None:
    """Move the finished, flushed ``tmp`` onto ``target`` and flush the directory."""
    if overwrite:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)  # atomic, and fails if target exists
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system
            if target.exists():
                raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
            os.replace(tmp, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` on success.

    The temporary file exists (empty, mode ``0o666`` less the umask) when the block
    starts; the block writes it by path. On success it is flushed to disk, renamed over
    ``target`` and the directory is flushed; on an exception it is removed and
    ``target`` is untouched. The temporary name keeps the target's suffixes
    (``.nii.gz`` stays ``.nii.gz``) so writers that choose a format from the extension
    behave the same.

    Example:
        >>> with atomic_path("out.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target, FILE_MODE)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
        _publish(tmp, target, overwrite=True)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(
    target: str | Path, data: bytes, *, mode: int = FILE_MODE, overwrite: bool = True
) -> None:
    """Write ``data`` to ``target`` atomically, created with ``mode`` less the umask.

    Raises:
        FileExistsError: If ``target`` exists and ``overwrite`` is false.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and target.exists():
        raise FileExistsError(errno.EEXIST, "file exists", str(target))
    fd, tmp = _create_temp(target, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, target, overwrite=overwrite)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def write_secret_text(target: str | Path, text: str, *, overwrite: bool = False) -> None:
    """Write a key or other secret: mode ``0o600`` from the start, atomically.

    The file is never readable by others, not even for a moment: it is created with
    mode ``0o600`` (the umask can only narrow it), written, flushed and renamed.

    Raises:
        FileExistsError: If ``target`` exists and ``overwrite`` is false (a project key
            that earlier outputs depend on is never replaced by accident).
    """
    atomic_write_bytes(target, text.encode("utf-8"), mode=SECRET_MODE, overwrite=overwrite)


def file_sha256(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
