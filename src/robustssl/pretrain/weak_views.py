"""The weak augmentation of adversarial pretraining: a random crop of the zero-padded image and a flip.

AdvCL attacks a weakly augmented view (torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``)
rather than a SimCLR view, and DeACL distils on the same weak view. Batched, one generator, per-sample shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustssl.runtime.validation import check_image


@dataclass(frozen=True)
class PadCropFlip:
    """``PadCropFlip(padding=4)(x, generator)``: pad ``x`` (B, C, H, W) with ``padding`` zeros on every side,
    cut a random (H, W) window per sample, mirror it with probability ``flip_p``. Output (B, C, H, W) in
    [0, 1] when the input is; a pure translation, so no pixel value is ever interpolated."""

    padding: int = 4
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"PadCropFlip: padding must be an int >= 0, got {self.padding!r}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"PadCropFlip: flip_p must be a probability in [0, 1], got {self.flip_p!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_image(x, "PadCropFlip")
        b, _, h, w = x.shape
        where = generator.device if generator is not None else torch.device("cpu")
        offsets = torch.randint(0, 2 * self.padding + 1, (b, 2), generator=generator, device=where)
        offsets = offsets.to(x.device)
        flip = (torch.rand(b, generator=generator, device=where) < self.flip_p).to(x.device)
        padded = F.pad(x, (self.padding,) * 4)
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        batch = torch.arange(b, device=x.device)[:, None, None]
        # advanced indexing on dims 0, 2, 3 puts the channel axis last: (B, H, W, C)
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()
