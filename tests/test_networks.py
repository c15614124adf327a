"""The backbone registry, embedding shapes, heads, PCA initialisation, config round trips,
fingerprints, freezing, ResNet weights (offline and local) and transforms."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval_app.errors import ModelError, WeightsUnavailableError
from retrieval_app.networks import (
    DEFAULT_BACKBONE,
    EmbeddingNet,
    ModelSpec,
    create_model,
    freeze_backbone,
    init_linear_head_from_features,
    list_models,
    model_fingerprint,
    model_from_config,
    register_model,
)
from retrieval_app.networks import registry, weights as weights_module


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids contention with other processes on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def _anisotropic(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Features with clearly separated principal variances (so PCA is well defined)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -1, d)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return (torch.randn(n, d, generator=g) * scales) @ rotation.t() + 3.0


def _distances(x: torch.Tensor) -> torch.Tensor:
    """Exact pairwise distances (cdist's fast float32 path is off by ~0.03 at 0)."""
    return torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")


# ------------------------------------------------------------------ registry
def test_registry_lists_and_refuses_unknown_names():
    names = list_models()
    assert {"small_cnn", "efficientnet_lite0", "resnet18", "resnet50"} <= set(names)
    assert names == sorted(names) and DEFAULT_BACKBONE in names
    with pytest.raises(ModelError, match="unknown model 'vgg11'.*efficientnet_lite0.*small_cnn"):
        create_model("vgg11")
    with pytest.raises(ModelError, match="unknown head"):
        create_model("small_cnn", head="transformer")
    with pytest.raises(ModelError, match="positive integer"):
        create_model("small_cnn", dim=0)


def test_register_model_adds_a_backbone(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test
    spec = ModelSpec("test_tiny_linear", 8, 1, (0.5,), (0.5,), 5, False, 16)

    @register_model(spec)
    def _tiny(pretrained, weights):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))

    assert "test_tiny_linear" in list_models()
    net = create_model("test_tiny_linear", dim=3)
    assert net.spec == spec
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 3)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name, channels, size", [("small_cnn", 1, 28), ("efficientnet_lite0", 3, 96)])
def test_embedding_shapes_and_unit_norms(name, channels, size):
    net = create_model(name, dim=24).eval()
    x = torch.rand(3, channels, size, size)
    with torch.no_grad():
        out = net(x)
        raw = create_model(name, dim=24, normalize=False).eval()(x)
    assert out.shape == (3, 24) and net.embedding_dim == 24
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3), atol=1e-3)


def test_small_cnn_tutorial_network_on_greyscale_digits():
    net = create_model("small_cnn", dim=2, pretrained=True)  # no weights exist: ignored
    assert net.spec.input_size == 28 and net.spec.channels == 1 and not net.spec.pretrained_available
    assert net.spec.feature_dim == 256
    convs = [m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 64, (5, 5))]
    net.eval()
    with torch.no_grad():
        features = net.features(torch.rand(4, 1, 28, 28))
    assert features.shape == (4, 256)


def test_small_cnn_learns_to_separate_two_classes():
    """A few triplet steps on two synthetic classes move same-class pairs closer."""
    net = create_model("small_cnn", dim=8)
    g = torch.Generator().manual_seed(0)
    bright = torch.rand(8, 1, 28, 28, generator=g) * 0.5 + 0.5
    stripes = torch.zeros(8, 1, 28, 28)
    stripes[:, :, ::4] = 1.0
    stripes += 0.1 * torch.rand(8, 1, 28, 28, generator=g)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        a, b = net(bright), net(stripes)
        return F.triplet_margin_loss(a, a.roll(1, 0), b, margin=0.5) + F.triplet_margin_loss(b, b.roll(1, 0), a, margin=0.5)

    net.eval()
    with torch.no_grad():
        before = loss().item()
    net.train()
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        assert loss().item() < before * 0.5


def test_no_head_gives_pooled_features():
    net = create_model("small_cnn", head=None, normalize=True, dim=7).eval()
    assert net.head is None and net.embedding_dim == net.spec.feature_dim == 256
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(net(x), F.normalize(net.features(x), dim=1))
    assert net.config()["head"] is None


def test_mlp_head_and_embed_features():
    net = create_model("small_cnn", dim=16, head="mlp").eval()
    kinds = [type(m).__name__ for m in net.head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(net(x), net.embed_features(net.features(x)))
        assert net(x).shape == (3, 16)


# ------------------------------------------------------------------ config and fingerprint
@pytest.mark.parametrize("name, kwargs, shape", [
    ("small_cnn", {"dim": 8}, (2, 1, 28, 28)),
    ("small_cnn", {"head": "mlp", "dim": 5, "normalize": False}, (2, 1, 28, 28)),
    ("efficientnet_lite0", {"head": None}, (2, 3, 64, 64)),
])
def test_config_round_trip_reproduces_outputs(name, kwargs, shape):
    net = create_model(name, **kwargs).eval()
    config = json.loads(json.dumps(net.config()))  # as a checkpoint stores it
    assert config == net.config()
    clone = model_from_config(config)
    x = torch.rand(*shape)
    with torch.no_grad():
        assert not torch.allclose(clone.eval()(x), net(x))  # untrained before loading
        clone.load_state_dict(net.state_dict())
        assert torch.equal(clone.eval()(x), net(x))
    assert clone.config() == net.config()
    with pytest.raises(ModelError, match="lacks 'dim'"):
        model_from_config({k: v for k, v in config.items() if k != "dim"})


def test_fingerprint_follows_every_weight_and_buffer():
    net = create_model("small_cnn", dim=8)
    clone = model_from_config(net.config())
    clone.load_state_dict(net.state_dict())
    assert model_fingerprint(net) == model_fingerprint(clone)
    assert all(c in "0123456789abcdef" for c in model_fingerprint(net))
    with torch.no_grad():
        clone.head.weight[0, 0] += 1e-6
    assert model_fingerprint(net) != model_fingerprint(clone)
    assert model_fingerprint(net, part="backbone") == model_fingerprint(clone, part="backbone")
    with torch.no_grad():
        clone.backbone.fc[1].weight.fill_(0.3)  # the PReLU slope
    assert model_fingerprint(net, part="backbone") != model_fingerprint(clone, part="backbone")
    # Same weights, different architecture config: different fingerprint.
    unnormalised = create_model("small_cnn", dim=8, normalize=False)
    unnormalised.load_state_dict(net.state_dict())
    assert model_fingerprint(net) != model_fingerprint(unnormalised)


def test_fingerprint_sees_batchnorm_statistics_not_memory_layout():
    net = create_model("efficientnet_lite0", head=None, pretrained=False)
    before = model_fingerprint(net)
    assert model_fingerprint(net.to(memory_format=torch.channels_last)) == before
    net.backbone.net.stem[1].running_mean.add_(1e-3)
    assert model_fingerprint(net) != before


# ------------------------------------------------------------------ PCA head
def test_pca_head_with_full_dim_preserves_distances():
    features = _anisotropic(300, 256)
    net = create_model("small_cnn", dim=256, normalize=False)
    init_linear_head_from_features(net, features)
    w = net.head.weight.detach()
    assert torch.allclose(w @ w.t(), torch.eye(256), atol=1e-5)  # orthonormal rows
    with torch.no_grad():
        y = net.embed_features(features)
    assert torch.allclose(y.mean(0), torch.zeros(256), atol=1e-4)  # centred
    x, y = features[:40], y[:40]
    assert torch.allclose(_distances(x), _distances(y), atol=1e-3)


def test_pca_head_with_fewer_dims_equals_sklearn_pca():
    from sklearn.decomposition import PCA

    features = _anisotropic(300, 256, seed=1)
    net = create_model("small_cnn", dim=6, normalize=False)
    init_linear_head_from_features(net, features)
    with torch.no_grad():
        ours = net.embed_features(features).numpy()
    reference = PCA(n_components=6).fit_transform(features.double().numpy())
    for column in range(6):  # equal up to the sign of each component
        a, b = ours[:, column], reference[:, column]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-3 * np.abs(b).max()


def test_pca_head_completes_directions_when_data_is_scarce():
    few = _anisotropic(5, 256)  # rank ≤ 4 after centring, 32 rows wanted
    net = create_model("small_cnn", dim=32, normalize=False)
    init_linear_head_from_features(net, few)
    w = net.head.weight.detach()
    assert torch.allclose(w @ w.t(), torch.eye(32), atol=1e-5)
    with torch.no_grad():
        y = net.embed_features(few)
    assert torch.allclose(_distances(few), _distances(y), atol=1e-3)  # data lies in the top rows

    wide = create_model("small_cnn", dim=300, normalize=False)  # more dims than features
    init_linear_head_from_features(wide, _anisotropic(400, 256))
    x = _anisotropic(10, 256, seed=3)
    with torch.no_grad():
        z = wide.embed_features(x)
    assert z.shape == (10, 300)
    assert torch.allclose(_distances(x), _distances(z), atol=1e-3)


def test_pca_head_needs_a_linear_head_and_matching_features():
    with pytest.raises(ModelError, match="linear head"):
        init_linear_head_from_features(create_model("small_cnn", head="mlp"), torch.randn(10, 256))
    with pytest.raises(ModelError, match="shape"):
        init_linear_head_from_features(create_model("small_cnn"), torch.randn(10, 100))


# ------------------------------------------------------------------ freezing
def test_frozen_backbone_keeps_weights_and_batchnorm_statistics():
    net = create_model("efficientnet_lite0", head="linear", dim=8, pretrained=False)
    freeze_backbone(net)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert net.training and net.head.training and not net.backbone.training
    before = model_fingerprint(net, part="backbone")
    net(torch.rand(2, 3, 64, 64)).sum().backward()
    assert model_fingerprint(net, part="backbone") == before
    freeze_backbone(net, False)
    assert net.backbone.training and all(p.requires_grad for p in net.backbone.parameters())
    net(torch.rand(2, 3, 64, 64))
    assert model_fingerprint(net, part="backbone") != before  # running stats move again


# ------------------------------------------------------------------ weights
def test_resnet_offline_gives_an_actionable_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download
    monkeypatch.setattr(weights_module, "DOWNLOAD_PROBE_TIMEOUT_S", 3.0)
    try:
        create_model("resnet18")
    except WeightsUnavailableError as exc:
        message = str(exc)
    else:
        pytest.skip("ResNet-18 weights could be downloaded here (online)")
    assert "could not download ResNet-18 ImageNet weights" in message and "offline?" in message
    assert "weights=FILE" in message and "efficientnet_lite0" in message
    assert "\n" not in message


def test_resnet_loads_a_local_weights_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    net = create_model("resnet18", weights=tmp_path / "r18.pth", head=None, normalize=False).eval()
    assert net.embedding_dim == 512
    reference.fc = torch.nn.Identity()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), atol=1e-5)

    fine_tuned = torchvision.models.resnet18(weights=None, num_classes=10)  # other classifier: unused
    torch.save({"state_dict": fine_tuned.state_dict()}, tmp_path / "wrapped.pth")
    create_model("resnet18", weights=tmp_path / "wrapped.pth")
    with pytest.raises(WeightsUnavailableError, match="do not fit ResNet-50"):
        create_model("resnet50", weights=tmp_path / "r18.pth")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_model("resnet18", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsUnavailableError, match="cannot read"):
        create_model("resnet18", weights=tmp_path / "junk.pth")


def test_small_cnn_loads_a_local_weights_file(tmp_path):
    trained = create_model("small_cnn", dim=4)
    torch.save(trained.backbone.state_dict(), tmp_path / "cnn.pth")
    loaded = create_model("small_cnn", dim=4, weights=tmp_path / "cnn.pth")
    assert model_fingerprint(loaded, part="backbone") == model_fingerprint(trained, part="backbone")


# ------------------------------------------------------------------ transforms
def test_photo_transforms_from_rgb_and_greyscale():
    lite = create_model("efficientnet_lite0", pretrained=False)
    red = Image.new("RGB", (300, 200), (255, 0, 0))
    out = lite.eval_transform()(red)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(224, 224)) and torch.allclose(out[1], -torch.ones(224, 224))  # mean = std = 0.5
    grey = Image.new("L", (50, 80), 128)
    out = lite.eval_transform()(grey)
    assert out.shape == (3, 224, 224) and torch.equal(out[0], out[2])
    for image in (red, grey, Image.new("RGBA", (64, 64)), Image.new("P", (64, 64))):
        augmented = lite.train_transform()(image)
        assert augmented.shape == (3, 224, 224) and augmented.min() >= -1.0 and augmented.max() <= 1.0

    resnet_spec = create_model("resnet18", weights=None, pretrained=False).eval_transform()
    assert resnet_spec(red)[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)  # ImageNet norm


def test_small_cnn_transforms_make_28px_greyscale():
    cnn = create_model("small_cnn")
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    black = Image.new("L", (28, 28), 0)
    assert torch.allclose(cnn.eval_transform()(white), torch.ones(1, 28, 28))
    assert torch.allclose(cnn.eval_transform()(black), -torch.ones(1, 28, 28))
    assert cnn.train_transform()(white).shape == (1, 28, 28)
    assert cnn.train_transform()(black).shape == (1, 28, 28)


def test_transforms_pickle_for_dataloader_workers():
    for name in ("small_cnn", "efficientnet_lite0"):
        net = create_model(name, pretrained=False)
        for transform in (net.eval_transform(), net.train_transform()):
            copy = pickle.loads(pickle.dumps(transform))
            assert copy(Image.new("RGB", (32, 32))).shape[0] == net.spec.channels


def test_embedding_net_is_an_nn_module_with_a_readable_repr():
    net = create_model("small_cnn", dim=3)
    assert isinstance(net, EmbeddingNet) and isinstance(net, torch.nn.Module)
    assert "name='small_cnn'" in repr(net) and "dim=3" in repr(net)
