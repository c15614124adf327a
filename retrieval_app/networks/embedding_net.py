"""An embedding network: backbone (images → pooled features) → head (→ `dim`) → L2 norm."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from . import transforms
from .heads import get_blend, set_blend


@dataclass(frozen=True)
class ModelSpec:
    """What a backbone expects and produces."""

    name: str
    input_size: int  # square side the transforms produce, e.g. 224 or 28
    channels: int  # 3 (RGB) or 1 (greyscale)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dim: int  # length of the pooled feature vector
    pretrained_available: bool
    # JPEGs are DCT-downscaled to about this long side while decoding (see data.decode):
    # about twice the input size leaves the resize some detail to work with.
    decode_max_side: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples, so a JSON round trip compares equal)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


class TrainingView(NamedTuple):
    """What `EmbeddingNet.training_view` gives: a batch of `inputs` rows is embedded as
    `embed(rows)`, after `prepare` when there is one; `prepare` takes a stack of batches
    (C, B, columns) and gives the C prepared batches. `embed_with_backward`, where the
    view has one, embeds without autograd and returns with the embeddings a function that
    sets the head's gradients from ∂loss/∂embeddings (a step in closed form, see
    training/head_loop.py)."""

    inputs: torch.Tensor
    prepare: Callable[[torch.Tensor], list[torch.Tensor]] | None
    embed: Callable[[torch.Tensor], torch.Tensor]
    embed_with_backward: Callable[[torch.Tensor], tuple[torch.Tensor, Callable[[torch.Tensor], None]]] | None = None


class EmbeddingNet(nn.Module):
    """`backbone` (images → (B, feature_dim)), optional `head` (→ (B, dim)), optional
    L2 normalisation. Build it with `create_model`, or `model_from_config` for a checkpoint."""

    def __init__(
        self,
        spec: ModelSpec,
        backbone: nn.Module,
        head: nn.Module | None,
        *,
        head_kind: str | None,
        dim: int,
        normalize: bool,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head
        self.head_kind = head_kind
        self.dim = dim if head is not None else spec.feature_dim
        self.normalize = normalize
        self.backbone_frozen = False
        self.class_gate: nn.Module | None = None  # see class_gate.py; None: the head's output alone

    def attach_class_gate(self, gate: nn.Module | None) -> "EmbeddingNet":
        """Append the class gate's part to every embedding (None removes it)."""
        self.class_gate = gate
        return self

    @property
    def embedding_dim(self) -> int:
        """Length of the vectors `forward` returns."""
        return self.dim + (self.class_gate.n_classes if self.class_gate is not None else 0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, feature_dim)."""
        return self.backbone(x)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Head and normalisation only: what quick mode trains on cached features."""
        out = features if self.head is None else self.head(features)
        if self.class_gate is not None:
            out = self.class_gate(features, out)
        return F.normalize(out, dim=1) if self.normalize else out

    def training_view(self, features: torch.Tensor, max_bytes: int, *, within_batch: bool = False) -> "TrainingView":
        """How to train the head on cached `features` in fewer operations: `embed` of
        `prepare` of a batch of `inputs` rows is an isometric image of `embed_features` of
        the same feature rows (same norms, inner products, Euclidean distances). A head
        without such a view (or whose view would need more than `max_bytes` of inputs)
        gives (features, no preparation, embed_features). Only losses on
        rotation-invariant distances may train on it. `within_batch`: the image need only
        be isometric among one batch's rows (the loss never compares rows of two batches),
        which is cheaper still; its per-batch `prepare` needs no gradient and no trained
        weight, so it can run ahead of the training step, for several batches at once."""
        head = self.head
        plain = TrainingView(features, None, self.embed_features, self._head_embed_with_backward())
        view_ok = getattr(head, "has_orthonormal_basis", None)
        if view_ok is None or not view_ok() or self.class_gate is not None:
            return plain
        extra = head.basis.shape[1] + features.shape[1]
        if features.shape[0] * extra * features.element_size() > max_bytes:
            return plain

        def embed(rows: torch.Tensor) -> torch.Tensor:
            return head.isometric_embed(rows, self.normalize)  # norms are kept: same as normalising y

        def embed_with_backward(rows: torch.Tensor):
            return head.isometric_embed_with_backward(rows, self.normalize)

        return TrainingView(head.isometric_inputs(features), head.batch_isometric_inputs if within_batch else None, embed, embed_with_backward)

    def _head_embed_with_backward(self) -> Callable | None:
        """`embed_features` in closed form (see `TrainingView`), for a head that writes
        one out (`embed_with_backward`), without a class gate."""
        method = getattr(self.head, "embed_with_backward", None)
        if method is None or self.class_gate is not None:
            return None
        return lambda rows: method(rows, self.normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → embeddings (B, embedding_dim)."""
        return self.embed_features(self.features(x))

    def train(self, mode: bool = True) -> "EmbeddingNet":
        """As `nn.Module.train`, except that a frozen backbone stays in eval mode, so its
        BatchNorm statistics stay as loaded (frozen means its outputs do not change)."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def eval_transform(self) -> Callable:
        """PIL image → normalised tensor (C, input_size, input_size), deterministic."""
        return transforms.eval_transform(self.spec)

    def train_transform(self) -> Callable:
        """PIL image → normalised tensor with light random augmentation."""
        return transforms.train_transform(self.spec)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description; `model_from_config` rebuilds the architecture."""
        return {
            "name": self.spec.name,
            "dim": self.dim,
            "normalize": self.normalize,
            "head": self.head_kind,
            "feature_dim": self.spec.feature_dim,
            "spec": self.spec.as_dict(),
            **({"class_gate": self.class_gate.config()} if self.class_gate is not None else {}),
        }

    @property
    def blend(self) -> float:
        """Where a blendable head sits between its start (0) and its trained weights (1)."""
        return get_blend(self.head)

    def set_blend(self, blend: float) -> "EmbeddingNet":
        set_blend(self.head, blend)
        return self

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, head={self.head_kind!r}, dim={self.dim}, normalize={self.normalize}"


def init_linear_head_from_features(net: EmbeddingNet, features: torch.Tensor) -> None:
    """Start `net`'s linear head as the PCA projection of `features` (see
    `heads.init_from_features`). Why: on held-out photo sets a randomly started MLP head
    trained with triplet loss lost 0.1–0.35 MAP@R on unseen classes, while linear maps
    started at the pretrained geometry kept the gain and held unseen classes."""
    from .heads import BlendableLinear, init_from_features

    if not isinstance(net.head, BlendableLinear) or net.head_kind != "linear":
        raise ModelError(f"PCA initialisation needs a linear head (this model has head={net.head_kind!r})")
    init_from_features(net.head, features)


def freeze_backbone(net: EmbeddingNet, frozen: bool = True) -> None:
    """Stop (or restart) training the backbone: no gradients, and while frozen it stays
    in eval mode so BatchNorm statistics do not drift either."""
    for parameter in net.backbone.parameters():
        parameter.requires_grad_(not frozen)
    net.backbone_frozen = frozen
    net.backbone.train(net.training and not frozen)


def model_fingerprint(net: nn.Module, *, part: str = "all") -> str:
    """Stable hex hash of the architecture config and every weight and buffer: equal
    for equal weights, different when any changes. `part="backbone"` hashes only what
    the pooled features depend on (so a feature cache survives head changes)."""
    if part not in ("all", "backbone"):
        raise ValueError(f"part must be 'all' or 'backbone', not {part!r}")
    config = net.config() if hasattr(net, "config") else {"class": type(net).__name__}
    module = net
    if part == "backbone":
        config = {"name": config.get("name"), "spec": config.get("spec")}
        module = net.backbone
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        # Raw bytes of any dtype (numpy has no bfloat16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]
