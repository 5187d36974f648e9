"""Pretraining: one trainer, one file per method, all behind ``METHODS``."""

from robustssl.pretrain import simclr  # noqa: F401  (registers the method)
from robustssl.pretrain.losses import nt_xent
from robustssl.pretrain.method import METHODS, PretrainMethod
from robustssl.pretrain.trainer import TrainConfig, train

__all__ = ["METHODS", "PretrainMethod", "TrainConfig", "nt_xent", "train"]
