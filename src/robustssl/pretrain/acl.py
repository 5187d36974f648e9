"""ACL (Jiang et al., NeurIPS 2020, "Robust Pre-Training by Adversarial Contrastive Learning"), dual stream.

Two SimCLR views ``x1, x2`` of each image; PGD perturbs both at once to maximize their NT-Xent loss (the
adversarial-to-adversarial pair, A2A), with the network in eval mode on its adversarial batch-norm branch.
The loss is the paper's ACL(DS): ``(1 − w) · NT-Xent(clean pair, clean BN) + w · NT-Xent(adversarial pair,
adversarial BN)`` with ``w = adv_weight = ½``, the best variant of the paper (Table 1) and the one that needs
dual batch norm. ``adv_weight = 1`` keeps only the A2A stream (the clean BN branch then gets no gradient).

The projection head has its own pair of batch norms (one per stream), as in ACL's ``proj_head``. Defaults
follow the paper's CIFAR setting: L-inf eps 8/255, 5 PGD steps of 2/255, temperature 0.5, crops down to
10% of the image.
"""

from __future__ import annotations

import torch
from torch import nn

from robustssl.data.views import SimCLRViews
from robustssl.encoders.base import Encoder
from robustssl.encoders.batchnorm import BN_BRANCHES, DualBatchNorm2d, bn_branch
from robustssl.pretrain.adversarial import eval_mode, maximize
from robustssl.pretrain.losses import nt_xent
from robustssl.pretrain.method import METHODS, PretrainMethod
from robustssl.pretrain.simclr import resolve_views
from robustssl.threats.threat_model import ThreatModel


def require_dual_bn(encoder: Encoder, method: str) -> None:
    """Raise a ``ValueError`` saying how to build one unless ``encoder`` has dual batch-norm layers."""
    if not any(isinstance(m, DualBatchNorm2d) for m in encoder.modules()):
        raise ValueError(
            f"{method} trains separate batch-norm statistics for clean and adversarial inputs, but encoder "
            f"{getattr(encoder, 'name', type(encoder).__name__)!r} has no dual batch-norm layers; build it "
            "with dual_bn=True, e.g. robustssl.encoders.create('resnet18_cifar', dual_bn=True) or "
            "create('convnet_small', dual_bn=True)"
        )


def pgd_settings(method: str, eps: float, steps: int, step_size: float) -> ThreatModel:
    """Validate the training attack's settings with errors naming ``method``; return its L-inf threat."""
    if not (isinstance(eps, (int, float)) and 0 <= eps <= 1):
        raise ValueError(f"{method}: eps must be a number in [0, 1] (image units, e.g. 8/255), got {eps!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"{method}: steps must be an int >= 0, got {steps!r}")
    if not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(f"{method}: step_size must be > 0, got {step_size!r}")
    return ThreatModel("linf", float(eps))


#: ACL's RandomResizedCrop area range on CIFAR (``scale=(1 - 0.9 * strength, 1)`` with strength 1)
ACL_CROP_SCALE = (0.1, 1.0)


class BranchProjector(nn.Module):
    """SimCLR's 2-layer MLP head (Linear-BN-ReLU-Linear) with one BatchNorm1d per branch:
    ``projector(h, "clean")`` / ``projector(h, "adv")``; the linear layers are shared."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.ModuleDict({branch: nn.BatchNorm1d(hidden_dim) for branch in BN_BRANCHES})
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, h: torch.Tensor, branch: str) -> torch.Tensor:
        if branch not in self.bn:
            raise ValueError(f"unknown batch-norm branch {branch!r}; accepted: {', '.join(BN_BRANCHES)}")
        return self.fc2(self.relu(self.bn[branch](self.fc1(h))))


@METHODS.register("acl")
class ACL(PretrainMethod):
    """ACL(DS). Options: ``eps``, ``steps``, ``step_size`` (the training PGD), ``adv_weight`` (share of the
    adversarial stream in the loss), ``temperature``, projector sizes, ``views`` (a ``SimCLRViews`` or a
    preset name) and ``crop_scale`` (default: ACL's (0.1, 1)). Needs a dual-BN encoder."""

    #: the batch-norm branch to use downstream: ACL's released fine-tuning code keeps the adversarial one
    eval_bn_branch = "adv"

    def __init__(
        self,
        encoder: Encoder,
        *,
        eps: float = 8 / 255,
        steps: int = 5,
        step_size: float = 2 / 255,
        adv_weight: float = 0.5,
        temperature: float = 0.5,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        views: SimCLRViews | str | None = None,
        crop_scale: tuple[float, float] | list[float] | None = None,
    ):
        super().__init__(encoder)
        require_dual_bn(encoder, "acl")
        self.threat = pgd_settings("acl", eps, steps, step_size)
        if not 0 <= adv_weight <= 1:
            raise ValueError(f"acl: adv_weight must be in [0, 1] (0.5 = ACL(DS), 1 = A2A only), "
                             f"got {adv_weight}")
        if not temperature > 0:
            raise ValueError(f"acl: temperature must be > 0, got {temperature}")
        self.steps, self.step_size = steps, float(step_size)
        self.adv_weight, self.temperature = float(adv_weight), float(temperature)
        self.projector = BranchProjector(encoder.embed_dim, proj_hidden_dim, proj_dim)
        # ACL's CIFAR augmentation: RandomResizedCrop scale (0.1, 1), SimCLR colour jitter s = 0.5.
        if views is None and crop_scale is None:
            crop_scale = ACL_CROP_SCALE
        self.views = resolve_views(views, crop_scale)

    def project(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """Projections ``(B, proj_dim)`` of images ``x`` through the encoder and head on ``branch``."""
        with bn_branch(self.encoder, branch):
            return self.projector(self.encoder.embed(x), branch)

    def adversarial_pair(self, x1: torch.Tensor, x2: torch.Tensor, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views perturbed jointly (PGD in the eps-ball, in [0, 1]) to maximize their NT-Xent loss on the
        adversarial branch, in eval mode (running statistics, none updated)."""
        batch = x1.shape[0]

        def pair_loss(x: torch.Tensor) -> torch.Tensor:
            z = self.project(x, "adv")
            return nt_xent(z[:batch], z[batch:], self.temperature)

        with eval_mode(self):
            x_adv = maximize(pair_loss, torch.cat([x1, x2]), threat=self.threat, steps=self.steps,
                             step_size=self.step_size, generator=generator)
        return x_adv[:batch], x_adv[batch:]

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        x1, x2 = self.views(images, generator=generator), self.views(images, generator=generator)
        a1, a2 = self.adversarial_pair(x1, x2, generator)
        logs: dict[str, float] = {}
        loss = images.new_zeros(())
        if self.adv_weight < 1:
            z = self.project(torch.cat([x1, x2]), "clean")
            clean = nt_xent(z[: len(x1)], z[len(x1):], self.temperature)
            loss = loss + (1 - self.adv_weight) * clean
            logs["nt_xent_clean"] = float(clean.detach())
        z = self.project(torch.cat([a1, a2]), "adv")
        adv = nt_xent(z[: len(a1)], z[len(a1):], self.temperature)
        loss = loss + self.adv_weight * adv
        logs["nt_xent_adv"] = float(adv.detach())
        return loss, logs
