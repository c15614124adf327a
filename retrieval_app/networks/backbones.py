"""Backbones: modules mapping a batch of images to pooled feature vectors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsUnavailableError
from .efficientnet_lite import FEATURE_DIM as LITE0_FEATURES, EfficientNetLite0, load_lite0_weights


class SmallCNN(nn.Module):
    """The classic triplet-loss tutorial network for 28×28 greyscale images: two conv
    blocks (conv 5×5, PReLU, max-pool, dropout), then a 256-unit PReLU layer."""

    feature_dim = 256

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 5), nn.PReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 5), nn.PReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, self.feature_dim), nn.PReLU())
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="leaky_relu", a=0.25)  # PReLU's initial slope
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class Lite0Features(nn.Module):
    def __init__(self, pretrained: bool, weights: str | Path | None) -> None:
        super().__init__()
        self.net = EfficientNetLite0()
        if pretrained or weights:
            load_lite0_weights(self.net, weights)
        self.net.classifier = nn.Identity()  # features only; logits live in efficientnet_lite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


RESNET_FEATURES = {"resnet18": 512, "resnet50": 2048}


class ResNetFeatures(nn.Module):
    def __init__(self, name: str, pretrained: bool, weights: str | Path | None) -> None:
        super().__init__()
        import torchvision

        self.net = getattr(torchvision.models, name)(weights=None)
        if weights:
            self.net.load_state_dict(_load_local_weights(weights, name))
        elif pretrained:
            self.net.load_state_dict(_download_resnet_weights(name))
        self.net.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _load_local_weights(path: str | Path, name: str) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _download_resnet_weights(name: str) -> dict:
    import torchvision

    enum = {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}[name]
    try:
        return enum.DEFAULT.get_state_dict(progress=False)
    except Exception as exc:  # URLError, timeouts, proxies refusing: all mean "not here"
        pretty = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}[name]
        raise WeightsUnavailableError(
            f"could not download {pretty} ImageNet weights ({type(exc).__name__}; offline?). "
            f"Pass weights=FILE (--weights FILE: a torchvision state_dict .pth) or use efficientnet_lite0, which ships offline"
        ) from exc


__all__ = ["LITE0_FEATURES", "Lite0Features", "RESNET_FEATURES", "ResNetFeatures", "SmallCNN"]
