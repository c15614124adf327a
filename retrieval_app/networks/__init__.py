"""Embedding networks: a registry of backbones, heads and their transforms.

    net = create_model("efficientnet_lite0", dim=128)   # ImageNet backbone + linear head
    emb = net(batch)                                     # (B, 128), L2-normalised
"""

from .embedding_net import EmbeddingNet, ModelSpec, freeze_backbone, init_linear_head_from_features, model_fingerprint
from .registry import DEFAULT_BACKBONE, create_model, get_spec, list_models, model_from_config, register_model

__all__ = [
    "DEFAULT_BACKBONE",
    "EmbeddingNet",
    "ModelSpec",
    "create_model",
    "freeze_backbone",
    "get_spec",
    "init_linear_head_from_features",
    "list_models",
    "model_fingerprint",
    "model_from_config",
    "register_model",
]
