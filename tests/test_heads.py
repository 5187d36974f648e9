"""Heads: output shapes, hand-computed depth-bin outputs, the upsampling invariants, and ``build``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robustssl.encoders.base import Encoder
from robustssl.heads import (
    BIN_SPACINGS,
    DEPTH_MODES,
    TASKS,
    DepthHead,
    LinearClassifier,
    SegmentationHead,
    build,
    depth_bins,
)


class TinyEncoder(Encoder):
    """Embedding = per-channel mean (3,); dense = 4x4 average pool of a fixed 1x1 lift to 5 channels."""

    embed_dim, dense_dim, stride = 3, 5, 4

    def __init__(self):
        super().__init__(mean=None, std=None)
        self.lift = torch.nn.Conv2d(3, 5, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.lift(x), self.stride)


def _identity_norm(head: torch.nn.Module) -> None:
    """Eval-mode BatchNorm with running stats (0, 1) and eps 0 is exactly the identity."""
    head.eval()
    head.norm.eps = 0.0


def test_linear_classifier_is_an_affine_map():
    head = LinearClassifier(4, 3)
    z = torch.randn(5, 4)
    expected = z @ head.linear.weight.T + head.linear.bias
    assert head(z).shape == (5, 3)
    torch.testing.assert_close(head(z), expected)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        head(torch.randn(5, 3))
    with pytest.raises(ValueError, match="num_classes"):
        LinearClassifier(4, 0)


def test_segmentation_head_shape_and_commutes_with_upsampling():
    head = SegmentationHead(6, 4)
    _identity_norm(head)
    f = torch.randn(2, 6, 3, 5)
    out = head(f, size=(12, 20))
    assert out.shape == (2, 4, 12, 20)
    assert head(f).shape == (2, 4, 3, 5)  # size=None keeps the feature resolution
    # a 1x1 conv commutes with bilinear upsampling: classify-then-upsample == upsample-then-classify
    up = F.interpolate(f, size=(12, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, head.classifier(up), rtol=1e-5, atol=1e-5)


def test_segmentation_head_rejects_wrong_features():
    head = SegmentationHead(6, 4)
    with pytest.raises(ValueError, match=r"\(B, 6, h, w\)"):
        head(torch.randn(2, 5, 3, 3), size=(8, 8))
    with pytest.raises(ValueError, match="size"):
        head(torch.randn(2, 6, 3, 3), size=(8, 0))


def test_depth_bins_by_hand():
    torch.testing.assert_close(depth_bins(1.0, 3.0, 3, "linear"), torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(depth_bins(1.0, 100.0, 3, "log"), torch.tensor([1.0, 10.0, 100.0]))
    with pytest.raises(ValueError, match="bin_spacing"):
        depth_bins(1.0, 3.0, 3, "cubic")


def test_depth_head_bins_hand_computed():
    # scores (1, -1, 3) -> relu + 0.1 = (1.1, 0.1, 3.1), sum 4.3; bins (1, 2, 3): depth = 10.6 / 4.3
    head = DepthHead(2, mode="bins", n_bins=3, min_depth=1.0, max_depth=3.0)
    _identity_norm(head)
    with torch.no_grad():
        head.predictor.weight.zero_()
        head.predictor.bias.copy_(torch.tensor([1.0, -1.0, 3.0]))
    out = head(torch.randn(1, 2, 2, 2), size=(4, 4))
    assert out.shape == (1, 1, 4, 4)
    torch.testing.assert_close(out, torch.full((1, 1, 4, 4), 10.6 / 4.3))


def test_depth_head_regression_hand_computed():
    head = DepthHead(2, mode="regression", min_depth=1.0, max_depth=3.0)
    _identity_norm(head)
    with torch.no_grad():
        head.predictor.weight.zero_()
        head.predictor.bias.fill_(math.log(3.0))  # sigmoid(log 3) = 0.75 -> 1 + 2 * 0.75 = 2.5
    torch.testing.assert_close(head(torch.randn(3, 2, 2, 2), size=(2, 2)), torch.full((3, 1, 2, 2), 2.5))


@pytest.mark.parametrize("mode", DEPTH_MODES)
@pytest.mark.parametrize("spacing", BIN_SPACINGS)
def test_depth_head_output_stays_in_range(mode, spacing):
    head = DepthHead(8, mode=mode, n_bins=16, min_depth=0.5, max_depth=4.0, bin_spacing=spacing)
    out = head(torch.randn(3, 8, 4, 6) * 50, size=(13, 17))  # large features push scores to extremes
    assert out.shape == (3, 1, 13, 17)
    assert out.min() >= 0.5 - 1e-5 and out.max() <= 4.0 + 1e-5


def test_depth_head_upsampled_depth_is_expectation_under_upsampled_weights():
    head = DepthHead(4, mode="bins", n_bins=5, min_depth=1.0, max_depth=5.0)
    head.eval()
    f = torch.randn(2, 4, 3, 3)
    out = head(f, size=(9, 9))
    scores = head.predictor(head.norm(f))
    w = torch.relu(scores) + 0.1
    w = w / w.sum(1, keepdim=True)
    w_up = F.interpolate(w, size=(9, 9), mode="bilinear", align_corners=False)
    expected = (w_up * head.bins.view(1, -1, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "softmax"}, "mode"),
    ({"min_depth": 2.0, "max_depth": 1.0}, "min_depth"),
    ({"min_depth": 0.0, "max_depth": 1.0}, "min_depth"),
    ({"bin_spacing": "sid"}, "bin_spacing"),
    ({"n_bins": 1}, "n_bins"),
])
def test_depth_head_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DepthHead(4, **kwargs)


@pytest.mark.parametrize("task", TASKS)
def test_build_every_task_gives_the_contract_shape(task):
    encoder = TinyEncoder()
    kwargs = {"classification": {"num_classes": 7}, "segmentation": {"num_classes": 7},
              "depth": {"depth_range": (0.5, 10.0)}, "embedding": {}}[task]
    model = build(task, encoder, **kwargs).eval()
    x = torch.rand(2, 3, 16, 12)
    expected = {"classification": (2, 7), "segmentation": (2, 7, 16, 12), "depth": (2, 1, 16, 12),
                "embedding": (2, 3)}[task]
    assert model(x).shape == expected
    assert model.task == task and model.encoder is encoder


def test_build_passes_head_options():
    model = build("depth", TinyEncoder(), depth_range=(1.0, 2.0), mode="regression")
    assert model.head.mode == "regression" and (model.head.min_depth, model.head.max_depth) == (1.0, 2.0)


@pytest.mark.parametrize("task, kwargs, match", [
    ("classification", {}, "num_classes"),
    ("segmentation", {}, "num_classes"),
    ("depth", {}, "depth_range"),
    ("depth", {"depth_range": (1.0,)}, "depth_range"),
    ("depth", {"depth_range": (1.0, 2.0), "num_classes": 3}, "num_classes"),
    ("classification", {"num_classes": 3, "depth_range": (1.0, 2.0)}, "depth_range"),
    ("embedding", {"num_classes": 3}, "no head"),
    ("detection", {}, "unknown task"),
])
def test_build_errors_name_what_is_missing(task, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(task, TinyEncoder(), **kwargs)
