"""Threat models: an Lp ball of radius ``eps`` around the clean image, intersected with the [0, 1] box."""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMS = ("linf", "l2", "l1")


@dataclass(frozen=True)
class ThreatModel:
    """``norm`` in {"linf", "l2", "l1"}; ``eps`` >= 0 in [0, 1]-image units (8/255 for L-inf CIFAR)."""

    norm: str = "linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; accepted: {', '.join(NORMS)}")
        eps = float(self.eps)
        if not eps >= 0 or eps == float("inf"):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) ``‖x_adv − x‖`` in this norm."""
        delta = (x_adv - x).flatten(1)
        if self.norm == "linf":
            return delta.abs().amax(dim=1)
        if self.norm == "l2":
            return delta.norm(p=2, dim=1)
        return delta.abs().sum(dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Nearest point (Euclidean for L-inf/L2; see ``_project_l1``) of the ball, then clipped to [0, 1].

        For L-inf, clipping after projection stays in the ball (the box and the ball are both per-pixel
        intervals); for L2 and L1 clipping can only shrink ``‖δ‖``, so the result is always feasible.
        """
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        elif self.norm == "l2":
            norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        else:
            delta = _project_l1(delta, self.eps)
        return (x + delta).clamp(0.0, 1.0)


def _project_l1(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each sample onto the L1 ball (Duchi et al., 2008, sort-based)."""
    shape = delta.shape
    flat = delta.flatten(1)
    abs_flat = flat.abs()
    inside = abs_flat.sum(dim=1) <= eps
    if bool(inside.all()):
        return delta
    sorted_abs, _ = abs_flat.sort(dim=1, descending=True)
    cumsum = sorted_abs.cumsum(dim=1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = sorted_abs - (cumsum - eps) / ks > 0
    rho = cond.to(flat.dtype).mul(ks).argmax(dim=1)
    theta = ((cumsum.gather(1, rho[:, None]) - eps) / (rho[:, None] + 1).to(flat.dtype)).clamp_min(0)
    projected = flat.sign() * (abs_flat - theta).clamp_min(0)
    out = torch.where(inside[:, None], flat, projected)
    return out.view(shape)
