"""Severity is monotone: a fixed model's accuracy on ``digits`` and ``scenes`` does not rise with severity.

One small CNN per dataset is trained once (module-scoped fixture, seeded weights, fixed batch order) on the
clean training split; a fixed test subset is corrupted by every registered corruption at severities 1..5
with the CIFAR-10-C parameter set (the images are 32x32) and a generator seeded per severity.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustssl import data
from robustssl.runtime import seeded_init
from robustssl.threats import CORRUPTIONS, corrupt

ALL = CORRUPTIONS.names()
SEVERITIES = (1, 2, 3, 4, 5)
N_TEST = 400
DATASETS = {
    # name: (load keywords for train, for test, epochs)
    "digits": ({}, {}, 15),
    "scenes": ({"size": 32, "n": 2000}, {"size": 32, "n": N_TEST}, 8),
}
#: clean accuracy the fixed model must reach (chance: 0.10 digits, 0.17 scenes)
MIN_CLEAN = {"digits": 0.9, "scenes": 0.33}
#: frost synthesises a texture per image (~6 ms each at 32 px): score it on a smaller subset to keep the file
#: under a minute; the tolerance below grows accordingly
SUBSET = {"frost": 100}
# Non-monotone by the published CIFAR-10-C parameters themselves (make_cifar_c.py, hendrycks/robustness;
# our tables in digital.py / extra.py match them value for value), not by our implementation:
PUBLISHED_NON_MONOTONE = {
    "elastic_transform": "CIFAR-10-C's random affine jitter shrinks with severity (0.08, 0.07, 0.06, "
                         "0.05, 0.03 of the side) while the elastic alpha grows; severity 1 is a pure 2.6 px "
                         "affine warp, which can hurt a small model more than severity 5's 1 px warp + field",
    "saturate": "the CIFAR-10-C table is not an ordered scale: severities 1-2 desaturate (x0.3, x0.1), 3-5 "
                "oversaturate (x1.5, x2 + 0.1, x2.5 + 0.2), so severity 2 (near grey) can be worse than 3",
}


def _images_and_labels(name: str, split: str, kw: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ds = data.load(name, split=split, **kw)
    batch = next(iter(ds.batches(len(ds))))
    x = batch["image"]
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    return x, batch["label"].long()


def _net(num_classes: int, batch_norm: bool) -> nn.Module:
    if not batch_norm:  # digits: plain ConvNet (batch norm's running statistics cost it ~20 points here)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(128, num_classes))
    # scenes (label = largest visible shape) is hard at 32 px: the plain net stays at chance within budget
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (net((x - 0.5) / 0.25).argmax(1) == y).float().mean().item()


class Trained:
    def __init__(self, name: str) -> None:
        train_kw, test_kw, epochs = DATASETS[name]
        x, y = _images_and_labels(name, "train", train_kw)
        xt, yt = _images_and_labels(name, "test", test_kw)
        self.num_classes = int(max(y.max(), yt.max())) + 1
        with seeded_init(0):
            net = _net(self.num_classes, batch_norm=name == "scenes")
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 64):
                idx = order[i:i + 64]
                loss = F.cross_entropy(net((x[idx] - 0.5) / 0.25), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net = net.eval()
        self.name = name
        self.x, self.y = xt[:N_TEST], yt[:N_TEST]
        self.clean = _accuracy(self.net, self.x, self.y)
        self.chance = 1.0 / self.num_classes
        self.cache: dict[str, list[float]] = {}

    def curve(self, corruption: str) -> list[float]:
        if corruption not in self.cache:
            n = SUBSET.get(corruption, len(self.y))
            x, y = self.x[:n], self.y[:n]
            self.cache[corruption] = [
                _accuracy(self.net, corrupt(x, corruption, s, generator=torch.Generator().manual_seed(s),
                                            params="cifar"), y)
                for s in SEVERITIES]
        return self.cache[corruption]


@pytest.fixture(scope="module", params=sorted(DATASETS))
def trained(request) -> Trained:
    return Trained(request.param)


def test_clean_accuracy_well_above_chance(trained: Trained) -> None:
    assert trained.clean > MIN_CLEAN[trained.name], trained.clean


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=PUBLISHED_NON_MONOTONE[n], strict=False))
    if n in PUBLISHED_NON_MONOTONE else n for n in ALL])
def test_accuracy_does_not_rise_with_severity(trained: Trained, name: str) -> None:
    acc = trained.curve(name)
    n = SUBSET.get(name, len(trained.y))
    # Each accuracy is a mean of n Bernoulli outcomes, so adjacent severities can swap by sampling noise
    # even when the expected accuracy is monotone. Bound the noise by two standard errors of a difference
    # of two independent proportions at the worst case p = 1/2: 2 * sqrt(2 * 0.25 / n) (0.071 at n = 400).
    # The two accuracies are measured on the same images, so the true (paired) error is smaller: the
    # tolerance is conservative.
    tolerance = 2 * math.sqrt(2 * 0.25 / n)
    report = ", ".join(f"s{s}={a:.3f}" for s, a in zip(SEVERITIES, acc, strict=True))
    for s in range(len(SEVERITIES) - 1):
        assert acc[s + 1] <= acc[s] + tolerance, f"{name}: accuracy rises from severity {s + 1}: {report}"
    # The end points, far apart in strength, get a tolerance of two images only: where the model is immune
    # to a corruption (digits vs jpeg/pixelate) the curve is flat and one image flips with the CPU thread
    # count the model was trained with.
    assert acc[-1] <= acc[0] + 2 / n + 1e-9, f"{name}: severity 5 beats severity 1: {report}"
