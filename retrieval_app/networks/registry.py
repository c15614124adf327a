"""A timm-style registry: `create_model("name", dim=...)` builds an `EmbeddingNet`."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ModelError
from .backbones import LITE0_FEATURES, RESNET_FEATURES, Lite0Features, ResNetFeatures, SmallCNN
from .embedding_net import EmbeddingNet, ModelSpec, make_head

DEFAULT_BACKBONE = "efficientnet_lite0"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name → (spec, backbone factory(pretrained, weights))
_REGISTRY: dict[str, tuple[ModelSpec, Callable[..., Any]]] = {}


def register_model(spec: ModelSpec):
    def decorator(factory):
        _REGISTRY[spec.name] = (spec, factory)
        return factory

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model '{name}' (choose from {', '.join(list_models())})")
    return _REGISTRY[name][0]


def create_model(name: str, *, dim: int = 128, normalize: bool = True, pretrained: bool = True, weights=None, head: str | None = "linear") -> EmbeddingNet:
    spec = get_spec(name)
    backbone = _REGISTRY[name][1](pretrained=pretrained and spec.pretrained_available, weights=weights)
    return EmbeddingNet(spec, backbone, make_head(head, spec.feature_dim, dim), head_kind=head, dim=dim, normalize=normalize)


def model_from_config(config: dict[str, Any]) -> EmbeddingNet:
    """The architecture a checkpoint describes, without downloading anything."""
    try:
        return create_model(config["name"], dim=config["dim"], normalize=config["normalize"], pretrained=False, head=config["head"])
    except KeyError as exc:
        raise ModelError(f"model config lacks {exc}") from None


@register_model(ModelSpec("small_cnn", 28, 1, (0.5,), (0.5,), SmallCNN.feature_dim, False, 56))
def _small_cnn(pretrained: bool, weights):
    return SmallCNN()


# TF-style normalisation (mean = std = 0.5): what these weights were trained with.
@register_model(ModelSpec("efficientnet_lite0", 224, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), LITE0_FEATURES, True, 448))
def _lite0(pretrained: bool, weights):
    return Lite0Features(pretrained, weights)


@register_model(ModelSpec("resnet18", 224, 3, IMAGENET_MEAN, IMAGENET_STD, RESNET_FEATURES["resnet18"], True, 448))
def _resnet18(pretrained: bool, weights):
    return ResNetFeatures("resnet18", pretrained, weights)


@register_model(ModelSpec("resnet50", 224, 3, IMAGENET_MEAN, IMAGENET_STD, RESNET_FEATURES["resnet50"], True, 448))
def _resnet50(pretrained: bool, weights):
    return ResNetFeatures("resnet50", pretrained, weights)
