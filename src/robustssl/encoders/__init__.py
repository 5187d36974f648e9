"""Encoders: ``create(name, **kw)``, ``names(pattern)``, ``load(path)``, ``save(encoder, path)``.

Built-ins: ``resnet18_cifar``, ``resnet50_cifar``, ``convnet_small``, ``vit_tiny``, ``vit_small``; adapters:
``timm:<model>``, ``torchvision:<model>``, ``from_module(module, embed_fn, ...)``. See ``base.py`` for the
contract every encoder keeps (images in [0, 1], normalization inside, ``embed``/``dense``).
"""

# Importing the architecture modules registers the built-in names.
from robustssl.encoders import convnet, resnet, vit  # noqa: F401
from robustssl.encoders.adapters import from_module, import_timm, import_torchvision
from robustssl.encoders.base import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Encoder, Normalize
from robustssl.encoders.batchnorm import DualBatchNorm2d, bn_branch, get_bn_branch, set_bn_branch
from robustssl.encoders.checkpoints import (
    LoadReport,
    load,
    load_into,
    load_state,
    load_with_report,
    save,
    save_state,
)
from robustssl.encoders.factory import ENCODERS, create, names, register

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DualBatchNorm2d",
    "Encoder",
    "LoadReport",
    "Normalize",
    "bn_branch",
    "create",
    "from_module",
    "get_bn_branch",
    "import_timm",
    "import_torchvision",
    "load",
    "load_into",
    "load_state",
    "load_with_report",
    "names",
    "register",
    "save",
    "save_state",
    "set_bn_branch",
]
