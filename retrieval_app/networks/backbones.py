"""Backbones: modules mapping a batch of images to pooled feature vectors (B, feature_dim)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .efficientnet_lite import FEATURE_DIM as LITE0_FEATURES, EfficientNetLite0, load_lite0_weights
from .weights import download_state_dict, load_state_into, read_state_dict

WeightsPath = str | Path | None


class SmallCNN(nn.Module):
    """The classic triplet-loss tutorial network for 28×28 greyscale images: two conv
    blocks (conv 5×5, PReLU, max-pool 2, dropout), then a 256-unit PReLU layer. It has no
    pretrained weights: it is meant to be trained from scratch on MNIST-like data."""

    feature_dim = 256

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 5), nn.PReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 5), nn.PReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
        )
        # 28 → conv 24 → pool 12 → conv 8 → pool 4
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, self.feature_dim), nn.PReLU())
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # Kaiming for a leaky ReLU whose slope is PReLU's initial 0.25.
                nn.init.kaiming_normal_(module.weight, nonlinearity="leaky_relu", a=0.25)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class Lite0Features(nn.Module):
    """EfficientNet-Lite0 up to the pooled 1280-d features. The ImageNet classifier is
    dropped (an Identity) so embedding checkpoints do not carry its 1.3 M weights."""

    def __init__(self, pretrained: bool, weights: WeightsPath) -> None:
        super().__init__()
        self.net = EfficientNetLite0()
        if weights or pretrained:
            load_lite0_weights(self.net, weights)
        self.net.classifier = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


RESNET_FEATURES = {"resnet18": 512, "resnet50": 2048}
_RESNET_PRETTY = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}


class ResNetFeatures(nn.Module):
    """A torchvision ResNet with its classifier replaced by Identity: the output is the
    global-average-pooled feature vector."""

    def __init__(self, name: str, pretrained: bool, weights: WeightsPath) -> None:
        super().__init__()
        import torchvision

        self.net = getattr(torchvision.models, name)(weights=None)
        self.net.fc = nn.Identity()
        if weights:
            state = read_state_dict(weights)
        elif pretrained:
            state = download_state_dict(_resnet_weights_enum(name).DEFAULT, _RESNET_PRETTY[name])
        else:
            return
        # Any classifier in the file (1000 ImageNet classes or a fine-tuned one) is unused.
        load_state_into(self.net, {k: v for k, v in state.items() if not k.startswith("fc.")}, _RESNET_PRETTY[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _resnet_weights_enum(name: str):
    import torchvision

    return {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}[name]


def small_cnn_backbone(pretrained: bool, weights: WeightsPath) -> SmallCNN:
    """`pretrained` is ignored (there are no published weights); `weights` may name a
    state_dict file of a SmallCNN backbone."""
    net = SmallCNN()
    if weights:
        load_state_into(net, read_state_dict(weights), "small_cnn")
    return net


__all__ = ["LITE0_FEATURES", "Lite0Features", "RESNET_FEATURES", "ResNetFeatures", "SmallCNN", "small_cnn_backbone"]
