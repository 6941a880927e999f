"""medai.classifiers: MONAI classification networks, local weights, dropout head."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from medai.classifiers import (
    CLASSIFIERS,
    DropoutLinear,
    build_classifier,
    classifier_head,
)
from medai.errors import ConfigError
from medai.preprocess.plan import Architecture

ARCHS = list(CLASSIFIERS)
#: Where MONAI keeps each architecture's final linear layer.
HEAD_NAMES = {
    Architecture.DENSENET121: "class_layers.out",
    Architecture.RESNET18: "fc",
    Architecture.RESNET50: "fc",
    Architecture.EFFICIENTNET_B0: "_fc",
}


def _net(arch: str = "resnet18", **kw: object) -> nn.Module:
    args: dict[str, object] = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3}
    args.update(kw)
    torch.manual_seed(0)
    return build_classifier(arch, width=0.125, **args)  # type: ignore[arg-type]


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a classifier tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.usefixtures("no_download")
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_builds_and_gives_batch_by_classes(arch: Architecture, dims: int) -> None:
    net = _net(arch.value, spatial_dims=dims, in_channels=2, out_channels=4).eval()
    with torch.no_grad():
        logits = net(torch.randn(2, 2, *([32] * dims)))
    assert logits.shape == (2, 4)
    assert torch.isfinite(logits).all()
    head = classifier_head(net)
    assert isinstance(head, DropoutLinear)
    assert head is net.get_submodule(HEAD_NAMES[arch])
    assert head.out_features == 4


def test_width_scales_the_network() -> None:
    narrow = sum(p.numel() for p in _net("densenet121").parameters())
    torch.manual_seed(0)
    wider = build_classifier(
        "densenet121", spatial_dims=2, in_channels=1, out_channels=3, width=0.25
    )
    assert sum(p.numel() for p in wider.parameters()) > 2 * narrow


def test_efficientnet_keys_match_monai_efficientnetbn() -> None:
    """Weights saved from MONAI's EfficientNetBN("efficientnet-b0") fit ours."""
    from monai.networks.nets import EfficientNetBN

    ours = build_classifier(
        "efficientnet-b0", spatial_dims=2, in_channels=3, out_channels=5
    ).state_dict()
    theirs = EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=5
    ).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_weights_round_trip_from_a_local_file(tmp_path: Path) -> None:
    source = _net("densenet121")
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)  # another initialisation, so equality means the file was loaded
    loaded = build_classifier(
        "densenet121", spatial_dims=2, in_channels=1, out_channels=3, width=0.125, weights=path
    )
    got = loaded.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(got[key], value), key
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_head_of_another_size_is_left_fresh_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _net("resnet18", out_channels=3)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    with caplog.at_level(logging.WARNING, logger="medai.classifiers"):
        loaded = _net("resnet18", out_channels=5, weights=path)
    assert torch.equal(loaded.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"])
    assert classifier_head(loaded).weight.shape == (5, classifier_head(source).in_features)
    assert "head 'fc' not loaded" in caplog.text
    assert "fc.weight file (3, 64) vs network (5, 64)" in caplog.text


def test_body_mismatch_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_net("resnet18", in_channels=1).state_dict(), path)
    with pytest.raises(ConfigError, match=r"of another shape: conv1\.weight: file \(8, 1,"):
        _net("resnet18", in_channels=2, weights=path)
    with pytest.raises(ConfigError, match=r"missing: .*layer1|unexpected: "):
        _net("resnet50", weights=path)


def test_missing_or_foreign_weights_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _net(weights=tmp_path / "absent.pt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ConfigError, match="not a state dict"):
        _net(weights=path)


@pytest.mark.parametrize("arch", ARCHS)
def test_mc_dropout_samples_differ_only_with_dropout(arch: Architecture) -> None:
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        stochastic = _net(arch.value, dropout=0.5).train()
        assert not torch.allclose(stochastic(x), stochastic(x))
        stochastic.eval()
        classifier_head(stochastic).train()  # MC dropout at inference: the head only
        assert not torch.allclose(stochastic(x), stochastic(x))
        stochastic.eval()
        assert torch.equal(stochastic(x), stochastic(x))
        plain = _net(arch.value, dropout=0.0).train()
        assert torch.equal(plain(x), plain(x))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"architecture": "vgg16"}, "architecture must be one of densenet121, resnet18"),
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"width": 0.01}, "width must be in"),
        ({"out_channels": 0}, "channels must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "architecture": "resnet18",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
    }
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        build_classifier(**args)  # type: ignore[arg-type]
