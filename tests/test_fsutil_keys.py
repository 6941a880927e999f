"""De-identification key files are created 0600 by every command that writes one."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter whose umask lets everyone read new files."""
    prelude = "import os\nos.umask(0)\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_deid_generate_key_writes_a_0600_key(tmp_path: Path) -> None:
    """What ``medai deid --generate-key --key-file F`` runs to create F."""
    result = _run(
        """
        from pathlib import Path
        from medai.cli.deid_cmd import _new_key_file
        _new_key_file(Path("keys/project.key"))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    key = tmp_path / "keys" / "project.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_text().strip()) == 64


def test_demo_writes_its_key_0600(tmp_path: Path) -> None:
    result = _run(
        """
        from pathlib import Path
        from medai.cli.demo import _dicom_step
        _dicom_step(Path("demo_out"))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    key = tmp_path / "demo_out" / "dicom" / "deid.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_text().strip()) == 64
    audit = tmp_path / "demo_out" / "dicom" / "deidentified" / "deid_audit.csv"
    assert stat.S_IMODE(audit.stat().st_mode) == 0o666  # ordinary files: umask 0 → 0666
