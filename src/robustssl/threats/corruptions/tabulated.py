"""``TabulatedCorruption``: a corruption whose strength at each severity is read from a published table.

Subclasses set ``TABLE = {"cifar": (c1, ..., c5), "imagenet": (c1, ..., c5)}`` (one entry per severity) and
implement ``apply(x, c, generator, params)``; this class checks the input, picks the table row, and clamps the
result to [0, 1]. Outputs are float and not quantized to 8 bits (the reference scripts store uint8); round
``x * 255`` yourself when writing an 8-bit dataset.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from robustssl.runtime.validation import check_image
from robustssl.threats.corruptions.base import Corruption, check_severity, resolve_params

#: samples per CPU chunk = this many values / values per sample, rounded up to a multiple of CHUNK_MULTIPLE
#: (4 images at 224 px, a whole CIFAR batch)
CPU_CHUNK_ELEMENTS = 2 ** 19
CHUNK_MULTIPLE = 4


class TabulatedCorruption(Corruption):
    TABLE: ClassVar[dict[str, tuple[Any, ...]]] = {}
    #: colour corruptions (HSV, YCbCr) need exactly 3 channels; the others work per channel
    needs_rgb: ClassVar[bool] = False

    def corrupt(self, x: torch.Tensor, severity: int, generator: torch.Generator | None = None,
                params: str = "auto") -> torch.Tensor:
        """Corrupt ``x`` ``(B, C, H, W)`` float in [0, 1] at ``severity`` 1..5 -> same shape, dtype, device.

        ``generator`` feeds every random draw (None: PyTorch's default generator); ``params`` is ``"cifar"``,
        ``"imagenet"`` or ``"auto"`` (by image size, see ``resolve_params``).
        """
        check_image(x, where=f"corruption {self.name!r}", channels=3 if self.needs_rgb else None, force=True)
        severity = check_severity(severity)
        table = resolve_params(x, params)
        if x.numel() == 0:
            return x.clone()
        # half precision lacks CPU FFTs and loses the 8-bit steps the references work in: compute in float32
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        c = self.TABLE[table][severity - 1]
        if x.device.type != "cpu":
            return self.apply(work, c, generator, table).clamp(0.0, 1.0).to(x.dtype)
        # on CPU, run cache-sized chunks of the batch: a chain of full-batch temporaries costs more in
        # allocation and memory traffic than the arithmetic (2-4x slower at 224 px, batch 64)
        out = torch.empty_like(x)
        # a multiple of 4 samples: ops that split the batch among threads (grid_sample, batched products)
        # would leave a thread idle on an odd chunk. Not tied to the thread count: random draws are made per
        # chunk, so the output for a given generator must not depend on it
        step = -(-max(1, CPU_CHUNK_ELEMENTS // x[0].numel()) // CHUNK_MULTIPLE) * CHUNK_MULTIPLE
        for start in range(0, x.shape[0], step):
            part = self.apply(work[start:start + step], c, generator, table)
            if part.dtype == out.dtype and not (part.requires_grad and torch.is_grad_enabled()):
                # clamped straight into the output: one pass instead of a clamp and a copy
                torch.clamp(part, 0.0, 1.0, out=out[start:start + step])
            else:
                out[start:start + step] = part.clamp(0.0, 1.0)
        return out

    __call__ = corrupt

    def apply(self, x: torch.Tensor, c: Any, generator: torch.Generator | None, params: str) -> torch.Tensor:
        """The corruption itself, with the severity's table entry ``c``; may return values outside [0, 1]."""
        raise NotImplementedError
