"""What an attack maximizes. An ``Objective`` turns a model output into a per-sample loss to **maximize**.

Contract (``../../docs/architecture.md``):

- ``loss(output, target, reference, progress=0.0) -> (B,)``: larger = more adversarial. ``reference`` is the
  model's output on the clean input (needed by embedding and multi-task objectives, ignored by others).
  ``progress`` in [0, 1] is the fraction of the attack's budget spent (SegPGD schedules on it).
- ``success(output, target, reference) -> (B,) bool``: the attack has reached its goal for that sample
  (misclassified, ...). Attacks use it for per-sample early stopping and robust metrics.
- ``validate(output, target)``: raise a clear ``ValueError`` when the target does not fit the output
  (called once on the clean output by ``robustssl.threats.attack``).

Registered names (``OBJECTIVES.names()``), with the output each expects (registry metadata ``output``):

=================  ============  ====================================================================
name               output        loss
=================  ============  ====================================================================
``ce``             logits (B,K)  cross-entropy (targeted: minus CE to the target class)
``cw``             logits        CW margin ``max_{j≠y} z_j − z_y`` (Carlini & Wagner 2017)
``dlr``            logits        difference of logits ratio (Croce & Hein 2020)
``dlr-targeted``   logits        targeted DLR; ``target`` = ``(y_true, y_target)``
``embed-mse``      (B, D)        mean squared distance to the clean embedding
``embed-cos``      (B, D)        ``1 − cos`` to the clean embedding
``embed-l2``       (B, D)        L2 distance to the clean embedding
``seg-ce``         (B,K,H,W)     per-pixel CE, mean over non-ignored pixels (255 = ignore)
``segpgd``         (B,K,H,W)     SegPGD (Gu et al. 2022) correct/wrong pixel weighting over ``progress``
``depth-silog``    (B,1,H,W)     scale-invariant log loss + multi-scale gradient matching (depth > 0)
``multitask``      dict          sum of weighted task losses, each divided by its clean value
=================  ============  ====================================================================

Targets: class indices ``(B,)`` for classification (targeted objectives: the target class ``(B,)``, or the
tuple ``(y_true, y_target)``), masks ``(B, H, W)`` for segmentation, depth ``(B, H, W)`` or
``(B, 1, H, W)`` metres for depth, nothing for embeddings, a dict ``{task: target}`` for ``multitask``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from robustssl.registry import Registry

OBJECTIVES: Registry[Objective] = Registry("objective")

IGNORE_INDEX = 255  # the dataset contract's ignore label (robustssl.data.IGNORE_INDEX)

Target = Any  # a tensor with leading batch dim, a tuple of them, a dict of them, or None


class Objective:
    name: str = "objective"
    needs_reference: bool = False
    #: True when ``success`` is meaningful (classification); False for objectives with no threshold
    #: (embedding distance, depth error), where attacks run their whole budget.
    has_success: bool = True
    #: True when ``loss`` is not a fixed yardstick (it depends on ``progress``, as SegPGD's). Attacks then
    #: compare points by ``tracking_loss`` instead of the loss they ascend.
    scheduled: bool = False

    def loss(
        self,
        output: torch.Tensor,
        target: torch.Tensor | None,
        reference: torch.Tensor | None = None,
        progress: float = 0.0,
    ) -> torch.Tensor:
        raise NotImplementedError

    def success(
        self, output: torch.Tensor, target: torch.Tensor | None, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.zeros(output.shape[0], dtype=torch.bool, device=output.device)

    def validate(self, output: Any, target: Target) -> None:
        """Raise ``ValueError`` when ``target`` does not fit ``output`` (shape, dtype, range)."""

    def tracking_loss(self, output: Any, target: Target, reference: Any = None) -> torch.Tensor:
        """(B,) the loss by which attacks pick their best point: ``loss`` at ``progress=1``."""
        return self.loss(output, target, reference, 1.0)

    def lift(self, other: Objective) -> Objective:
        """``other`` made to read outputs the way this objective does: ``other`` itself here; wrappers that
        change the output's form (EOT's draws) wrap it alike. APGD lifts its ``objective_override`` so."""
        return other

    def scale(self, reference: Any, target: Target) -> torch.Tensor:
        """(B,) positive normaliser of this loss at the clean input (used by ``multitask``).

        The default is the loss at the clean output, floored at 1e-3 so a confidently correct sample does
        not blow its task's share up by orders of magnitude.
        """
        return self.loss(reference, target, reference).detach().abs().clamp_min(1e-3)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --- shared checks -----------------------------------------------------------------------------------------


def _check_logits(name: str, output: Any, target: Any) -> None:
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"objective {name!r} expects logits of shape (B, K), got {shape}")
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"objective {name!r} expects class indices (B,), got {type(target).__name__}")
    if target.shape != output.shape[:1]:
        raise ValueError(
            f"objective {name!r}: target shape {tuple(target.shape)} does not match "
            f"the batch of logits {tuple(output.shape)}; expected ({output.shape[0]},)"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(
            f"objective {name!r}: target must hold integer class indices, got dtype {target.dtype}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= output.shape[1]):
        raise ValueError(
            f"objective {name!r}: class indices must lie in [0, {output.shape[1] - 1}], got range "
            f"[{int(target.min())}, {int(target.max())}]"
        )


def _check_min_classes(name: str, output: torch.Tensor, k: int) -> None:
    if output.shape[1] < k:
        raise ValueError(f"objective {name!r} needs at least {k} classes, got logits with {output.shape[1]}")


def _split_targeted(target: Target) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(y_true, y_target)`` or ``y_target`` -> (y_true or None, y_target)."""
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise ValueError(
                f"a targeted objective takes (y_true, y_target), got a sequence of {len(target)}"
            )
        return target[0], target[1]
    return None, target


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number or None, got {threshold!r}")
    return threshold


def _largest_other(logits: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """(B,) ``max_{j ≠ exclude} logits_j``."""
    masked = logits.scatter(1, exclude[:, None], float("-inf"))
    return masked.amax(dim=1)


# --- classification ----------------------------------------------------------------------------------------


class _Classification(Objective):
    """Success = misclassified (untargeted) or classified as the target (targeted)."""

    def __init__(self, targeted: bool = False):
        self.targeted = bool(targeted)

    def validate(self, output: Any, target: Target) -> None:
        y_true, y = _split_targeted(target) if self.targeted else (None, target)
        _check_logits(self.name, output, y)
        if y_true is not None:
            _check_logits(self.name, output, y_true)

    def success(self, output: torch.Tensor, target: Target, reference: Any = None) -> torch.Tensor:
        pred = output.detach().argmax(dim=1)
        if self.targeted:
            return pred == _split_targeted(target)[1]
        return pred != target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(targeted={self.targeted})"


@OBJECTIVES.register("ce", output="logits")
class CrossEntropy(_Classification):
    name = "ce"

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        if self.targeted:
            return -F.cross_entropy(output.float(), _split_targeted(target)[1], reduction="none")
        return F.cross_entropy(output.float(), target, reduction="none")


@OBJECTIVES.register("cw", output="logits")
class CWMargin(_Classification):
    """Carlini & Wagner (2017) margin on logits; ``confidence`` caps the loss (κ in their f6)."""

    name = "cw"

    def __init__(self, targeted: bool = False, confidence: float = float("inf")):
        super().__init__(targeted)
        if not confidence >= 0:
            raise ValueError(f"confidence must be >= 0, got {confidence!r}")
        self.confidence = float(confidence)

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        z = output.float()
        y = _split_targeted(target)[1] if self.targeted else target
        z_y = z.gather(1, y[:, None])[:, 0]
        other = _largest_other(z, y)
        margin = z_y - other if self.targeted else other - z_y
        return margin.clamp(max=self.confidence)


@OBJECTIVES.register("dlr", output="logits")
class DLR(_Classification):
    """Difference of logits ratio (Croce & Hein 2020, eq. 4): ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)``.

    Invariant to shifting and positively scaling the logits; needs at least 3 classes.
    """

    name = "dlr"

    def __init__(self) -> None:
        super().__init__(targeted=False)

    def validate(self, output: Any, target: Target) -> None:
        super().validate(output, target)
        _check_min_classes(self.name, output, 3)

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        z = output.float()
        z_sorted = z.sort(dim=1, descending=True).values
        z_y = z.gather(1, target[:, None])[:, 0]
        return -(z_y - _largest_other(z, target)) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


@OBJECTIVES.register("dlr-targeted", output="logits")
class DLRTargeted(_Classification):
    """Targeted DLR (Croce & Hein 2020, eq. 5): ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2)``.

    ``target`` is the tuple ``(y_true, y_target)``; success = classified as ``y_target``. Needs 4 classes.
    """

    name = "dlr-targeted"

    def __init__(self) -> None:
        super().__init__(targeted=True)

    def validate(self, output: Any, target: Target) -> None:
        if _split_targeted(target)[0] is None:
            raise ValueError(
                "objective 'dlr-targeted' needs target=(y_true, y_target), two (B,) class tensors"
            )
        super().validate(output, target)
        _check_min_classes(self.name, output, 4)

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        y, t = _split_targeted(target)
        z = output.float()
        z_sorted = z.sort(dim=1, descending=True).values
        z_y, z_t = z.gather(1, y[:, None])[:, 0], z.gather(1, t[:, None])[:, 0]
        return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


# --- embedding ---------------------------------------------------------------------------------------------


class _Embedding(Objective):
    """Distance of the embedding from the clean one; success (with ``threshold``) = distance >= threshold."""

    needs_reference = True

    def __init__(self, threshold: float | None = None):
        self.threshold = _check_threshold(threshold)
        self.has_success = self.threshold is not None

    def validate(self, output: Any, target: Target) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"objective {self.name!r} expects embeddings of shape (B, D), got {got}")

    def success(self, output: torch.Tensor, target: Target, reference: Any = None) -> torch.Tensor:
        if self.threshold is None:
            return super().success(output, target, reference)
        return self.loss(output.detach(), target, reference) >= self.threshold

    def _pair(
        self, output: torch.Tensor, reference: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if reference is None:
            raise ValueError(f"objective {self.name!r} needs the clean embedding as reference")
        return output.float().flatten(1), reference.detach().float().flatten(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"


@OBJECTIVES.register("embed-mse", output="embedding")
class EmbeddingMSE(_Embedding):
    name = "embed-mse"

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        out, ref = self._pair(output, reference)
        return (out - ref).pow(2).mean(dim=1)

    def scale(self, reference: Any, target: Target) -> torch.Tensor:
        # Zero at the clean input by construction: normalise by the embedding's mean square instead.
        return reference.detach().float().flatten(1).pow(2).mean(dim=1).clamp_min(1e-12)


@OBJECTIVES.register("embed-cos", output="embedding")
class EmbeddingCosine(_Embedding):
    name = "embed-cos"

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        out, ref = self._pair(output, reference)
        return 1.0 - F.cosine_similarity(out, ref, dim=1, eps=1e-12)

    def scale(self, reference: Any, target: Target) -> torch.Tensor:
        # Already dimensionless (in [0, 2]); zero at the clean input, so no clean-value normalisation.
        return torch.ones(reference.shape[0], device=reference.device)


@OBJECTIVES.register("embed-l2", output="embedding")
class EmbeddingL2(_Embedding):
    """``‖f(x_adv) − f(x)‖₂``, the embedding-space attack loss of cross-task robustness benchmarks."""

    name = "embed-l2"

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        out, ref = self._pair(output, reference)
        # sqrt(. + tiny): the distance is 0 at the clean input, where the plain norm's gradient is undefined.
        return ((out - ref).pow(2).sum(dim=1) + 1e-20).sqrt()

    def scale(self, reference: Any, target: Target) -> torch.Tensor:
        # Relative drift ‖f(x_adv) − f(x)‖ / ‖f(x)‖: the clean distance is zero by construction.
        return reference.detach().float().flatten(1).norm(dim=1).clamp_min(1e-12)


# --- segmentation ------------------------------------------------------------------------------------------


class _Segmentation(Objective):
    """Per-pixel CE on ``(B, K, H, W)`` logits; ``target`` ``(B, H, W)`` ints, ``ignore_index`` skipped.

    Success (with ``threshold``): fraction of misclassified valid pixels >= threshold.
    """

    def __init__(self, threshold: float | None = None, ignore_index: int = IGNORE_INDEX):
        self.threshold = _check_threshold(threshold)
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"segmentation threshold is a pixel error rate in [0, 1], got {self.threshold}")
        self.has_success = self.threshold is not None
        self.ignore_index = int(ignore_index)

    def validate(self, output: Any, target: Target) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"objective {self.name!r} expects logits (B, K, H, W), got {got}")
        expected = (output.shape[0], *output.shape[2:])
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != expected:
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(f"objective {self.name!r}: mask must have shape {expected} (B, H, W), got {got}")
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(
                f"objective {self.name!r}: mask must hold integer labels, got dtype {target.dtype}"
            )
        valid = target[target != self.ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= output.shape[1]):
            raise ValueError(
                f"objective {self.name!r}: mask labels must lie in [0, {output.shape[1] - 1}] or be "
                f"{self.ignore_index} (ignore), got range [{int(valid.min())}, {int(valid.max())}]"
            )

    def _pixel_ce(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-pixel CE with 0 at ignored pixels, valid mask), both (B, H, W)."""
        valid = target != self.ignore_index
        ce = F.cross_entropy(output.float(), target.masked_fill(~valid, 0), reduction="none")
        return ce * valid, valid

    def success(self, output: torch.Tensor, target: Target, reference: Any = None) -> torch.Tensor:
        if self.threshold is None:
            return super().success(output, target, reference)
        valid = target != self.ignore_index
        wrong = (output.detach().argmax(dim=1) != target) & valid
        rate = wrong.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
        return rate >= self.threshold

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold}, ignore_index={self.ignore_index})"


@OBJECTIVES.register("seg-ce", output="segmentation")
class SegmentationCE(_Segmentation):
    name = "seg-ce"

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        ce, valid = self._pixel_ce(output, target)
        return ce.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


@OBJECTIVES.register("segpgd", output="segmentation")
class SegPGD(_Segmentation):
    """SegPGD loss (Gu et al., ECCV 2022, eq. 4): ``((1 − λ) Σ_correct CE + λ Σ_wrong CE) / N``.

    ``λ = (t − 1) / (2T)`` at step ``t`` of ``T``; attacks pass ``progress = (t − 1) / T``, so
    ``λ = progress / 2``: early steps push still-correct pixels, late steps also keep wrong ones wrong.
    """

    name = "segpgd"
    scheduled = True

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must lie in [0, 1], got {progress}")
        lam = 0.5 * progress
        ce, valid = self._pixel_ce(output, target)
        correct = (output.detach().argmax(dim=1) == target) & valid
        weights = torch.where(correct, 1.0 - lam, lam)
        return (ce * weights).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


# --- depth -------------------------------------------------------------------------------------------------


@OBJECTIVES.register("depth-silog", output="depth")
class DepthSILog(Objective):
    """Scale-invariant log loss (Eigen et al., NeurIPS 2014) plus multi-scale gradient matching (Li &
    Snavely, MegaDepth, CVPR 2018) on ``d = log(pred) − log(gt)`` over valid pixels (``gt > 0``).

    ``silog = mean(d²) − variance_focus · mean(d)²`` (``variance_focus`` 0.85 as in BTS, Lee et al. 2019);
    gradient matching sums ``mean(|∂x d| + |∂y d|)`` over ``scales`` dyadic subsamplings, weighted by
    ``gradient_weight`` (0.5 as MiDaS, Ranftl et al. 2020). Predictions are clamped to ``min_depth`` before
    the log. Success (with ``threshold``): mean absolute relative error ``|pred − gt| / gt`` >= threshold.
    """

    name = "depth-silog"
    has_success = False

    def __init__(
        self,
        threshold: float | None = None,
        variance_focus: float = 0.85,
        gradient_weight: float = 0.5,
        scales: int = 4,
        min_depth: float = 1e-3,
    ):
        if not 0 <= variance_focus <= 1:
            raise ValueError(f"variance_focus must lie in [0, 1], got {variance_focus}")
        if not gradient_weight >= 0:
            raise ValueError(f"gradient_weight must be >= 0, got {gradient_weight}")
        if not (isinstance(scales, int) and scales >= 1):
            raise ValueError(f"scales must be an int >= 1, got {scales!r}")
        if not min_depth > 0:
            raise ValueError(f"min_depth must be > 0, got {min_depth}")
        self.threshold = _check_threshold(threshold)
        self.has_success = self.threshold is not None
        self.variance_focus, self.gradient_weight = float(variance_focus), float(gradient_weight)
        self.scales, self.min_depth = scales, float(min_depth)

    @staticmethod
    def _flat_target(target: torch.Tensor) -> torch.Tensor:
        return target[:, 0] if target.dim() == 4 else target

    def validate(self, output: Any, target: Target) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.shape[1] != 1:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"objective {self.name!r} expects depth of shape (B, 1, H, W), got {got}")
        expected = (output.shape[0], *output.shape[2:])
        if not isinstance(target, torch.Tensor) or tuple(self._flat_target(target).shape) != expected:
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(
                f"objective {self.name!r}: depth target must have shape {expected} (B, H, W) or "
                f"(B, 1, H, W), got {got}"
            )
        if not target.dtype.is_floating_point:
            raise ValueError(
                f"objective {self.name!r}: depth target must be float metres, got {target.dtype}"
            )
        if bool(torch.isnan(target).any()):
            raise ValueError(
                f"objective {self.name!r}: depth target contains NaN; mark invalid pixels with 0"
            )

    def loss(
        self, output: torch.Tensor, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        gt = self._flat_target(target).float()
        valid = (gt > 0).float()
        count = valid.flatten(1).sum(1).clamp_min(1)
        d = (
            output[:, 0].float().clamp_min(self.min_depth).log() - gt.clamp_min(self.min_depth).log()
        ) * valid
        mean_d = d.flatten(1).sum(1) / count
        silog = d.pow(2).flatten(1).sum(1) / count - self.variance_focus * mean_d.pow(2)
        return silog + self.gradient_weight * self._gradient_matching(d, valid)

    def _gradient_matching(self, d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(d.shape[0], device=d.device)
        for s in range(self.scales):
            step = 2**s
            ds, vs = d[:, ::step, ::step], valid[:, ::step, ::step]
            if ds.shape[1] < 2 and ds.shape[2] < 2:
                break
            gx_valid = vs[:, :, 1:] * vs[:, :, :-1]
            gy_valid = vs[:, 1:, :] * vs[:, :-1, :]
            gx = (ds[:, :, 1:] - ds[:, :, :-1]).abs() * gx_valid
            gy = (ds[:, 1:, :] - ds[:, :-1, :]).abs() * gy_valid
            pairs = gx_valid.flatten(1).sum(1) + gy_valid.flatten(1).sum(1)
            total = total + (gx.flatten(1).sum(1) + gy.flatten(1).sum(1)) / pairs.clamp_min(1)
        return total

    def success(self, output: torch.Tensor, target: Target, reference: Any = None) -> torch.Tensor:
        if self.threshold is None:
            return super().success(output, target, reference)
        gt = self._flat_target(target).float()
        valid = gt > 0
        rel = ((output[:, 0].detach().float() - gt).abs() / gt.clamp_min(self.min_depth)) * valid
        return rel.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1) >= self.threshold

    def __repr__(self) -> str:
        return (
            f"DepthSILog(threshold={self.threshold}, variance_focus={self.variance_focus}, "
            f"gradient_weight={self.gradient_weight}, scales={self.scales})"
        )


# --- several heads at once ---------------------------------------------------------------------------------


@OBJECTIVES.register("multitask", output="dict")
class MultiTaskObjective(Objective):
    """One perturbation against several heads: ``Σ_t w_t · loss_t(out_t) / scale_t(clean_t)``.

    ``tasks`` maps a key of the model's output dict to ``(objective, weight)`` (an ``Objective`` or a
    registered name). Each task's loss is divided by its value at the clean input (``Objective.scale``;
    embedding distances, zero there by construction, by the clean embedding's magnitude), so a task with a
    large raw loss cannot drown the others. ``target`` and ``reference`` are dicts keyed like ``tasks``
    (tasks without targets, e.g. embeddings, may be missing from ``target``).

    Success: only when every task has a success criterion, and then when all of them hold.
    """

    name = "multitask"
    needs_reference = True

    def __init__(self, tasks: Mapping[str, tuple[Objective | str, float]]):
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError("multitask needs a non-empty dict {task: (objective, weight)}")
        self.tasks: dict[str, tuple[Objective, float]] = {}
        for key, spec in tasks.items():
            if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
                raise ValueError(f"multitask task {key!r}: expected (objective, weight), got {spec!r}")
            objective, weight = spec
            if isinstance(objective, str):
                objective = OBJECTIVES.create(objective)
            if not isinstance(objective, Objective) or isinstance(objective, MultiTaskObjective):
                raise ValueError(
                    f"multitask task {key!r}: expected an Objective or a name, got {objective!r}"
                )
            if not (isinstance(weight, (int, float)) and weight >= 0 and math.isfinite(weight)):
                raise ValueError(
                    f"multitask task {key!r}: weight must be a finite number >= 0, got {weight!r}"
                )
            self.tasks[key] = (objective, float(weight))
        self.has_success = all(obj.has_success for obj, _ in self.tasks.values())
        self.scheduled = any(obj.scheduled for obj, _ in self.tasks.values())

    @staticmethod
    def _get(mapping: Any, key: str) -> Any:
        return None if mapping is None else mapping.get(key)

    def validate(self, output: Any, target: Target) -> None:
        if not isinstance(output, Mapping):
            raise ValueError(
                f"objective 'multitask' expects the model to return a dict of outputs "
                f"{{task: output}}, got {type(output).__name__}"
            )
        if target is not None and not isinstance(target, Mapping):
            raise ValueError(
                f"objective 'multitask' expects a dict of targets {{task: target}}, "
                f"got {type(target).__name__}"
            )
        missing = [key for key in self.tasks if key not in output]
        if missing:
            raise ValueError(
                f"multitask: the model's outputs have no {', '.join(map(repr, missing))}; "
                f"it returned: {', '.join(map(repr, output))}"
            )
        for key, (objective, _) in self.tasks.items():
            objective.validate(output[key], self._get(target, key))

    def loss(
        self, output: Mapping[str, Any], target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        if reference is None:
            raise ValueError("objective 'multitask' needs the clean outputs as reference")
        total = None
        for key, (objective, weight) in self.tasks.items():
            tgt, ref = self._get(target, key), reference[key]
            term = weight * objective.loss(output[key], tgt, ref, progress) / objective.scale(ref, tgt)
            total = term if total is None else total + term
        return total

    def task_losses(
        self, output: Mapping[str, Any], target: Target, reference: Any
    ) -> dict[str, torch.Tensor]:
        """{task: (B,) raw loss}: what each head lost, for reports."""
        return {
            key: objective.loss(output[key], self._get(target, key), reference[key]).detach()
            for key, (objective, _) in self.tasks.items()
        }

    def success(self, output: Mapping[str, Any], target: Target, reference: Any = None) -> torch.Tensor:
        first = next(iter(output.values()))
        result = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
        if not self.has_success:
            return ~result
        for key, (objective, _) in self.tasks.items():
            result &= objective.success(output[key], self._get(target, key), self._get(reference, key))
        return result

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: ({o!r}, {w})" for k, (o, w) in self.tasks.items())
        return f"MultiTaskObjective({{{inner}}})"


class LossWithSuccess(Objective):
    """Maximize ``loss_objective``'s loss while ``success_objective`` decides success (not registered).

    APGD's ``objective_override`` and APGD-T use it: e.g. maximize targeted DLR but stop as soon as the
    sample is misclassified at all. ``loss_target`` maps the attack's target to the loss's target
    (APGD-T passes ``(y_true, y_target)`` and judges success on ``y_true``).
    """

    def __init__(self, loss_objective: Objective, success_objective: Objective, targeted_loss: bool = False):
        self.loss_objective, self.success_objective = loss_objective, success_objective
        self.targeted_loss = targeted_loss
        self.name = f"{loss_objective.name}|{success_objective.name}"
        self.needs_reference = loss_objective.needs_reference or success_objective.needs_reference
        self.has_success = success_objective.has_success
        # The best point is judged by the success objective's loss, not the one ascended.
        self.scheduled = True

    def _success_target(self, target: Target) -> Target:
        return target[0] if self.targeted_loss else target

    def validate(self, output: Any, target: Target) -> None:
        self.loss_objective.validate(output, target)
        self.success_objective.validate(output, self._success_target(target))

    def loss(self, output: Any, target: Target, reference: Any = None, progress: float = 0.0) -> torch.Tensor:
        return self.loss_objective.loss(output, target, reference, progress)

    def success(self, output: Any, target: Target, reference: Any = None) -> torch.Tensor:
        return self.success_objective.success(output, self._success_target(target), reference)

    def tracking_loss(self, output: Any, target: Target, reference: Any = None) -> torch.Tensor:
        return self.success_objective.tracking_loss(output, self._success_target(target), reference)

    def lift(self, other: Objective) -> Objective:
        # Both parts read the same outputs; the success objective is the call's (EOT's expectation).
        return self.success_objective.lift(other)

    def __repr__(self) -> str:
        return f"LossWithSuccess({self.loss_objective!r}, {self.success_objective!r})"


def objective_for_task(task: str) -> Objective:
    """The default objective of a ``TaskModel`` task (classification -> ce, segmentation -> seg-ce,
    depth -> depth-silog, embedding -> embed-l2)."""
    defaults = {
        "classification": "ce",
        "segmentation": "seg-ce",
        "depth": "depth-silog",
        "embedding": "embed-l2",
    }
    if task not in defaults:
        raise ValueError(f"no default objective for task {task!r}; accepted: {', '.join(defaults)}")
    return OBJECTIVES.create(defaults[task])
