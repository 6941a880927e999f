"""Safe writes: modes follow the umask (never toggled), secrets are 0600, a failed or
killed write leaves the old content intact, series folders appear whole."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medai.fsutil import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    fsync_tree,
    write_secret_text,
)
from medai.image import ScalarImage
from medai.io import read_dicom_series, write_dicom_series, write_image


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, expected: int) -> None:
    """Each writer, in a process with a non-default umask, makes files of mode 0666 & ~umask."""
    result = _run(
        f"""
        import os
        import numpy as np
        from medai.fsutil import atomic_write_text, atomic_path
        from medai.image import ScalarImage
        from medai.io import write_image
        os.umask({umask:#o})
        atomic_write_text("a.txt", "x")
        with atomic_path("b.bin") as tmp:
            tmp.write_bytes(b"y")
        image = ScalarImage(np.zeros((3, 3, 2), np.float32), np.eye(4))
        write_image(image, "c.nii.gz")
        write_image(image, "d.nrrd")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for name in ("a.txt", "b.bin", "c.nii.gz", "d.nrrd"):
        assert _mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.nii.gz", "d.nrrd"]


def test_the_umask_is_never_touched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the umask means setting it, which races with other threads of a service."""

    def forbidden(_mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    atomic_write_text(tmp_path / "a.txt", "x")
    write_secret_text(tmp_path / "b.key", "k")
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"z")
    assert (tmp_path / "a.txt").read_text() == "x"


def test_secret_files_are_0600_even_with_an_open_umask(tmp_path: Path) -> None:
    result = _run(
        """
        import os
        from medai.fsutil import write_secret_text
        os.umask(0)
        write_secret_text("project.key", "s3cret\\n")
        write_secret_text("sub/dir/other.key", "t")
        write_secret_text("project.key", "new\\n", overwrite=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert _mode(tmp_path / "project.key") == 0o600
    assert _mode(tmp_path / "sub" / "dir" / "other.key") == 0o600
    assert (tmp_path / "project.key").read_text() == "new\n"


def test_secret_files_are_never_overwritten_by_default(tmp_path: Path) -> None:
    key = tmp_path / "project.key"
    write_secret_text(key, "first")
    with pytest.raises(FileExistsError):
        write_secret_text(key, "second")
    assert key.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["project.key"]


def test_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    atomic_write_text(target, "old\n")

    def write_half() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half a new ta")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_half()
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_killed_write_keeps_the_old_content(tmp_path: Path) -> None:
    """A process that dies mid-write (no cleanup runs) leaves the target as it was."""
    target = tmp_path / "image.nii.gz"
    image = ScalarImage(np.arange(24, dtype=np.float32).reshape(4, 3, 2), np.eye(4))
    write_image(image, target)
    before = target.read_bytes()
    result = _run(
        """
        import os
        from medai.fsutil import atomic_path
        with atomic_path("image.nii.gz") as tmp:
            tmp.write_bytes(b"partial gzip")
            os._exit(3)
        """,
        tmp_path,
    )
    assert result.returncode == 3
    assert target.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".image.nii.gz.")
    assert leftovers[0].endswith(".tmp.nii.gz")


def test_atomic_write_bytes_refuses_to_overwrite_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"1")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"2", overwrite=False)
    atomic_write_bytes(target, b"3")
    assert target.read_bytes() == b"3"


def test_files_and_folders_are_flushed_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order of the real calls: fsync(file) → replace → fsync(folder)."""
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert calls == ["fsync file", "replace", "fsync dir"]
    calls.clear()
    with atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("y")
    assert calls == ["fsync file", "replace", "fsync dir"]
    calls.clear()
    (tmp_path / "t" / "u").mkdir(parents=True)
    (tmp_path / "t" / "u" / "f.txt").write_text("z")
    (tmp_path / "t" / "g.txt").write_text("w")
    fsync_tree(tmp_path / "t")
    assert sorted(calls) == ["fsync dir", "fsync dir", "fsync file", "fsync file"]
    with pytest.raises(FileNotFoundError):
        fsync_tree(tmp_path / "missing")


def test_killed_series_write_keeps_the_old_series(tmp_path: Path) -> None:
    """A process killed after writing some slices leaves the old series folder whole."""
    folder = tmp_path / "series"
    image = ScalarImage(np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.eye(4))
    old = write_dicom_series(image, folder, patient_id="P", patient_name="A^B")
    before = {p.name: p.read_bytes() for p in old}
    result = _run(
        """
        import os
        import numpy as np
        from pydicom.dataset import Dataset
        from medai.image import ScalarImage
        from medai.io import write_dicom_series
        real_save, written = Dataset.save_as, []
        def save_then_die(self, *args, **kwargs):
            if len(written) == 3:
                os._exit(3)
            written.append(args[0])
            real_save(self, *args, **kwargs)
        Dataset.save_as = save_then_die
        image = ScalarImage(np.ones((3, 4, 5), np.float32), np.eye(4))
        write_dicom_series(image, "series", patient_id="Q", patient_name="C^D", overwrite=True)
        """,
        tmp_path,
    )
    assert result.returncode == 3, result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    staging = [p for p in tmp_path.iterdir() if p != folder]
    assert len(staging) == 1
    assert staging[0].name.startswith(".series.tmp-")
    assert len(list(staging[0].iterdir())) == 3
    np.testing.assert_array_equal(read_dicom_series(folder).numpy3d(), image.numpy3d())
