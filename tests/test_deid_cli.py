"""The `medai deid` command: key handling, summary, exit codes, reproducible output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from medai.cli.main import app
from medai.io.deid import KEY_ENV_VAR, deidentify_uid

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
runner = CliRunner()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "ct").mkdir(parents=True)
    shutil.copy(TEST_FILES / "CT_small.dcm", folder / "ct" / "CT_small.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", folder / "MR_small.dcm")
    (folder / "readme.txt").write_text("not an image", encoding="utf-8")
    return folder


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generate_key_then_reuse_it(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    key_file = tmp_path / "project.key"
    result = runner.invoke(
        app, ["deid", str(src), str(tmp_path / "o1"), "--key-file", str(key_file), "--generate-key"]
    )
    assert result.exit_code == 0, result.output
    assert "files written" in result.output
    assert "readme.txt" in result.output
    key = key_file.read_text(encoding="utf-8").strip()
    assert len(key) == 64
    out = pydicom.dcmread(tmp_path / "o1" / "ct" / "CT_small.dcm")
    original = pydicom.dcmread(src / "ct" / "CT_small.dcm")
    assert out.StudyInstanceUID == deidentify_uid(original.StudyInstanceUID, key=key)

    again = runner.invoke(
        app, ["deid", str(src), str(tmp_path / "o2"), "--key-file", str(key_file)]
    )
    assert again.exit_code == 0, again.output
    assert _tree(tmp_path / "o1") == _tree(tmp_path / "o2")

    monkeypatch.setenv(KEY_ENV_VAR, key)
    by_env = runner.invoke(app, ["deid", str(src), str(tmp_path / "o3")])
    assert by_env.exit_code == 0, by_env.output
    assert _tree(tmp_path / "o1") == _tree(tmp_path / "o3")

    refused = runner.invoke(
        app, ["deid", str(src), str(tmp_path / "o4"), "--key-file", str(key_file), "--generate-key"]
    )
    assert refused.exit_code == 2
    assert "already exists" in refused.output


def test_refuses_without_key(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    result = runner.invoke(app, ["deid", str(src), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--key-file" in result.output
    assert "--generate-key" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_allow_private_and_failed_files(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, "cli-test-key-0123456789abcdef")
    bad = runner.invoke(app, ["deid", str(src), str(tmp_path / "o"), "--allow-private", "X:zz"])
    assert bad.exit_code == 2
    assert "CREATOR:ELEMENT" in bad.output
    shutil.copy(TEST_FILES / "MR_truncated.dcm", src / "MR_truncated.dcm")
    result = runner.invoke(
        app, ["deid", str(src), str(tmp_path / "o"), "--allow-private", "GEMS_IDEN_01:01"]
    )
    assert result.exit_code == 1
    assert "MR_truncated.dcm" in result.output
    assert "truncated" in result.output
    assert (tmp_path / "o" / "MR_small.dcm").is_file()
