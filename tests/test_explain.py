"""medai.explain: saliency maps of a small trained classifier, their sanity checks and writers.

The classifier is a tiny MONAI DenseNet trained here (seeded, a few seconds on one core)
on 32×32 noise images whose positive class holds a bright blob at a random position, so
the right answer of every map is known: the blob.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import (
    DenseNet,
    DenseNet121,
    EfficientNet,
    EfficientNetBN,
    ResNet,
    resnet18,
    resnet50,
)
from PIL import Image as PILImage
from torch import nn

from medai.explain import (
    SaliencyMethod,
    best_slice,
    compute_map_similarity,
    default_target_layer,
    pointing_game,
    randomisation_check,
    saliency_map,
    write_heatmap_nifti,
    write_overlay_png,
)
from medai.image import ScalarImage
from medai.io import read_image

SIDE = 32
RADIUS = 4.0


def _blobs(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Images ``(n, 1, 32, 32)``, labels (odd index = blob) and the blob masks (drawn for all)."""
    images = rng.normal(0.0, 0.2, (n, 1, SIDE, SIDE)).astype(np.float32)
    labels = np.arange(n) % 2
    masks = np.zeros((n, SIDE, SIDE), dtype=bool)
    ii, jj = np.mgrid[:SIDE, :SIDE]
    for k in range(n):
        ci, cj = rng.uniform(5, SIDE - 5, 2)
        dist2 = (ii - ci) ** 2 + (jj - cj) ** 2
        masks[k] = dist2 <= RADIUS**2
        if labels[k]:
            images[k, 0] += 1.5 * np.exp(-dist2 / (2 * (RADIUS / 2) ** 2)).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels), masks


def _small_densenet(spatial_dims: int = 2, out_channels: int = 2) -> DenseNet:
    return DenseNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=out_channels,
        init_features=8,
        growth_rate=8,
        block_config=(2,),  # one block: an 8×8 map at the target layer of a 32×32 input
    )


@pytest.fixture(scope="module")
def trained() -> tuple[DenseNet, torch.Tensor, torch.Tensor, np.ndarray]:
    """The trained network and a held-out test set (images, labels, masks)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train, _ = _blobs(128, rng)
    x_test, y_test, masks = _blobs(40, rng)
    net = _small_densenet()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(40):
        batch = torch.randint(0, len(x_train), (32,))
        loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.95, f"the test classifier did not learn (accuracy {accuracy:.2f})"
    return net, x_test, y_test, masks


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# -- saliency on the trained network --------------------------------------------------------
def test_gradcam_points_at_the_blob(trained: tuple) -> None:
    net, images, labels, masks = trained
    positive = [k for k in range(len(images)) if labels[k] == 1]
    maps = [saliency_map(net, images[k], method="gradcam", class_index=1) for k in positive]
    result = pointing_game(maps, [masks[k] for k in positive])
    assert result.n == len(positive) == 20
    assert result.rate >= 0.8, result
    assert result.chance < 0.1 < result.rate  # a blob covers ~5 % of the image
    assert all(m.shape == (SIDE, SIDE) and m.dtype == np.float32 for m in maps)
    assert all(m.min() == 0.0 and m.max() == 1.0 for m in maps)


def test_saliency_leaves_the_network_alone(trained: tuple) -> None:
    net, images, _, _ = trained
    before = _state(net)
    net.zero_grad(set_to_none=True)
    net.train()
    try:
        for method in SaliencyMethod:
            saliency_map(net, images[1], method=method)
        assert net.training  # its mode is kept
    finally:
        net.eval()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())


def test_randomisation_decorrelates_maps_and_keeps_net(trained: tuple) -> None:
    net, images, labels, _ = trained
    positive = [images[k] for k in range(len(images)) if labels[k] == 1][:4]
    before, rng = _state(net), torch.random.get_rng_state()
    steps = randomisation_check(net, positive, method="gradcam", seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's draws are untouched
    owners = [n for n, m in net.named_modules() if any(True for _ in m.parameters(False))]
    assert [s.layer for s in steps] == owners[::-1]  # output layer first, every layer once
    assert steps[0].layer == "class_layers.out"
    assert steps[-1].spearman < 0.5, steps[-1]
    assert all(-1.0 <= s.spearman <= 1.0 and -1.0 <= s.ssim <= 1.0 for s in steps)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    again = randomisation_check(net, positive, method="gradcam", seed=3, max_layers=3)
    assert again == steps[:3]  # seeded: the same draws, the same figures


def test_map_of_identical_untrained_networks_is_deterministic() -> None:
    image = torch.from_numpy(np.random.default_rng(1).normal(size=(1, SIDE, SIDE))).float()
    nets = []
    for _ in range(2):
        torch.manual_seed(7)
        nets.append(_small_densenet().eval())
    for method in ("gradcam", "gradcam++"):
        first = saliency_map(nets[0], image, method=method, class_index=0)
        assert np.array_equal(first, saliency_map(nets[1], image, method=method, class_index=0))
        assert np.array_equal(first, saliency_map(nets[0], image, method=method, class_index=0))
    torch.manual_seed(8)
    other = saliency_map(_small_densenet().eval(), image, method="gradcam", class_index=0)
    assert not np.array_equal(first, other)  # another draw gives another map


def test_single_logit_network_explains_its_logit() -> None:
    torch.manual_seed(0)
    net = _small_densenet(out_channels=1).eval()
    image = torch.rand(1, SIDE, SIDE)
    heat = saliency_map(net, image, method="gradcam")
    assert np.array_equal(heat, saliency_map(net, image, method="gradcam", class_index=0))
    with pytest.raises(ValueError, match=r"1 output\(s\).*positive logit"):
        saliency_map(net, image, method="gradcam", class_index=1)


# -- errors -----------------------------------------------------------------------------------
def test_unknown_target_layer_names_the_available_layers() -> None:
    net = _small_densenet()
    with pytest.raises(ValueError, match="available layers") as info:
        saliency_map(net, torch.rand(1, SIDE, SIDE), method="gradcam", target_layer="layer4")
    assert "class_layers.relu" in str(info.value)
    with pytest.raises(ValueError, match=r"did you mean class_layers\.relu"):
        saliency_map(
            net, torch.rand(1, SIDE, SIDE), method="gradcam", target_layer="class_layer.relu"
        )


@pytest.mark.parametrize(
    ("kwargs", "image_shape", "message"),
    [
        ({"method": "gradcam"}, (3, SIDE, SIDE), "has 3 channels but the network takes 1"),
        ({"method": "gradcam"}, (1, SIDE, SIDE, SIDE), "2 spatial dimensions"),
        ({"method": "saliency"}, (1, SIDE, SIDE), "unknown saliency method 'saliency'"),
        ({"method": "gradcam", "class_index": 2}, (1, SIDE, SIDE), "class_index 2 out of range"),
        ({"method": "gradcam", "occlusion_mask_size": 5}, (1, SIDE, SIDE), "occlusion only"),
        ({"method": "occlusion", "occlusion_mask_size": 40}, (1, SIDE, SIDE), "got 40"),
        ({"method": "gradcam", "target_layer": "class_layers.out"}, (1, SIDE, SIDE), "spatial"),
    ],
)
def test_bad_input_is_a_clear_value_error(kwargs: dict, image_shape: tuple, message: str) -> None:
    net = _small_densenet()
    with pytest.raises(ValueError, match=message):
        saliency_map(net, torch.rand(*image_shape), **kwargs)


def test_image_must_be_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        saliency_map(_small_densenet(), np.zeros((1, SIDE, SIDE)), method="gradcam")  # type: ignore[arg-type]


def test_default_layer_unknown_network_asks_for_one() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="pass target_layer="):
        default_target_layer(net)
    heat = saliency_map(net, torch.rand(1, 8, 8), method="gradcam", target_layer="0")
    assert heat.shape == (8, 8)


# -- default layers and 3D smoke ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "layer"),
    [
        (lambda d: DenseNet121(spatial_dims=d, in_channels=1, out_channels=2), "class_layers.relu"),
        (lambda d: resnet18(spatial_dims=d, n_input_channels=1, num_classes=2), "layer4"),
        (lambda d: resnet50(spatial_dims=d, n_input_channels=1, num_classes=2), "layer4"),
        (
            lambda d: EfficientNetBN(
                "efficientnet-b0", pretrained=False, spatial_dims=d, in_channels=1, num_classes=2
            ),
            "_bn1",
        ),
    ],
)
def test_default_target_layer_2d(build: object, layer: str) -> None:
    net = build(2)  # type: ignore[operator]
    assert default_target_layer(net) == layer
    assert layer in dict(net.named_modules())


def _small_3d(kind: str) -> nn.Module:
    if kind == "densenet":
        return DenseNet(3, 1, 2, init_features=4, growth_rate=4, block_config=(1,))
    if kind == "resnet":
        return ResNet(
            "basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=3, n_input_channels=1,
            num_classes=2, conv1_t_stride=1, no_max_pool=True,
        )  # fmt: skip
    blocks = ["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e6_i16_o24_se0.25"]  # two of b0's
    return EfficientNet(blocks, 3, 1, 2, width_coefficient=0.25, image_size=16)


@pytest.mark.parametrize(
    ("kind", "layer"),
    [("densenet", "class_layers.relu"), ("resnet", "layer4"), ("efficientnet", "_bn1")],
)
def test_3d_maps_for_each_method_and_network(kind: str, layer: str) -> None:
    torch.manual_seed(0)
    net = _small_3d(kind).eval()
    assert default_target_layer(net) == layer
    image = torch.rand(1, 16, 16, 16)
    for method in SaliencyMethod:
        mask = 8 if method is SaliencyMethod.OCCLUSION else None
        heat = saliency_map(net, image, method=method, occlusion_mask_size=mask)
        assert heat.shape == (16, 16, 16)
        assert heat.dtype == np.float32
        assert np.isfinite(heat).all()
        assert heat.min() >= 0.0
        assert heat.max() <= 1.0
        assert heat.max() in (0.0, 1.0)  # scaled to [0, 1], or all zeros when constant


# -- pointing game and map similarity --------------------------------------------------------
def test_pointing_game_closed_form() -> None:
    masks = [np.zeros((4, 4), bool) for _ in range(3)]
    for m in masks:
        m[0, :2] = True  # 2 of 16 voxels
    maps = [np.zeros((4, 4)) for _ in range(3)]
    maps[0][0, 1] = 1.0  # peak inside
    maps[1][3, 3] = 1.0  # peak outside
    # maps[2] is flat: the first argmax, (0, 0), is inside
    result = pointing_game(maps, masks)
    assert (result.hits, result.n, result.rate) == (2, 3, 2 / 3)
    assert result.chance == pytest.approx(2 / 16)
    support = [np.zeros((4, 4), bool) for _ in range(3)]
    for s in support:
        s[:2] = True  # 8 voxels
    assert pointing_game(maps, masks, support=support).chance == pytest.approx(2 / 8)


def test_pointing_game_rejects_bad_cases() -> None:
    with pytest.raises(ValueError, match="one entry per case"):
        pointing_game([np.zeros((2, 2))], [])
    with pytest.raises(ValueError, match="case 0: mask is empty"):
        pointing_game([np.zeros((2, 2))], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="one shape"):
        pointing_game([np.zeros((2, 2))], [np.ones((3, 3))])


def test_map_similarity_closed_form() -> None:
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    assert compute_map_similarity(ramp, ramp) == pytest.approx((1.0, 1.0))
    rho, ssim = compute_map_similarity(ramp, 1 - ramp)
    assert rho == pytest.approx(-1.0)
    assert ssim < 0.5
    assert compute_map_similarity(ramp, np.zeros((8, 8)))[0] == 0.0
    cube = np.random.default_rng(0).random((5, 5, 5))
    assert compute_map_similarity(cube, cube) == pytest.approx((1.0, 1.0))  # 3D, small window


# -- writers -------------------------------------------------------------------------------
def test_heatmap_nifti_round_trip(tmp_path: Path) -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 3.0)
    image = ScalarImage(np.zeros((1, 6, 5, 4), np.float32), affine)
    heat = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    path = write_heatmap_nifti(heat, image, tmp_path / "heat.nii.gz")
    back: ScalarImage = read_image(path)
    assert np.array_equal(back.numpy3d(), heat)
    assert np.allclose(back.affine, affine)
    flat = ScalarImage(np.zeros((6, 5)))
    assert read_image(write_heatmap_nifti(heat[..., 0], flat, tmp_path / "f.nii")).shape == (
        6,
        5,
        1,
    )
    with pytest.raises(ValueError, match=r"not the image's grid \(6, 5, 4\)"):
        write_heatmap_nifti(heat[:5], image, tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        write_heatmap_nifti(heat, image, tmp_path / "heat.png")


def test_overlay_png_and_best_slice(tmp_path: Path) -> None:
    volume = np.zeros((8, 8, 6))
    volume[2:5, 2:5, 4] = 1.0
    volume[0, 0, 1] = 2.0  # a higher voxel, but less mass
    assert best_slice(volume) == 4
    z = best_slice(volume)
    mask = volume[..., z] > 0
    path = write_overlay_png(
        volume[..., z], np.arange(64.0).reshape(8, 8), tmp_path / "o.png", mask=mask, title="t"
    )
    with PILImage.open(path) as png:
        assert png.format == "PNG"
        assert png.size[0] > 100
    with pytest.raises(ValueError, match="2D of one shape"):
        write_overlay_png(volume, volume, tmp_path / "v.png")
    with pytest.raises(ValueError, match="3D"):
        best_slice(volume[..., 0])
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
