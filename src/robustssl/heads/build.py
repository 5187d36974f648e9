"""``build(task, encoder, ...)`` -> a ``TaskModel`` with a freshly initialized head of the right size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.heads.classifier import LinearClassifier
from robustssl.heads.depth import DepthHead
from robustssl.heads.segmentation import SegmentationHead
from robustssl.heads.task_model import TASKS, TaskModel


def build_head(task: str, encoder: Encoder, *, num_classes: int | None = None,
               depth_range: Sequence[float] | None = None, **kwargs: Any) -> nn.Module | None:
    """The head for ``task`` sized to ``encoder`` (``None`` for ``embedding``).

    ``classification``/``segmentation`` need ``num_classes``; ``depth`` needs ``depth_range=(min, max)``
    metres (a dataset's ``depth_range``); extra ``kwargs`` go to the head (``mode``, ``n_bins``, ...).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    if task == "embedding":
        if kwargs or num_classes is not None or depth_range is not None:
            raise ValueError("task 'embedding' takes no head, so no num_classes, depth_range or head options")
        return None
    if task in ("classification", "segmentation"):
        if num_classes is None:
            raise ValueError(f"task {task!r} needs num_classes (the dataset's num_classes); got None")
        if depth_range is not None:
            raise ValueError(f"task {task!r} takes no depth_range")
        if task == "classification":
            return LinearClassifier(encoder.embed_dim, num_classes, **kwargs)
        return SegmentationHead(encoder.dense_dim, num_classes, **kwargs)
    if depth_range is None:
        raise ValueError("task 'depth' needs depth_range=(min_depth, max_depth) in metres "
                         "(the dataset's depth_range); got None")
    if num_classes is not None:
        raise ValueError("task 'depth' takes no num_classes")
    if len(depth_range) != 2:
        raise ValueError(f"depth_range must be (min_depth, max_depth), got {tuple(depth_range)!r}")
    low, high = (float(d) for d in depth_range)
    return DepthHead(encoder.dense_dim, min_depth=low, max_depth=high, **kwargs)


def build(task: str, encoder: Encoder, *, num_classes: int | None = None,
          depth_range: Sequence[float] | None = None, **kwargs: Any) -> TaskModel:
    """``TaskModel(encoder, build_head(task, encoder, ...), task)``; see :func:`build_head`."""
    head = build_head(task, encoder, num_classes=num_classes, depth_range=depth_range, **kwargs)
    return TaskModel(encoder, head, task)
