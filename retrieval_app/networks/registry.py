"""A timm-style registry: `create_model("name", dim=...)` builds an `EmbeddingNet`.

The registry maps a backbone name to its `ModelSpec` and a factory
`factory(pretrained: bool, weights: path | None) -> nn.Module` returning a module that maps
images to (B, spec.feature_dim). It is filled once at import by `@register_model`; the
built-in backbones are registered at the bottom of this file."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .. import choices
from ..errors import ModelError
from .backbones import LITE0_FEATURES, RESNET_FEATURES, Lite0Features, ResNetFeatures, SmallCNN, small_cnn_backbone
from .embedding_net import EmbeddingNet, ModelSpec
from .heads import get_head_spec, make_head

DEFAULT_BACKBONE = choices.DEFAULT_BACKBONE
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BackboneFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, tuple[ModelSpec, BackboneFactory]] = {}


def register_model(spec: ModelSpec) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register `factory(pretrained, weights)` as the backbone called `spec.name`."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[spec.name] = (spec, factory)
        return factory

    return decorator


def list_models() -> list[str]:
    """Names `create_model` accepts, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The `ModelSpec` of a registered backbone; `ModelError` naming the valid ones if unknown."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model '{name}' (choose from {', '.join(list_models())})")
    return _REGISTRY[name][0]


def create_model(
    name: str,
    *,
    dim: int = 128,
    normalize: bool = True,
    pretrained: bool = True,
    weights: str | Path | None = None,
    head: str | None = "linear",
) -> EmbeddingNet:
    """Backbone `name` (see `list_models()`) + head + optional L2 norm.

    `pretrained`: load the backbone's ImageNet weights (ignored by backbones that have
    none, such as small_cnn). `weights`: a local state_dict file for the backbone instead
    (takes precedence). `head`: a name from `heads.HEADS` ("linear" by default here;
    "identity" keeps the feature dimension and ignores `dim`), or None for the pooled
    features themselves (then `dim` is ignored and embedding_dim == feature_dim)."""
    spec = get_spec(name)
    head_kind = None if head == "none" else head
    if head_kind is not None:
        dim = get_head_spec(head_kind).output_dim(spec.feature_dim, _positive_int(dim))
    factory = _REGISTRY[name][1]
    backbone = factory(pretrained=pretrained and spec.pretrained_available, weights=weights)
    return EmbeddingNet(
        spec, backbone, make_head(head_kind, spec.feature_dim, dim), head_kind=head_kind, dim=dim, normalize=normalize
    )


def _positive_int(dim: Any) -> int:
    try:
        value = operator.index(dim)  # int, numpy integer; not float or str
    except TypeError:
        value = 0
    if value < 1:
        raise ModelError(f"embedding dim must be a positive integer, got {dim!r}")
    return value


def model_from_config(config: dict[str, Any]) -> EmbeddingNet:
    """The architecture `EmbeddingNet.config()` describes, with untrained weights (no
    download): load the checkpoint's state_dict into it."""
    if not isinstance(config, dict):
        raise ModelError("model config must be a dict")
    from .class_gate import with_class_gate_from_config

    try:
        net = create_model(
            config["name"], dim=int(config["dim"]), normalize=bool(config["normalize"]), pretrained=False, head=config["head"]
        )
        return with_class_gate_from_config(net, config)
    except KeyError as exc:
        raise ModelError(f"model config lacks {exc}") from None


@register_model(ModelSpec("small_cnn", 28, 1, (0.5,), (0.5,), SmallCNN.feature_dim, False, 56))
def _small_cnn(pretrained: bool, weights: str | Path | None) -> nn.Module:
    return small_cnn_backbone(pretrained, weights)


# TF-style normalisation (mean = std = 0.5, i.e. pixels to [-1, 1]): what these weights
# were trained with; ImageNet mean/std measurably hurt (top-1 0.63 vs 0.72 on photos).
@register_model(ModelSpec("efficientnet_lite0", 224, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), LITE0_FEATURES, True, 448))
def _efficientnet_lite0(pretrained: bool, weights: str | Path | None) -> nn.Module:
    return Lite0Features(pretrained, weights)


@register_model(ModelSpec("resnet18", 224, 3, IMAGENET_MEAN, IMAGENET_STD, RESNET_FEATURES["resnet18"], True, 448))
def _resnet18(pretrained: bool, weights: str | Path | None) -> nn.Module:
    return ResNetFeatures("resnet18", pretrained, weights)


@register_model(ModelSpec("resnet50", 224, 3, IMAGENET_MEAN, IMAGENET_STD, RESNET_FEATURES["resnet50"], True, 448))
def _resnet50(pretrained: bool, weights: str | Path | None) -> nn.Module:
    return ResNetFeatures("resnet50", pretrained, weights)


assert tuple(list_models()) == choices.BACKBONES, "choices.BACKBONES must list the registered backbones"
