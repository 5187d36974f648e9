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
        out = (x + delta).clamp(0.0, 1.0)
        if self.norm != "linf":
            out = self._absorb_rounding(out, x)
        return out

    def _absorb_rounding(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Shrink rows whose ``‖out − x‖`` exceeds eps only through float rounding of ``x + δ``.

        Summed over thousands of pixels (L1 especially) the rounding of each ``x + δ`` can add ~1e-6 to the
        norm; pulling those rows in by a factor ``1 − 1e-5`` restores ``‖δ‖ <= eps`` exactly.
        """
        view = (-1, *([1] * (out.dim() - 1)))
        for _ in range(3):
            dist = self.distance(out, x)
            over = dist > self.eps
            if not bool(over.any()):
                break
            factor = torch.where(over, self.eps * (1 - 1e-5) / dist.clamp_min(1e-30), 1.0)
            out = (x + (out - x) * factor.view(view)).clamp(0.0, 1.0)
        return out

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A point drawn uniformly from this ball around ``x`` (by volume), clipped to [0, 1].

        L-inf: each coordinate uniform in [-eps, eps] (as Madry et al. 2018). L2 and L1: a uniform
        direction on the sphere scaled by ``eps * u ** (1 / d)``, uniform in volume. ``x``: (B, ...).
        """
        shape, dim = x.shape, x[0].numel()
        # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
        device = generator.device if generator is not None else x.device
        if self.norm == "linf":
            delta = (torch.rand(shape, generator=generator, device=device) * 2 - 1) * self.eps
        else:
            if self.norm == "l2":
                direction = torch.randn(shape, generator=generator, device=device)
            else:
                # Laplace coordinates normalised by their L1 norm are uniform on the L1 sphere.
                u = torch.rand(shape, generator=generator, device=device).clamp_min(1e-12)
                sign = torch.randint(0, 2, shape, generator=generator, device=device) * 2.0 - 1.0
                direction = -u.log() * sign
            norms = self.distance(direction, torch.zeros_like(direction)).clamp_min(1e-12)
            radius = torch.rand(shape[0], generator=generator, device=device) ** (1.0 / dim)
            delta = direction * (self.eps * radius / norms).view(-1, *([1] * (x.dim() - 1)))
        return self.project(x + delta.to(device=x.device, dtype=x.dtype), x)

    def ascent_direction(self, grad: torch.Tensor, l1_sparsity: float = 0.95) -> torch.Tensor:
        """Steepest-ascent direction of unit norm for ``grad`` (B, ...) in this norm.

        L-inf: ``sign(grad)``; L2: ``grad / ‖grad‖₂``; L1: the sign of the coordinates whose ``|grad|`` is at
        or above the per-sample ``l1_sparsity`` quantile, scaled to unit L1 norm (the SLIDE step of Tramèr &
        Boneh, NeurIPS 2019: it moves many pixels per step, unlike the single-coordinate L1-steepest step).
        Samples with a zero gradient get a zero direction.
        """
        view = (-1, *([1] * (grad.dim() - 1)))
        if self.norm == "linf":
            return grad.sign()
        flat = grad.flatten(1)
        if self.norm == "l2":
            norms = flat.norm(p=2, dim=1).clamp_min(1e-12)
            return grad / norms.view(view)
        magnitude = flat.abs()
        cutoff = torch.quantile(magnitude, l1_sparsity, dim=1, keepdim=True)
        mask = (magnitude >= cutoff) & (magnitude > 0)
        step = flat.sign() * mask.to(flat.dtype)
        return (step / step.abs().sum(dim=1, keepdim=True).clamp_min(1.0)).view_as(grad)


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
