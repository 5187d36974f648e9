"""What an attack maximizes. An ``Objective`` turns a model output into a per-sample loss to **maximize**.

Contract (``../../docs/architecture.md``):

- ``loss(output, target, reference, progress=0.0) -> (B,)``: larger = more adversarial. ``reference`` is the
  model's output on the clean input (needed by embedding and multi-task objectives, ignored by others).
  ``progress`` in [0, 1] is the fraction of the attack's budget spent (SegPGD schedules on it).
- ``success(output, target, reference) -> (B,) bool``: the attack has reached its goal for that sample
  (misclassified, ...). Attacks use it for per-sample early stopping and robust metrics.
"""

from __future__ import annotations

import torch

from robustssl.registry import Registry

OBJECTIVES: Registry[Objective] = Registry("objective")


class Objective:
    name: str = "objective"
    needs_reference: bool = False
    #: True when ``success`` is meaningful (classification); False for objectives with no threshold
    #: (embedding distance, depth error), where attacks run their whole budget.
    has_success: bool = True

    def loss(self, output: torch.Tensor, target: torch.Tensor | None, reference: torch.Tensor | None = None,
             progress: float = 0.0) -> torch.Tensor:
        raise NotImplementedError

    def success(self, output: torch.Tensor, target: torch.Tensor | None,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(output.shape[0], dtype=torch.bool, device=output.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
