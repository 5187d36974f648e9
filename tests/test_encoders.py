"""The Encoder contract, for every registered encoder and every adapter kind.

Each check is an invariant or a before/after comparison: shapes from the declared dims and stride, the
normalization applied inside (embed(x) == inner network on hand-normalized x), gradients reaching the input,
eval determinism and batch independence, rejected inputs.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from robustssl import encoders
from robustssl.encoders import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    bn_branch,
    create,
    from_module,
    get_bn_branch,
    set_bn_branch,
)
from robustssl.registry import UnknownNameError
from robustssl.runtime import input_checks

HAS_TIMM = all(importlib.util.find_spec(m) is not None for m in ("timm", "torchvision"))
needs_timm = [pytest.mark.adapters,
              pytest.mark.skipif(not HAS_TIMM, reason="timm/torchvision not installed (pip install .[timm])")]

# (name, constructor kwargs, input size). Built-ins run at their default configuration.
# Built-ins at 16x16 keep the suite fast; patch-16 ViTs then see one patch (resampled position embedding).
BUILTIN_CASES = [pytest.param(name, {}, 16, id=name) for name in encoders.names()]
ADAPTER_CASES = [
    pytest.param("timm:resnet10t", {}, 64, id="timm:resnet10t", marks=needs_timm),
    pytest.param("timm:vit_tiny_patch16_224", {"img_size": 32}, 32, id="timm:vit_tiny", marks=needs_timm),
    pytest.param("torchvision:resnet18", {}, 64, id="torchvision:resnet18", marks=needs_timm),
]
CASES = BUILTIN_CASES + ADAPTER_CASES
_cache: dict[str, encoders.Encoder] = {}


def build(name: str, kwargs: dict) -> encoders.Encoder:
    """One shared instance per case (tests that change an encoder build their own)."""
    key = f"{name}{sorted(kwargs.items())}"
    if key not in _cache:
        torch.manual_seed(0)
        _cache[key] = create(name, **kwargs)
    return _cache[key].eval()


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_builtins_are_registered():
    expected = {"resnet18_cifar", "resnet50_cifar", "convnet_small", "vit_tiny", "vit_small"}
    assert set(encoders.names()) >= expected
    assert encoders.names("resnet*") == ["resnet18_cifar", "resnet50_cifar"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError, match="resnet18_cifar") as exc:
        create("resnet18_cifr")
    assert "Did you mean 'resnet18_cifar'" in str(exc.value)


def test_register_rejects_adapter_prefix():
    with pytest.raises(ValueError, match="adapter prefix"):
        encoders.register("timm:mine")


@pytest.mark.parametrize("name, kwargs, size", CASES)
def test_shapes_and_attributes(name, kwargs, size):
    enc = build(name, kwargs)
    x = images(size)
    with torch.no_grad():
        emb, dense = enc.embed(x), enc.dense(x)
    assert emb.shape == (2, enc.embed_dim)
    assert dense.shape == (2, enc.dense_dim, size // enc.stride, size // enc.stride)
    assert enc.name == name and enc.config == kwargs
    assert torch.isfinite(emb).all() and torch.isfinite(dense).all()
    with torch.no_grad():
        assert torch.equal(enc(x), emb)


@pytest.mark.parametrize("name, kwargs, size", CASES)
def test_normalization_is_inside(name, kwargs, size):
    enc = build(name, kwargs)
    x = images(size)
    mean, std = enc.normalize.mean, enc.normalize.std
    assert not enc.normalize.identity and not torch.allclose(std, torch.ones_like(std))
    by_hand = (x - mean) / std
    with torch.no_grad():
        assert torch.allclose(enc.embed(x), enc._embed(by_hand), atol=1e-5)
        assert torch.allclose(enc.dense(x), enc._dense(by_hand), atol=1e-5)


@pytest.mark.parametrize("name, expected", [("resnet18_cifar", CIFAR10_MEAN + CIFAR10_STD),
                                            ("convnet_small", CIFAR10_MEAN + CIFAR10_STD),
                                            ("vit_tiny", IMAGENET_MEAN + IMAGENET_STD)])
def test_documented_statistics(name, expected):
    enc = build(name, {})
    got = tuple(enc.normalize.mean.flatten().tolist() + enc.normalize.std.flatten().tolist())
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("name", ["convnet_small", "resnet18_cifar", "vit_tiny"])
def test_custom_statistics_equal_identity_encoder_on_normalized_input(name):
    """Same weights: an encoder normalizing with (m, s) on x == an unnormalizing one on (x - m) / s."""
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    torch.manual_seed(1)
    custom = create(name, mean=mean, std=std).eval()
    plain = create(name, mean=None, std=None).eval()
    plain.load_state_dict(custom.state_dict())
    x = images(32)
    by_hand = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad(), input_checks(False):
        assert torch.allclose(custom.embed(x), plain.embed(by_hand), atol=1e-5)


@pytest.mark.parametrize("name, kwargs, size", CASES)
def test_gradient_reaches_input(name, kwargs, size):
    enc = build(name, kwargs)
    for fn in (enc.embed, enc.dense):
        x = images(size).requires_grad_(True)
        fn(x).square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name, kwargs, size", CASES)
def test_eval_is_deterministic_batch_independent_and_stateless(name, kwargs, size):
    enc = build(name, kwargs)
    x = images(size, batch=3)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        a, b = enc.embed(x), enc.embed(x)
        single = enc.embed(x[1:2])
    assert torch.equal(a, b)
    assert torch.allclose(single, a[1:2], atol=1e-4)
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name, kwargs, size", CASES)
def test_rebuild_from_name_and_config(name, kwargs, size):
    enc = build(name, kwargs)
    again = create(enc.name, **enc.config)
    shapes = lambda e: {k: v.shape for k, v in e.state_dict().items()}  # noqa: E731
    assert shapes(again) == shapes(enc)


@pytest.mark.parametrize("name, kwargs, size", CASES)
@pytest.mark.parametrize("bad, message", [
    (lambda s: torch.rand(2, 1, s, s), r"3 channels .* got shape \(2, 1,"),
    (lambda s: torch.rand(3, s, s), r"\(B, C, H, W\), got shape \(3,"),
    (lambda s: torch.full((2, 3, s, s), 1.5), r"\[0, 1\], got range \[1\.5, 1\.5\]"),
    (lambda s: torch.full((2, 3, s, s), -0.25), r"\[0, 1\], got range \[-0\.25, -0\.25\]"),
    (lambda s: torch.full((1, 3, s, s), float("nan")), "NaN"),
    (lambda s: (torch.rand(2, 3, s, s) * 255).to(torch.uint8), "dtype torch.uint8"),
])
def test_bad_input_is_rejected(name, kwargs, size, bad, message):
    enc = build(name, kwargs)
    x = bad(size)
    with pytest.raises(ValueError, match=message):
        enc.embed(x)
    with pytest.raises(ValueError, match=message):
        enc.dense(x)


def test_bad_statistics_are_rejected():
    with pytest.raises(ValueError, match="1 or 3 values each, got mean=\\(0.5, 0.5\\)"):
        create("convnet_small", mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ValueError, match="std must be positive"):
        create("convnet_small", mean=(0.5, 0.5, 0.5), std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="both mean and std"):
        create("convnet_small", mean=None)


def test_input_checks_can_be_switched_off():
    enc = build("convnet_small", {})
    x = images(32) * 2
    with input_checks(False), torch.no_grad():
        assert enc.embed(x).shape == (2, 256)


# --- ResNets -----------------------------------------------------------------------------------------
def test_cifar_resnet_stem_keeps_resolution_until_layer2():
    enc = build("resnet18_cifar", {})
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in enc.modules())
    x = images(32)
    with torch.no_grad():
        stem = enc.layer1(enc.relu(enc.bn1(enc.conv1(enc.normalize(x)))))
    assert stem.shape[-2:] == (32, 32)


def test_resnet_parameter_counts_match_the_standard_architectures():
    # torchvision resnet18 has 11,689,512 parameters: 11,689,512 - fc (513,000) - 7x7 stem (9,408) + 3x3 stem
    # (1,728) = 11,168,832 for the CIFAR variant; resnet50: 25,557,032 - 2,049,000 - 9,408 + 1,728.
    count = lambda e: sum(p.numel() for p in e.parameters())  # noqa: E731
    assert count(build("resnet18_cifar", {})) == 11_168_832
    assert count(build("resnet50_cifar", {})) == 25_557_032 - 2_049_000 - 9_408 + 1_728
    # width w: 3x3 convs after the stem hold 2724 w^2 weights, the stem 27 w, batch norm 2 x 75 w (the 64-wide
    # count above is 2724 * 64^2 + 177 * 64)
    assert count(build("resnet18_cifar", {"width": 16})) == 2724 * 16**2 + 177 * 16
    assert create("resnet18_cifar", width=16).embed_dim == 128
    with pytest.raises(ValueError, match="width"):
        create("resnet18_cifar", width=0)


def test_zero_init_residual_makes_blocks_identity():
    enc = create("resnet18_cifar", zero_init_residual=True)
    assert all(int(torch.count_nonzero(b.bn2.weight)) == 0 for b in enc.layer1)
    assert int(torch.count_nonzero(enc.bn1.weight)) == 64


def test_bad_resnet_layers():
    from robustssl.encoders.resnet import BasicBlock, CifarResNet

    with pytest.raises(ValueError, match="4 positive block counts"):
        CifarResNet(BasicBlock, (2, 2, 2))


# --- dual batch norm ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18_cifar", "convnet_small"])
def test_dual_bn_branches_keep_separate_statistics(name):
    enc = create(name, dual_bn=True)
    assert get_bn_branch(enc) == "clean"
    first = next(m for m in enc.modules() if isinstance(m, encoders.DualBatchNorm2d))
    clean_before, adv_before = first.clean.running_mean.clone(), first.adv.running_mean.clone()
    enc.train()
    with bn_branch(enc, "adv"):
        assert get_bn_branch(enc) == "adv"
        enc.embed(images(32, batch=4))
    assert get_bn_branch(enc) == "clean"  # restored
    assert torch.equal(first.clean.running_mean, clean_before)
    assert not torch.equal(first.adv.running_mean, adv_before)
    enc.eval()
    x = images(32, seed=3)
    with torch.no_grad():
        clean = enc.embed(x)
        with bn_branch(enc, "adv"):
            adv = enc.embed(x)
    assert not torch.allclose(clean, adv)


def test_dual_bn_branch_restored_after_error_and_validated():
    enc = create("convnet_small", dual_bn=True)
    with pytest.raises(RuntimeError, match="boom"), bn_branch(enc, "adv"):
        raise RuntimeError("boom")
    assert get_bn_branch(enc) == "clean"
    with pytest.raises(ValueError, match="accepted: clean, adv"):
        set_bn_branch(enc, "adversarial")
    with pytest.raises(ValueError, match="no dual batch-norm layers"):
        set_bn_branch(create("convnet_small"), "adv")


# --- ConvNet ------------------------------------------------------------------------------------------
def test_convnet_small_options():
    enc = create("convnet_small", widths=(8, 16), strides=(2, 2))
    assert (enc.embed_dim, enc.stride) == (16, 4)
    assert enc.dense(images(32)).shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match="strides=\\[1, 3\\]"):
        create("convnet_small", widths=(8, 16), strides=(1, 3))
    with pytest.raises(ValueError, match="equal length"):
        create("convnet_small", widths=(8, 16), strides=(1,))


# --- ViT ----------------------------------------------------------------------------------------------
def small_vit(**kw):
    torch.manual_seed(0)
    return create("vit_tiny", **{"img_size": 32, "patch_size": 8, "depth": 2, **kw}).eval()


def test_vit_options_and_stride():
    enc = small_vit()
    assert (enc.embed_dim, enc.dense_dim, enc.stride, enc.num_patches) == (192, 192, 8, 16)
    assert enc.dense(images(32)).shape == (2, 192, 4, 4)
    assert create("vit_small", depth=1).embed_dim == 384
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create("vit_tiny", img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        create("vit_tiny", embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="accepted: cls, mean"):
        create("vit_tiny", pool="max")


def test_vit_tokens_layout():
    enc = small_vit()
    x = images(32)
    with torch.no_grad():
        tokens = enc.tokens(x)
        assert tokens.shape == (2, 1 + 16, 192)
        assert torch.equal(enc.embed(x), tokens[:, 0])
        assert torch.equal(enc.dense(x), tokens[:, 1:].transpose(1, 2).reshape(2, 192, 4, 4))
        assert torch.allclose(small_vit(pool="mean").embed(x), tokens[:, 1:].mean(1), atol=1e-6)


def test_vit_keep_is_permutation_equivariant():
    """Attention is permutation-equivariant once positions are added, so running patches in the order of
    ``keep`` permutes the output tokens and leaves CLS unchanged."""
    enc = small_vit()
    x = images(32)
    perm = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    with torch.no_grad():
        full, kept = enc.tokens(x), enc.tokens(x, keep=perm)
    assert torch.allclose(kept[:, 0], full[:, 0], atol=1e-5)
    assert torch.allclose(kept[:, 1:], torch.stack([full[i, 1:][perm[i]] for i in range(2)]), atol=1e-5)
    subset = enc.tokens(x, keep=perm[:, :4])
    assert subset.shape == (2, 5, 192)
    with pytest.raises(ValueError, match="lie in \\[0, 15\\]"):
        enc.tokens(x, keep=torch.full((2, 3), 16))
    with pytest.raises(ValueError, match="\\(2, K\\) integer tensor"):
        enc.tokens(x, keep=torch.zeros(3, 2, dtype=torch.long))


def test_vit_other_input_sizes_resample_position_embeddings():
    enc = small_vit()
    with torch.no_grad():
        assert enc.dense(images(48)).shape == (2, 192, 6, 6)
        assert enc.dense(torch.rand(1, 3, 64, 32)).shape == (1, 192, 8, 4)
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 8"):
        enc.embed(images(36))


def test_resample_pos_embed_preserves_constants_and_identity():
    from robustssl.encoders.vit import resample_pos_embed

    pos = torch.randn(1, 1 + 16, 5)
    assert resample_pos_embed(pos, (4, 4), (4, 4)) is pos
    const = torch.cat([torch.randn(1, 1, 5), torch.full((1, 16, 5), 0.7)], dim=1)
    out = resample_pos_embed(const, (4, 4), (6, 3))
    assert out.shape == (1, 1 + 18, 5)
    assert torch.equal(out[:, :1], const[:, :1])
    assert torch.allclose(out[:, 1:], torch.full((1, 18, 5), 0.7), atol=1e-5)


# --- from_module --------------------------------------------------------------------------------------
def test_from_module_wraps_any_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1))
    enc = from_module(net, lambda m, x: m(x).mean((2, 3)), lambda m, x: m(x), mean=(0.5, 0.5, 0.5),
                      std=(0.25, 0.25, 0.25))
    assert (enc.embed_dim, enc.dense_dim, enc.stride) == (12, 12, 4)
    x = images(32)
    with torch.no_grad():
        assert torch.allclose(enc.embed(x), net((x - 0.5) / 0.25).mean((2, 3)), atol=1e-6)
        assert enc.dense(x).shape == (2, 12, 8, 8)
    x.requires_grad_(True)
    enc.embed(x).sum().backward()
    assert x.grad.abs().sum() > 0
    bn_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    bn_net.eval()
    stats = bn_net[1].running_mean.clone()
    wrapped = from_module(bn_net, lambda m, x: m(x), mean=None, std=None)
    # Probing the dims updated no statistics and left the module in the mode it was given in.
    assert torch.equal(bn_net[1].running_mean, stats) and not bn_net.training and not wrapped.training
    embed_only = from_module(net, lambda m, x: m(x).flatten(1), mean=None, std=None)
    with pytest.raises(NotImplementedError, match="no dense_fn"):
        embed_only.dense(images(32))
    with pytest.raises(TypeError, match="nn.Module"):
        from_module(lambda x: x, lambda m, x: x, mean=None, std=None)
    with pytest.raises(ValueError, match="must return \\(B, D\\)"):
        from_module(net, lambda m, x: m(x), mean=None, std=None)
