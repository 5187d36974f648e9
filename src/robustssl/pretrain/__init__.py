"""Pretraining: one trainer, one file per method, all behind ``METHODS``."""

from robustssl.pretrain import simclr  # noqa: F401  (registers the method)
from robustssl.pretrain import acl, advcl, deacl  # noqa: F401  (register the adversarial contrastive methods)
from robustssl.pretrain import jigsaw, pretext_ensemble, rotation, selfie  # noqa: F401  (registers them)
from robustssl.pretrain import masked_image  # noqa: F401  (registers mae and nim)
from robustssl.pretrain.losses import nt_xent
from robustssl.pretrain.method import METHODS, PretrainMethod, build_method, method_options
from robustssl.pretrain.trainer import TrainConfig, train

__all__ = ["METHODS", "PretrainMethod", "build_method", "method_options", "TrainConfig", "nt_xent", "train"]
