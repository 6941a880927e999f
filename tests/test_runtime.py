"""The torch-free runtime: numpy sliding window and TTA against MONAI, imports without torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from torch import nn

from _notorch import run_without_torch
from medai.export import export_onnx
from medai.inference import predict_probabilities
from medai.runtime import (
    OnnxNetwork,
    gaussian_importance_map,
    sliding_window_logits,
    sliding_window_probabilities,
    window_starts,
)


def _net(in_channels: int = 2, out_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(in_channels, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, out_channels, 3, padding=1)
    ).eval()  # fmt: skip


def _torch_fn(net: nn.Module):  # type: ignore[no-untyped-def]
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    return run


@pytest.mark.parametrize("window", [(16, 16, 16), (7, 9, 12), (32, 20, 8)])
def test_importance_map_is_monais(window: tuple[int, int, int]) -> None:
    ours = gaussian_importance_map(window)
    theirs = compute_importance_map(window, mode="gaussian").numpy()
    assert ours.shape == window
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert ours.max() > 100 * ours.min()  # peaked at the centre, not flat


@pytest.mark.parametrize(
    ("size", "window", "overlap"),
    [(40, 16, 0.5), (17, 16, 0.25), (16, 16, 0.5), (50, 12, 0.6), (33, 8, 0.0)],
)
def test_window_grid_is_monais(size: int, window: int, overlap: float) -> None:
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    boxes = dense_patch_slices((size,), (window,), (step,))
    assert window_starts(size, window, overlap) == [box[0].start for box in boxes]


@pytest.mark.parametrize(
    ("shape", "window", "overlap"),
    [
        ((2, 40, 33, 21), (16, 16, 16), 0.5),  # several windows, last ones shifted back
        ((2, 10, 30, 17), (16, 16, 16), 0.25),  # one axis shorter than the window: padded
        ((2, 50, 7, 19), (12, 16, 8), 0.6),
    ],
)
def test_numpy_sliding_window_matches_monai(
    shape: tuple[int, ...], window: tuple[int, int, int], overlap: float
) -> None:
    net = _net()
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    ref = sliding_window_inference(
        torch.from_numpy(image)[None], window, 2, net, overlap=overlap, mode="gaussian"
    )
    ref_np = ref[0].detach().numpy()  # type: ignore[index]
    got = sliding_window_logits(_torch_fn(net), image, window=window, overlap=overlap)
    assert got.shape == ref_np.shape == (3, *shape[1:])
    np.testing.assert_allclose(got, ref_np, rtol=0, atol=1e-4)
    # constant blending would differ where windows overlap: the weights matter
    flat = sliding_window_inference(
        torch.from_numpy(image)[None], window, 2, net, overlap=overlap, mode="constant"
    )
    assert np.abs(flat[0].detach().numpy() - got).max() > 1e-3  # type: ignore[index]


def test_onnx_runtime_sliding_window_with_tta_matches_torch_and_monai() -> None:
    net = _net(4, 3)
    onnx = OnnxNetwork(export_onnx(net, in_channels=4, window=(16, 16, 16)), device="cpu")
    image = np.random.default_rng(2).normal(size=(4, 30, 21, 18)).astype(np.float32)
    for tta in (False, True):
        ref = predict_probabilities(net, image, patch_size=(16, 16, 16), overlap=0.5, tta_flips=tta)
        got = sliding_window_probabilities(
            onnx, image, window=(16, 16, 16), overlap=0.5, tta_flips=tta
        )
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    plain = sliding_window_probabilities(onnx, image, window=(16, 16, 16), overlap=0.5)
    assert np.abs(plain - got).max() > 1e-3  # TTA changed something, so the check above bites
    # the exported model takes any batch and any spatial size (dynamic axes)
    batch = np.random.default_rng(3).normal(size=(3, 4, 8, 24, 16)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(onnx(batch), net(torch.from_numpy(batch)).numpy(), atol=1e-4)


def test_runtime_and_numpy_inference_import_without_torch() -> None:
    res = run_without_torch(
        """
        import importlib, pkgutil, sys
        import medai.runtime
        names = [m.name for m in pkgutil.walk_packages(medai.runtime.__path__, "medai.runtime.")]
        for name in names + ["medai.inference", "medai.inference.postprocess",
                             "medai.inference.study", "medai.cli.main", "medai.cli.bundle_cmd"]:
            importlib.import_module(name)
        from medai.inference import postprocess_regions, segment_image  # noqa: F401
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai"))
        print("LEAKED", leaked)
        print("MODULES", len(names))
        try:
            import medai.inference.predict  # the PyTorch path: must be blocked here
        except ImportError:
            print("BLOCKED")
        """
    )
    assert res.returncode == 0, res.stderr
    assert "LEAKED []" in res.stdout
    assert "BLOCKED" in res.stdout  # the hook works: a torch import would have failed
    assert "MODULES 6" in res.stdout  # bundle, classify, outputs, predict, session, sliding


def test_runtime_import_leaves_the_dataset_side_unloaded() -> None:
    # a predict process should not pay for pandas / matplotlib (medai.data) at start-up
    res = run_without_torch(
        """
        import sys
        import medai.runtime
        print("HEAVY", sorted({m.split(".")[0] for m in sys.modules} & {"pandas", "matplotlib"}))
        from medai.preprocess import as_cohort  # still importable, on first use
        print("LATER", "pandas" in sys.modules)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert "LATER True" in res.stdout
