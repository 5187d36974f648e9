"""Heads on top of an encoder, and ``TaskModel`` = encoder + head.

>>> model = build("segmentation", encoder, num_classes=8)      # BN + 1x1 conv on encoder.dense
>>> model = build("depth", encoder, depth_range=(0.5, 10.0))    # DINOv2-style 256-bin linear head
"""

from robustssl.heads.build import build, build_head
from robustssl.heads.classifier import LinearClassifier
from robustssl.heads.depth import BIN_SPACINGS, DEPTH_MODES, DepthHead, depth_bins
from robustssl.heads.segmentation import SegmentationHead
from robustssl.heads.task_model import TASKS, TaskModel

__all__ = ["BIN_SPACINGS", "DEPTH_MODES", "TASKS", "DepthHead", "LinearClassifier", "SegmentationHead",
           "TaskModel", "build", "build_head", "depth_bins"]
