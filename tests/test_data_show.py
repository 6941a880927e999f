"""`render_case_png` and the `medai data show` / `medai data import` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from data_fixtures import AFFINE, write_msd
from medai.cli.main import app
from medai.data import Dataset, render_case_png
from medai.data.show import PANEL_PIXELS
from medai.errors import ConfigError, GeometryError
from medai.image import LabelMap, ScalarImage


def _rgb(path: Path) -> np.ndarray:
    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


@pytest.mark.parametrize("overlay", ["contour", "fill"])
def test_png_size_and_overlay_on_tumour_slice(tmp_path: Path, overlay: str) -> None:
    image = np.zeros((2, 10, 12, 7), np.float32)
    image[:, 2:8, 2:10, :] = 100.0
    label = np.zeros((10, 12, 7), np.int16)
    label[4:6, 4:8, 5] = 3  # tumour only on slice 5
    out = render_case_png(
        ScalarImage(image, AFFINE),
        LabelMap(label, AFFINE),
        tmp_path / "case.png",
        channel_names=["T1", "T2"],
        overlay=overlay,
    )
    rgb = _rgb(out)
    assert rgb.shape == (PANEL_PIXELS, 2 * PANEL_PIXELS, 3)
    coloured = np.abs(rgb[..., 0] - rgb[..., 2]) > 60  # the overlay is not grey
    assert coloured[:, :PANEL_PIXELS].any()
    assert coloured[:, PANEL_PIXELS:].any()
    # another slice has no label: no overlay colour except the white titles
    render_case_png(
        ScalarImage(image, AFFINE),
        LabelMap(label, AFFINE),
        tmp_path / "s2.png",
        channel_names=["T1", "T2"],
        slice_index=2,
    )
    rgb2 = _rgb(tmp_path / "s2.png")
    assert not (np.abs(rgb2[..., 0] - rgb2[..., 2]) > 60).any()


def test_render_validates_inputs(tmp_path: Path) -> None:
    image = ScalarImage(np.ones((2, 4, 4, 3)), AFFINE)
    with pytest.raises(ValueError, match="2 channels"):
        render_case_png(image, None, tmp_path / "x.png", channel_names=["a"])
    other = LabelMap(np.zeros((4, 4, 2), np.int16), AFFINE)
    with pytest.raises(GeometryError, match="grid"):
        render_case_png(image, other, tmp_path / "x.png")
    with pytest.raises(ValueError, match="not a valid Overlay"):
        render_case_png(image, None, tmp_path / "x.png", overlay="dots")
    with pytest.raises(ConfigError, match=r"slice index 9 is outside 0\.\.2"):
        render_case_png(image, None, tmp_path / "x.png", slice_index=9)
    assert not (tmp_path / "x.png").exists()


def test_cli_import_then_show(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "msd", 3)
    runner = CliRunner()
    manifest = tmp_path / "dataset.yaml"
    result = runner.invoke(app, ["data", "import", str(root), "--out", str(manifest)])
    assert result.exit_code == 0, result.output
    assert Dataset.load(manifest).channels == ["FLAIR", "T1w", "t1gd", "T2w"]
    png = tmp_path / "case.png"
    result = runner.invoke(app, ["data", "show", str(manifest), "BRATS_002", "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert _rgb(png).shape == (PANEL_PIXELS, 4 * PANEL_PIXELS, 3)
    missing = runner.invoke(app, ["data", "show", str(manifest), "NOPE", "--out", str(png)])
    assert missing.exit_code == 2
    assert "no case 'NOPE'" in missing.output
