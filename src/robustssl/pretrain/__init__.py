"""Pretraining: one trainer, one file per method, all behind ``METHODS``."""

from robustssl.pretrain import (  # noqa: F401  (register the adversarial contrastive methods)  # noqa: F401  (registers them)
    acl,
    advcl,
    deacl,
    jigsaw,
    masked_image,  # noqa: F401  (registers mae and nim)
    pretext_ensemble,
    rotation,
    selfie,
    simclr,  # noqa: F401  (registers the method)
)
from robustssl.pretrain.losses import nt_xent
from robustssl.pretrain.method import METHODS, PretrainMethod, build_method, method_options
from robustssl.pretrain.trainer import TrainConfig, train

__all__ = ["METHODS", "PretrainMethod", "build_method", "method_options", "TrainConfig", "nt_xent", "train"]
