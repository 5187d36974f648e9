"""Shared fixtures: a synthetic ten-class image task and small ConvNets trained on it.

Served as fixtures returning functions (``template_data``, ``init_normal``, ``small_classifier``) so that
every test file in this folder gets them whatever pytest's import mode (``tests/`` is not a package).
Everything is drawn from explicit generators: the same arguments give bit-identical data and weights.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def _template_data(n: int, g: torch.Generator, size: int, template_seed: int):
    """``n`` images ``(3, size, size)`` of ten classes: smooth random templates (drawn from their own
    ``template_seed``) plus pixel noise from ``g``, in [0, 1]; returns ``(x, y)``."""
    templates = F.interpolate(torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(template_seed)),
                              size=(size, size), mode="bilinear", align_corners=False)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.25 + 0.5 * templates[y] + 0.3 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


def _init_normal(net: nn.Module, g: torch.Generator, std: float, bias_std: float | None = None) -> None:
    """Every parameter from ``N(0, std²)`` drawn from ``g``; biases (1-d) with ``bias_std`` when given."""
    bias_std = std if bias_std is None else bias_std
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (std if p.dim() > 1 else bias_std))


def _small_classifier(template_seed: int, size: int, n_train: int, n_test: int, epochs: int):
    """A Conv(3→8)-ReLU-MaxPool-Linear classifier trained with Adam (lr 3e-3, batches of 100, no shuffle)
    on ``n_train`` template images; returns ``(net in eval mode, x_test, y_test)`` of ``n_test`` images
    drawn after the training set from the same generator (seed 0)."""
    g = torch.Generator().manual_seed(0)
    x, y = _template_data(n_train, g, size, template_seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * (size // 2) ** 2, 10))
    _init_normal(net, g, 0.1)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 100):
            loss = F.cross_entropy(net(x[i:i + 100]), y[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xt, yt = _template_data(n_test, g, size, template_seed)
    return net, xt, yt


@pytest.fixture(scope="session")
def template_data():
    """``template_data(n, g, size, template_seed) -> (x, y)``: see ``_template_data``."""
    return _template_data


@pytest.fixture(scope="session")
def init_normal():
    """``init_normal(net, g, std, bias_std=None)``: see ``_init_normal``."""
    return _init_normal


@pytest.fixture(scope="session")
def small_classifier():
    """``small_classifier(template_seed, size, n_train, n_test, epochs) -> (net, x_test, y_test)``: see
    ``_small_classifier``. Module fixtures call it once and share the result."""
    return _small_classifier
