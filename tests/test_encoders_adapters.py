"""timm / torchvision adapters against the libraries themselves, and the built-in architectures against them.

The reference is the library's own model on hand-normalized input with the same weights. Run for real when
timm and torchvision are installed (marked ``adapters``); skipped, saying why, only when they are absent.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from robustssl import encoders
from robustssl.encoders import IMAGENET_MEAN, IMAGENET_STD, create, load_into, load_with_report

pytestmark = [
    pytest.mark.adapters,
    pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("timm", "torchvision")),
                       reason="timm/torchvision not installed: pip install -c constraints.txt '.[timm]'"),
]


def normalized(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_import_torchvision_defines_only_what_is_missing():
    """After the workaround torchvision and timm import; the nms schema exists either from torchvision's own C
    extension or from the fallback, and the fallback is used only when the extension did not load."""
    from robustssl.encoders import adapters

    tv = encoders.import_torchvision()
    assert encoders.import_torchvision() is tv and encoders.import_timm().__name__ == "timm"
    assert hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")
    assert bool(adapters._fallback_library) == (not tv.extension._has_ops())
    assert tv.models.resnet18(weights=None).fc.in_features == 512


def test_timm_cnn_matches_timm():
    timm = encoders.import_timm()
    torch.manual_seed(0)
    enc = create("timm:resnet10t").eval()
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    ref.load_state_dict(enc.model.state_dict())
    cfg = ref.pretrained_cfg
    x = images(64)
    with torch.no_grad():
        assert torch.allclose(enc.embed(x), ref(normalized(x, cfg["mean"], cfg["std"])), atol=1e-5)
        assert torch.allclose(enc.dense(x), ref.forward_features(normalized(x, cfg["mean"], cfg["std"])),
                              atol=1e-5)
    assert (enc.embed_dim, enc.dense_dim, enc.stride) == (512, 512, 32)


def test_timm_vit_tokens_become_the_dense_map():
    timm = encoders.import_timm()
    enc = create("timm:vit_tiny_patch16_224", img_size=32).eval()
    cfg = enc.model.pretrained_cfg
    x = images(32)
    with torch.no_grad():
        tokens = enc.model.forward_features(normalized(x, cfg["mean"], cfg["std"]))
        dense = enc.dense(x)
        assert torch.allclose(enc.embed(x), tokens[:, 0], atol=1e-5)  # CLS pooling after the final norm
    assert tokens.shape == (2, 1 + 4, 192)
    assert torch.equal(dense, tokens[:, 1:].transpose(1, 2).reshape(2, 192, 2, 2))
    assert (enc.normalize.mean.flatten().tolist(), enc.stride) == ([0.5, 0.5, 0.5], 16)
    assert timm.is_model("vit_tiny_patch16_224")


def test_timm_errors():
    with pytest.raises(ValueError, match="would download weights"):
        create("timm:resnet10t", pretrained=True)
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'.*resnet10t"):
        create("timm:resnet10x")
    assert "timm:resnet10t" in encoders.names("timm:resnet10*")


def test_torchvision_resnet18_matches_torchvision():
    tv = encoders.import_torchvision()
    torch.manual_seed(0)
    enc = create("torchvision:resnet18").eval()
    ref = tv.models.resnet18(weights=None).eval()
    ref.fc = nn.Identity()
    ref.load_state_dict(enc.model.state_dict())
    x = images(64)
    xn = normalized(x, IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        assert torch.allclose(enc.embed(x), ref(xn), atol=1e-5)
        stem = ref.maxpool(ref.relu(ref.bn1(ref.conv1(xn))))
        by_hand = ref.layer4(ref.layer3(ref.layer2(ref.layer1(stem))))
        assert torch.allclose(enc.dense(x), by_hand, atol=1e-5)
    assert (enc.embed_dim, enc.dense_dim, enc.stride) == (512, 512, 32)
    assert "torchvision:resnet18" in encoders.names("torchvision:resnet*")


def test_torchvision_families_and_errors():
    mobilenet = create("torchvision:mobilenet_v3_small").eval()
    # embed is the 1024-d pre-logits layer, dense the 576-channel last feature map (probed, not tabulated).
    assert (mobilenet.embed_dim, mobilenet.dense_dim, mobilenet.stride) == (1024, 576, 32)
    vit = create("torchvision:vit_b_16", image_size=32).eval()
    with torch.no_grad():
        assert vit.dense(images(32)).shape == (2, 768, 2, 2)
    squeeze = create("torchvision:shufflenet_v2_x0_5").eval()
    with torch.no_grad():
        assert squeeze.embed(images(64)).shape == (2, 1024)
    with pytest.raises(NotImplementedError, match="not available for torchvision ShuffleNetV2"):
        squeeze.dense(images(64))
    with pytest.raises(ValueError, match="would download weights"):
        create("torchvision:resnet18", weights="DEFAULT")
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet19'"):
        create("torchvision:resnet19")


@pytest.mark.parametrize("name, depths", [("resnet18_cifar", "resnet18"), ("resnet50_cifar", "resnet50")])
def test_cifar_resnets_equal_torchvision_with_a_cifar_stem(name, depths):
    """Reference: torchvision's ResNet with the CIFAR stem swap (3x3 stride-1 conv1, no max-pool), as
    solo-learn builds it; its state dict (fc dropped) loads unchanged and gives the same embedding."""
    tv = encoders.import_torchvision()
    torch.manual_seed(0)
    ref = getattr(tv.models, depths)(weights=None)
    ref.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.maxpool, ref.fc = nn.Identity(), nn.Identity()
    ref.eval()
    enc = create(name).eval()
    report = load_into(enc, {"state_dict": {f"backbone.{k}": v for k, v in ref.state_dict().items()}},
                       strict=True)
    assert not report.missing and not report.unexpected
    x = images(16)
    with torch.no_grad():
        assert torch.allclose(enc.embed(x), ref(enc.normalize(x)), atol=1e-5)


def test_vit_equals_timm_vision_transformer_at_any_size():
    """Our ViT with timm's weights reproduces timm's ViT, also when the position embeddings are resampled."""
    timm = encoders.import_timm()
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=2,
                            dynamic_img_size=True).eval()
    enc = create("vit_tiny", img_size=32, patch_size=16, depth=2).eval()
    report = load_into(enc, ref.state_dict(), strict=True)
    assert not report.missing and not report.unexpected
    for shape in ((2, 3, 32, 32), (1, 3, 64, 48)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = ref.forward_features(normalized(x, IMAGENET_MEAN, IMAGENET_STD))
            assert torch.allclose(enc.tokens(x), expected, atol=1e-5)


def test_raw_timm_checkpoint_loads_into_the_timm_adapter(tmp_path):
    """A timm state dict (with its classifier) maps onto ``timm:`` encoders, whose keys sit under model."""
    timm = encoders.import_timm()
    torch.manual_seed(0)
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    torch.save(ref.state_dict(), tmp_path / "resnet10t.pth")
    enc, report = load_with_report(tmp_path / "resnet10t.pth", name="timm:resnet10t", strict=True)
    assert report.dropped == ["fc.weight", "fc.bias"] and not report.missing
    ref.reset_classifier(0)
    x = images(64)
    with torch.no_grad():
        cfg = ref.pretrained_cfg
        assert torch.allclose(enc.embed(x), ref(normalized(x, cfg["mean"], cfg["std"])), atol=1e-5)


def test_adapter_checkpoint_round_trip(tmp_path):
    enc = create("timm:vit_tiny_patch16_224", img_size=32, depth=1).eval()
    back = encoders.load(encoders.save(enc, tmp_path / "timm_vit"))
    assert back.name == "timm:vit_tiny_patch16_224" and back.config == {"img_size": 32, "depth": 1}
    x = images(32)
    with torch.no_grad():
        assert torch.equal(back.embed(x), enc.embed(x))
