"""Fitting heads on a **frozen** encoder, and evaluating a ``TaskModel`` on a dataset.

- :func:`extract_features` runs the encoder once over a dataset (eval mode, no grad) and caches the outputs;
- :func:`fit_linear_probe` fits a :class:`LinearClassifier` on cached embeddings by full-batch L-BFGS on the
  L2-regularized multinomial logistic loss, choosing the weight decay on the **validation** split;
- :func:`fit_dense_head` trains a :class:`SegmentationHead` or :class:`DepthHead` on cached dense features
  with Adam, keeping the epoch with the best validation metric;
- :func:`evaluate` computes a task's metrics over a dataset.

Model selection never sees a test split: datasets whose ``split`` is ``"test"`` are refused as train or
validation data. Datasets with no validation split can be divided with :func:`holdout_split`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustssl.data.base import IGNORE_INDEX, VisionDataset
from robustssl.encoders.base import Encoder
from robustssl.heads.classifier import LinearClassifier
from robustssl.heads.depth import DepthHead
from robustssl.heads.segmentation import SegmentationHead
from robustssl.heads.task_model import TaskModel
from robustssl.metrics.calibration import CalibrationMeter
from robustssl.metrics.classification import AccuracyMeter
from robustssl.metrics.depth import DepthMeter
from robustssl.metrics.intervals import accuracy_interval
from robustssl.metrics.segmentation import SegmentationMeter
from robustssl.runtime.device import resolve_device
from robustssl.runtime.precision import autocast
from robustssl.runtime.progress import progress
from robustssl.runtime.seeding import make_generator

FEATURE_KINDS = ("embed", "dense")
DENSE_TASKS = ("segmentation", "depth")
DEPTH_LOSSES = ("silog", "l1")
#: weight decays tried by the linear probe on standardized features, one per decade (no 0: on separable
#: features the unregularized optimum is at infinity and L-BFGS would only spend its iteration budget)
DEFAULT_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: SILog variance weight (Eigen et al. 2014, lambda = 0.85 as in BTS and DINOv2's SigLoss)
SILOG_LAMBDA = 0.85


# --- splits -----------------------------------------------------------------------------------------------
def holdout_split(n: int, val_fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Disjoint ``(train_indices, val_indices)`` over ``range(n)``, the validation part a random
    ``val_fraction`` of it (at least one sample on each side)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    if n < 2:
        raise ValueError(f"need at least 2 samples to hold some out, got {n}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = torch.randperm(n, generator=generator).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def _check_selection_splits(train_ds: VisionDataset, val_ds: VisionDataset,
                            train_indices: Sequence[int] | None, val_indices: Sequence[int] | None) -> None:
    for role, ds in (("training", train_ds), ("validation", val_ds)):
        if getattr(ds, "split", None) == "test":
            raise ValueError(f"the {role} dataset {ds.name!r} is a test split; heads are fitted and selected "
                             "without ever seeing test data. Hold out validation samples from the training "
                             "split (robustssl.finetune.holdout_split) and pass train_indices/val_indices.")
    if train_ds is val_ds:
        if train_indices is None or val_indices is None:
            raise ValueError("train_ds and val_ds are the same dataset; pass disjoint train_indices and "
                             "val_indices (see holdout_split)")
        overlap = set(train_indices) & set(val_indices)
        if overlap:
            raise ValueError(f"train_indices and val_indices share {len(overlap)} samples, "
                             f"e.g. {sorted(overlap)[:5]}; they must be disjoint")


# --- features -----------------------------------------------------------------------------------------------
@torch.no_grad()
def extract_features(encoder: Encoder, dataset: VisionDataset, kind: str = "embed", batch_size: int = 256,
                     device: str | torch.device = "cpu", precision: str = "fp32",
                     indices: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``encoder`` over ``dataset`` once.

    Returns ``features`` on the CPU in float32 (``(N, embed_dim)`` for ``kind="embed"``,
    ``(N, dense_dim, h, w)`` for ``"dense"``) and the dataset's targets (``label`` ``(N,)``, ``mask``
    ``(N, H, W)``, ``depth`` ``(N, H, W)``, whichever it has), in dataset order (or ``indices`` order).
    The encoder is moved to ``device`` and runs in eval mode without gradients; its previous mode is restored
    afterwards.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; accepted: {', '.join(FEATURE_KINDS)}")
    device = resolve_device(device)
    total = len(indices) if indices is not None else len(dataset)
    if total == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no samples to extract features "
                         "from")
    was_training = encoder.training
    encoder.to(device).eval()
    features: list[torch.Tensor] = []
    targets: dict[str, list[torch.Tensor]] = {}
    try:
        bar = progress(desc=f"features {dataset.name}/{dataset.split}", total=total, unit="img")
        for batch in dataset.batches(batch_size, indices=indices):
            x = batch["image"].to(device)
            with autocast(device, precision):
                out = encoder.embed(x) if kind == "embed" else encoder.dense(x)
            features.append(out.float().cpu())
            for key, value in batch.items():
                if key != "image":
                    targets.setdefault(key, []).append(value.cpu())
            bar.update(x.shape[0])
        bar.close()
    finally:
        encoder.train(was_training)
    return torch.cat(features), {k: torch.cat(v) for k, v in targets.items()}


def _declared_or_seen(dataset: VisionDataset, declared: int | None, seen: int, declares: str,
                      has: str) -> int:
    """The class count ``declared`` by ``dataset``, checked against the count ``seen`` in its data (max
    value + 1); ``seen`` when nothing is declared. ``declares`` / ``has`` word the two in the error."""
    if declared is None:
        return seen
    if seen > declared:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) declares {declares} but has {has}")
    return int(declared)


def _num_classes(dataset: VisionDataset, labels: torch.Tensor) -> int:
    """Classes of a classification dataset: its ``num_classes``, else inferred from the labels seen."""
    declared, seen = dataset.num_classes, int(labels.max()) + 1
    return _declared_or_seen(dataset, declared, seen, f"num_classes={declared}", f"label {seen - 1}")


def _mask_classes(dataset: VisionDataset, masks: torch.Tensor) -> int:
    """Classes of a segmentation dataset's masks.

    ``mask_classes`` when the dataset sets it (datasets whose masks add a background class to the image
    labels do), else ``num_classes`` for datasets without image labels, else inferred from the masks seen.
    """
    declared = getattr(dataset, "mask_classes", None)
    if declared is None and "label" not in dataset.targets:
        declared = dataset.num_classes
    labelled = masks[masks != IGNORE_INDEX]
    seen = int(labelled.max()) + 1 if labelled.numel() else 1
    return _declared_or_seen(dataset, declared, seen, f"{declared} mask classes",
                             f"mask value {seen - 1} (255 is ignore)")


# --- linear probe -------------------------------------------------------------------------------------------
def _lbfgs_fit(x: torch.Tensor, y: torch.Tensor, layer: nn.Linear, weight_decay: float,
               max_iter: int) -> None:
    """Minimize mean cross-entropy + weight_decay * ||W||^2 over ``layer`` (in place, warm-started).

    The gradient is written out by hand, ``(softmax - onehot)^T x / n + 2 wd W``, instead of autograd: the
    objective is tiny and L-BFGS evaluates it hundreds of times, so graph bookkeeping would dominate.
    """
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    rows = torch.arange(len(y), device=y.device)

    @torch.no_grad()
    def closure() -> torch.Tensor:
        log_p = torch.log_softmax(torch.addmm(layer.bias, x, layer.weight.T), dim=1)
        loss = -log_p[rows, y].mean() + weight_decay * layer.weight.pow(2).sum()
        residual = log_p.exp()
        residual[rows, y] -= 1
        residual /= len(y)
        layer.weight.grad = residual.T @ x + 2 * weight_decay * layer.weight
        layer.bias.grad = residual.sum(dim=0)
        return loss

    optimizer.step(closure)


def fit_linear_probe(encoder: Encoder, train_ds: VisionDataset, val_ds: VisionDataset, *,
                     device: str | torch.device = "cpu", batch_size: int = 256, precision: str = "fp32",
                     weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS, max_iter: int = 100,
                     train_indices: Sequence[int] | None = None,
                     val_indices: Sequence[int] | None = None) -> tuple[LinearClassifier, dict[str, Any]]:
    """Fit a linear classifier on the frozen encoder's embeddings; choose the weight decay on ``val_ds``.

    Features are standardized with the training statistics (so one weight-decay grid suits any encoder) and
    the standardization is folded into the returned head, which therefore takes raw embeddings ``(B, D)``.
    For each weight decay (strongest first, warm-starting the next) the multinomial logistic loss
    ``CE + wd * ||W||^2`` is minimized by full-batch L-BFGS; the decay with the best validation accuracy wins
    (ties go to the stronger decay).

    Returns ``(head, info)``; ``info`` holds ``val_accuracy``, ``train_accuracy``, ``weight_decay``,
    ``val_accuracy_by_weight_decay``, ``n_train`` and ``n_val``. The head is on ``device``, in eval mode.
    """
    _check_selection_splits(train_ds, val_ds, train_indices, val_indices)
    for ds in (train_ds, val_ds):
        ds.require("label", purpose="a linear probe")
    if not weight_decays or any(not (wd >= 0 and math.isfinite(wd)) for wd in weight_decays):
        raise ValueError(f"weight_decays must be a non-empty list of finite values >= 0, "
                         f"got {weight_decays!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    device = resolve_device(device)
    x_tr, t_tr = extract_features(encoder, train_ds, "embed", batch_size, device, precision, train_indices)
    x_va, t_va = extract_features(encoder, val_ds, "embed", batch_size, device, precision, val_indices)
    y_tr, y_va = t_tr["label"].long(), t_va["label"].long()
    num_classes = _num_classes(train_ds, torch.cat([y_tr, y_va]))
    if torch.isnan(x_tr).any() or torch.isnan(x_va).any():
        raise ValueError(f"encoder {encoder.name!r} produced NaN embeddings; cannot fit a probe")

    mean, std = x_tr.mean(0), x_tr.std(0, unbiased=False).clamp_min(1e-6)
    x_tr, x_va = ((x_tr - mean) / std).to(device), ((x_va - mean) / std).to(device)
    y_tr, y_va = y_tr.to(device), y_va.to(device)
    layer = nn.Linear(x_tr.shape[1], num_classes).to(device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    best: tuple[float, float, dict[str, torch.Tensor]] | None = None
    scores: dict[float, float] = {}
    for wd in sorted(weight_decays, reverse=True):
        _lbfgs_fit(x_tr, y_tr, layer, float(wd), max_iter)
        with torch.no_grad():
            val_acc = float((layer(x_va).argmax(1) == y_va).float().mean())
        scores[float(wd)] = val_acc
        if best is None or val_acc > best[0]:
            best = (val_acc, float(wd), copy.deepcopy(layer.state_dict()))
    assert best is not None
    val_acc, wd, state = best
    layer.load_state_dict(state)

    head = LinearClassifier(x_tr.shape[1], num_classes).to(device)
    with torch.no_grad():
        # fold (z - mean) / std into the affine map: W' = W / std, b' = b - W' @ mean
        weight = layer.weight / std.to(device)
        head.linear.weight.copy_(weight)
        head.linear.bias.copy_(layer.bias - weight @ mean.to(device))
        train_acc = float((layer(x_tr).argmax(1) == y_tr).float().mean())
    head.eval()
    info = {"val_accuracy": val_acc, "train_accuracy": train_acc, "weight_decay": wd,
            "val_accuracy_by_weight_decay": scores, "n_train": len(y_tr), "n_val": len(y_va)}
    return head, info


# --- dense heads --------------------------------------------------------------------------------------------
def silog_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014): ``sqrt(mean(g^2) - 0.85 * mean(g)^2)``,
    ``g = log(pred) - log(target)`` over ``valid`` pixels. ``pred`` must be positive there."""
    g = torch.log(pred[valid]) - torch.log(target[valid])
    return torch.sqrt((g.pow(2).mean() - SILOG_LAMBDA * g.mean().pow(2)).clamp_min(1e-12))


def _dense_loss(task: str, depth_loss: str, output: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor | None:
    if task == "segmentation":
        if bool((target == IGNORE_INDEX).all()):
            return None
        return F.cross_entropy(output, target.long(), ignore_index=IGNORE_INDEX)
    depth = output[:, 0]
    valid = torch.isfinite(target) & (target > 0)
    if not bool(valid.any()):
        return None
    if depth_loss == "silog":
        return silog_loss(depth, target, valid)
    return (depth[valid] - target[valid]).abs().mean()


def _dense_metrics(task: str, head: nn.Module, features: torch.Tensor, target: torch.Tensor,
                   device: torch.device, batch_size: int,
                   depth_range: tuple[float, float] | None) -> dict[str, float]:
    meter: SegmentationMeter | DepthMeter
    if task == "segmentation":
        meter = SegmentationMeter(head.num_classes)
    else:
        low, high = depth_range if depth_range is not None else (None, None)
        meter = DepthMeter(min_depth=low, max_depth=high)
    head.eval()
    with torch.no_grad():
        for start in range(0, features.shape[0], batch_size):
            f = features[start:start + batch_size].to(device)
            t = target[start:start + batch_size]
            meter.update(head(f, size=tuple(t.shape[-2:])).float().cpu(), t)
    return meter.compute()


def fit_dense_head(encoder: Encoder, train_ds: VisionDataset, val_ds: VisionDataset,
                   task: str = "segmentation", *, epochs: int = 20, lr: float = 1e-3,
                   device: str | torch.device = "cpu", batch_size: int = 32, feature_batch_size: int = 256,
                   precision: str = "fp32", weight_decay: float = 0.0, depth_loss: str = "silog",
                   generator: torch.Generator | None = None, train_indices: Sequence[int] | None = None,
                   val_indices: Sequence[int] | None = None,
                   **head_kwargs: Any) -> tuple[SegmentationHead | DepthHead, dict[str, Any]]:
    """Train a segmentation or depth head on the frozen encoder's cached dense features.

    Segmentation: :class:`SegmentationHead`, cross-entropy with ignore index 255, selected by validation mIoU.
    Depth: :class:`DepthHead` (``head_kwargs`` such as ``mode``, ``n_bins``, ``bin_spacing``) over the
    dataset's ``depth_range``, SILog (default) or L1 loss on valid pixels, selected by validation RMSE.
    Minibatches are shuffled with ``generator`` (default: seed 0). Returns ``(head, info)`` with the head of
    the best epoch (on ``device``, eval mode) and ``info`` = ``best_epoch``, the validation metrics of that
    epoch, and ``history`` (per epoch: mean train loss and validation metrics).
    """
    if task not in DENSE_TASKS:
        raise ValueError(f"unknown dense task {task!r}; accepted: {', '.join(DENSE_TASKS)}")
    if depth_loss not in DEPTH_LOSSES:
        raise ValueError(f"unknown depth_loss {depth_loss!r}; accepted: {', '.join(DEPTH_LOSSES)}")
    if epochs < 1 or not lr > 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 1, lr > 0 and batch_size >= 1; got epochs={epochs}, lr={lr}, "
                         f"batch_size={batch_size}")
    _check_selection_splits(train_ds, val_ds, train_indices, val_indices)
    key = "mask" if task == "segmentation" else "depth"
    for ds in (train_ds, val_ds):
        ds.require(key, purpose=f"a {task} head")
    device = resolve_device(device)
    fbs = feature_batch_size
    f_tr, t_tr = extract_features(encoder, train_ds, "dense", fbs, device, precision, train_indices)
    f_va, t_va = extract_features(encoder, val_ds, "dense", fbs, device, precision, val_indices)
    y_tr, y_va = t_tr[key], t_va[key]

    depth_range: tuple[float, float] | None = None
    head: SegmentationHead | DepthHead
    if task == "segmentation":
        classes = _mask_classes(train_ds, torch.cat([y_tr.flatten(), y_va.flatten()]))
        head = SegmentationHead(encoder.dense_dim, classes, **head_kwargs)
    else:
        depth_range = _depth_range(train_ds, y_tr)
        head = DepthHead(encoder.dense_dim, min_depth=depth_range[0], max_depth=depth_range[1], **head_kwargs)
    head.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = generator if generator is not None else make_generator(0)
    higher_is_better = task == "segmentation"
    select = "miou" if task == "segmentation" else "rmse"
    best: tuple[float, int, dict[str, torch.Tensor], dict[str, float]] | None = None
    history = []
    for epoch in progress(range(epochs), desc=f"{task} head"):
        head.train()
        order = torch.randperm(f_tr.shape[0], generator=generator)
        total, steps = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # BatchNorm cannot train on a single sample
            target = y_tr[idx].to(device)
            output = head(f_tr[idx].to(device), size=tuple(target.shape[-2:]))
            loss = _dense_loss(task, depth_loss, output, target)
            if loss is None:
                continue
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        val = _dense_metrics(task, head, f_va, y_va, device, feature_batch_size, depth_range)
        history.append({"epoch": epoch, "train_loss": total / max(steps, 1), **val})
        score = val[select] if higher_is_better else -val[select]
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(head.state_dict()), val)
    assert best is not None
    head.load_state_dict(best[2])
    head.eval()
    info = {"best_epoch": best[1], **{f"val_{k}": v for k, v in best[3].items()}, "history": history,
            "n_train": f_tr.shape[0], "n_val": f_va.shape[0]}
    return head, info


def _depth_range(dataset: VisionDataset, depth: torch.Tensor) -> tuple[float, float]:
    if dataset.depth_range is not None:
        low, high = (float(d) for d in dataset.depth_range)
        return low, high
    valid = depth[torch.isfinite(depth) & (depth > 0)]
    if valid.numel() == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no valid depth pixels (> 0)")
    # no declared range: span the training depths (a single depth value gets a small margin)
    low, high = float(valid.min()), float(valid.max())
    return (low, high) if high > low else (low * 0.5, high * 2.0)


# --- evaluation ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(task_model: TaskModel, dataset: VisionDataset, *, batch_size: int = 64,
             device: str | torch.device = "cpu", precision: str = "fp32",
             indices: Sequence[int] | None = None, confidence: float = 0.95) -> dict[str, float]:
    """The task's metrics of ``task_model`` on ``dataset`` (or its ``indices``), with ``n`` = samples used.

    - classification: ``top1``, ``top5`` (when K >= 5), ``top1_ci_low``/``top1_ci_high`` (Wilson interval at
      ``confidence``), ``ece`` (15 bins);
    - segmentation: ``miou``, ``mean_accuracy``, ``pixel_accuracy`` (ignore index 255);
    - depth: ``rmse``, ``abs_rel``, ``delta1..3`` pixel-pooled over valid pixels, predictions clamped to the
      dataset's ``depth_range`` when it has one.

    The model is moved to ``device`` and run in eval mode; its previous mode is restored afterwards.
    """
    task = task_model.task
    if task == "embedding":
        raise ValueError("evaluate has no metric for task 'embedding'; compare embeddings with "
                         "robustssl.metrics.embedding_drift")
    key = {"classification": "label", "segmentation": "mask", "depth": "depth"}[task]
    dataset.require(key, purpose=f"evaluating a {task} model")
    device = resolve_device(device)
    was_training = task_model.training
    task_model.to(device).eval()
    meters: list[Any] = []
    n = 0
    try:
        total = len(indices) if indices is not None else len(dataset)
        bar = progress(desc=f"evaluate {dataset.name}/{dataset.split}", total=total, unit="img")
        for batch in dataset.batches(batch_size, indices=indices):
            x, target = batch["image"].to(device), batch[key]
            with autocast(device, precision):
                output = task_model(x)
            output = output.float().cpu()
            if not meters:
                meters = _make_meters(task, output, dataset)
            if task == "classification":
                meters[0].update(output, target)
                meters[1].update(output.softmax(dim=1), target)
            else:
                meters[0].update(output, target)
            n += x.shape[0]
            bar.update(x.shape[0])
        bar.close()
    finally:
        task_model.train(was_training)
    if n == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no samples to evaluate")
    result: dict[str, float] = {}
    for meter in meters:
        result.update(meter.compute())
    if task == "classification":
        result["top1_ci_low"], result["top1_ci_high"] = accuracy_interval(result["top1"], n, confidence)
    result["n"] = n
    return result


def _make_meters(task: str, output: torch.Tensor, dataset: VisionDataset) -> list[Any]:
    if task == "classification":
        return [AccuracyMeter((1, 5)), CalibrationMeter()]
    if task == "segmentation":
        return [SegmentationMeter(output.shape[1])]
    low, high = dataset.depth_range if dataset.depth_range is not None else (None, None)
    return [DepthMeter(min_depth=low, max_depth=high)]
