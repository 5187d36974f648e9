"""Encoders from other libraries: ``timm:<model>``, ``torchvision:<model>`` and ``from_module(...)``.

All three keep the ``Encoder`` contract: images in [0, 1], normalization inside (timm: the model's
``pretrained_cfg`` mean/std; torchvision: ImageNet statistics; ``from_module``: what the caller states).
Models are built with random weights (``pretrained=False`` / ``weights=None``: nothing is downloaded); load
weights with ``robustssl.encoders.load(path, name="timm:...")``.

torchvision and timm are imported only through :func:`import_torchvision` / :func:`import_timm`, the one place
that works around a torchvision wheel whose C extension cannot load (see there).
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from robustssl.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder

# Operators that torchvision's Python side registers fake (meta) kernels for at import time; if its C
# extension did not load they do not exist and the import fails. Schemas as torchvision's csrc defines them.
_TORCHVISION_FALLBACK_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# The Library object must stay alive: its definitions are removed when it is garbage-collected.
_fallback_library: list[torch.library.Library] = []


def _forget_modules(*packages: str) -> None:
    for key in [k for k in sys.modules if k.split(".")[0] in packages]:
        del sys.modules[key]


def import_torchvision() -> ModuleType:
    """Import and return ``torchvision``, working around a C extension that cannot be loaded.

    A torchvision wheel built for another torch (here: a CUDA build of torchvision 0.28 next to the CPU torch)
    fails to load its C extension, which torchvision tolerates, but its ``_meta_registrations`` then registers
    fake kernels for ``torchvision::nms``/``qnms`` and the import dies with "operator torchvision::nms does
    not exist". When, and only when, that happens, the missing operator *schemas* are defined with
    ``torch.library`` (no kernels: detection ops such as ``torchvision.ops.nms`` stay unusable, which the
    encoders never need) and the import is retried. A working torchvision is imported untouched.
    """
    try:
        import torchvision

        return torchvision
    except ImportError as exc:
        raise ImportError("torchvision is not installed; install the timm extra: "
                          "pip install -c constraints.txt 'robustssl[timm]'") from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        failure = exc
    # The failed import left half-initialised modules behind (timm's too, if it triggered the import).
    _forget_modules("torchvision", "timm")
    if not _fallback_library:
        _fallback_library.append(torch.library.Library("torchvision", "FRAGMENT"))
    for op, schema in _TORCHVISION_FALLBACK_SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, op):
            _fallback_library[0].define(schema)
    try:
        import torchvision
    except RuntimeError as exc:
        raise RuntimeError(f"torchvision cannot be imported even with the operator-schema workaround: {exc} "
                           f"(first failure: {failure})") from exc
    return torchvision


def import_timm() -> ModuleType:
    """Import and return ``timm`` (after :func:`import_torchvision`, which timm imports)."""
    import_torchvision()
    try:
        import timm
    except ImportError as exc:
        raise ImportError("timm is not installed; install the timm extra: "
                          "pip install -c constraints.txt 'robustssl[timm]'") from exc
    return timm


def _reject_pretrained(kwargs: dict[str, Any], key: str, where: str) -> None:
    if kwargs.get(key) not in (None, False):
        raise ValueError(f"{where}: {key}={kwargs[key]!r} would download weights; robustssl builds random "
                         "weights and loads checkpoints with robustssl.encoders.load(path, name=...)")
    kwargs.pop(key, None)


class TimmEncoder(Encoder):
    """A timm model (``num_classes=0``) behind the ``Encoder`` contract.

    ``embed``: the model's pooled pre-logits, ``(B, num_features)``. ``dense``: ``forward_features``; token
    models (ViT, DeiT, ...) have their prefix tokens dropped and patch tokens reshaped to
    ``(B, D, H / patch, W / patch)``. Keyword arguments go to ``timm.create_model`` (e.g. ``img_size=64``);
    ``mean``/``std`` override the ``pretrained_cfg`` statistics.
    """

    def __init__(self, model_name: str, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **timm_kwargs: Any):
        timm = import_timm()
        _reject_pretrained(timm_kwargs, "pretrained", f"timm:{model_name}")
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=5)
            raise ValueError(f"unknown timm model {model_name!r}; closest timm names: "
                             f"{', '.join(close) or 'none'} (list: robustssl.encoders.names('timm:*pat*'))")
        timm_kwargs.pop("num_classes", None)
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
        cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        super().__init__(mean if mean is not None else cfg.get("mean", IMAGENET_MEAN),
                         std if std is not None else cfg.get("std", IMAGENET_STD))
        self.model = model
        self.is_token_model = hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")
        self.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        if self.is_token_model:
            patch = tuple(model.patch_embed.patch_size)
            if patch[0] != patch[1]:
                raise ValueError(f"timm:{model_name}: non-square patches {patch} are not supported")
            self.stride = int(patch[0])
            self.dense_dim = int(getattr(model, "embed_dim", model.num_features))
        else:
            self.stride = int(model.feature_info[-1]["reduction"])
            self.dense_dim = int(model.num_features)
        self.output_fmt = str(getattr(model, "output_fmt", "NCHW"))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.dim() == 3:
            h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
            patches = feats[:, self.model.num_prefix_tokens:]
            if patches.shape[1] != h * w:
                raise ValueError(f"{self.name}: {patches.shape[1]} patch tokens do not form the {h}x{w} grid "
                                 f"of a {x.shape[-2]}x{x.shape[-1]} input")
            return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        if self.output_fmt == "NHWC":
            return feats.permute(0, 3, 1, 2)
        return feats


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for a probing forward (no BN statistics updated); every submodule's own mode is restored."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# torchvision classes whose forward is their children in order, so the dense map is everything before
# ``avgpool`` (DenseNet has no avgpool child and applies a ReLU to ``features``).
_SEQUENTIAL_FAMILIES = ("ResNet", "RegNet", "EfficientNet", "MobileNetV2", "MobileNetV3", "ConvNeXt", "VGG",
                        "SwinTransformer")
_DENSE_FAMILIES = (*_SEQUENTIAL_FAMILIES, "DenseNet", "VisionTransformer")


def _replace_module(root: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


class TorchvisionEncoder(Encoder):
    """A ``torchvision.models`` classifier with its last ``Linear`` replaced by the identity.

    ``embed``: the classifier's input, ``(B, in_features)`` (e.g. 512 for resnet18, the CLS token for
    vit_b_16). ``dense``: the last feature map for ResNet, RegNet, EfficientNet, MobileNet, ConvNeXt, VGG,
    Swin and DenseNet (stride 32), patch tokens for ViT; other families raise a clear error on ``dense``.
    Keyword arguments go to ``torchvision.models.get_model`` (``weights`` must stay None).
    """

    def __init__(self, model_name: str, *, mean: Sequence[float] | None = IMAGENET_MEAN,
                 std: Sequence[float] | None = IMAGENET_STD, **tv_kwargs: Any):
        models = import_torchvision().models
        _reject_pretrained(tv_kwargs, "weights", f"torchvision:{model_name}")
        available = models.list_models(module=models)
        if model_name not in available:
            from robustssl.registry import UnknownNameError

            raise UnknownNameError("torchvision classification model", model_name, sorted(available))
        model = models.get_model(model_name, weights=None, **tv_kwargs)
        super().__init__(mean, std)
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"torchvision:{model_name} has no Linear classifier to remove")
        head_name, head = linears[-1]
        _replace_module(model, head_name, nn.Identity())
        self.model, self.family = model, type(model).__name__
        self.embed_dim = int(head.in_features)
        self.dense_dim, self.stride = 0, 0
        if self.family == "VisionTransformer":
            self.dense_dim, self.stride = int(model.hidden_dim), int(model.patch_size)
        elif self.family in _DENSE_FAMILIES:
            self.dense_dim, self.stride = self._probe_dense()

    def _probe_dense(self) -> tuple[int, int]:
        # One 64x64 forward (eval, no grad) measures channels and stride exactly instead of tabulating them.
        size = 64
        param = next(self.model.parameters())
        with _eval_mode(self), torch.no_grad():
            out = self._dense(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
        return int(out.shape[1]), size // int(out.shape[-2])

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.family == "VisionTransformer":
            tokens = m._process_input(x)
            tokens = m.encoder(torch.cat([m.class_token.expand(x.shape[0], -1, -1), tokens], dim=1))
            h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
            return tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        if self.family == "DenseNet":
            return torch.relu(m.features(x))
        if self.family in _SEQUENTIAL_FAMILIES:
            for name, child in m.named_children():
                if name == "avgpool":
                    return x
                x = child(x)
        raise NotImplementedError(f"{self.name}: dense() is not available for torchvision {self.family} "
                                  f"models; supported families: {', '.join(_DENSE_FAMILIES)} (embed() works)")


EmbedFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class ModuleEncoder(Encoder):
    """Any ``nn.Module`` with caller-given functions; built by :func:`from_module`."""

    def __init__(self, module: nn.Module, embed_fn: EmbedFn, dense_fn: EmbedFn | None, *,
                 mean: Sequence[float] | None, std: Sequence[float] | None, embed_dim: int | None,
                 dense_dim: int | None, stride: int | None, probe_size: int):
        super().__init__(mean, std)
        self.module, self.embed_fn, self.dense_fn = module, embed_fn, dense_fn
        self.training = module.training  # the wrapper starts in the module's mode
        self.name = f"module:{type(module).__name__}"
        if embed_dim is None or (dense_fn is not None and (dense_dim is None or stride is None)):
            probe_embed, probe_dense, probe_stride = self._probe(probe_size)
            embed_dim = embed_dim if embed_dim is not None else probe_embed
            dense_dim = dense_dim if dense_dim is not None else probe_dense
            stride = stride if stride is not None else probe_stride
        self.embed_dim = int(embed_dim)
        self.dense_dim, self.stride = int(dense_dim or 0), int(stride or 0)

    def _probe(self, size: int) -> tuple[int, int, int]:
        # Shapes from one forward on zeros (eval, no grad) on the module's device.
        param = next(iter(self.module.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        with _eval_mode(self), torch.no_grad():
            x = torch.zeros(1, 3, size, size, device=device)
            emb = self._embed(x)
            if emb.dim() != 2:
                raise ValueError(f"from_module: embed_fn must return (B, D), got shape {tuple(emb.shape)}")
            dense_dim = stride = 0
            if self.dense_fn is not None:
                dense = self._dense(x)
                if dense.dim() != 4:
                    raise ValueError("from_module: dense_fn must return (B, C, h, w), got shape "
                                     f"{tuple(dense.shape)}")
                dense_dim, stride = int(dense.shape[1]), size // int(dense.shape[-2])
        return int(emb.shape[1]), dense_dim, stride

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_fn(self.module, x)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_fn is None:
            raise NotImplementedError(f"{self.name}: no dense_fn was given to from_module, so dense() is "
                                      "unavailable")
        return self.dense_fn(self.module, x)


def from_module(module: nn.Module, embed_fn: EmbedFn, dense_fn: EmbedFn | None = None, *,
                mean: Sequence[float] | None, std: Sequence[float] | None, embed_dim: int | None = None,
                dense_dim: int | None = None, stride: int | None = None,
                probe_size: int = 32) -> ModuleEncoder:
    """Wrap any ``nn.Module`` as an ``Encoder``.

    embed_fn(module, x) -> ``(B, D)`` and dense_fn(module, x) -> ``(B, C, h, w)`` receive *normalized* images
    (``(x - mean) / std``; pass ``mean=None, std=None`` when the module takes [0, 1] images). Unknown dims and
    stride are measured with one forward on a ``probe_size`` square of zeros.
    Example: ``from_module(net, lambda m, x: m.features(x).mean((2, 3)), mean=IMAGENET_MEAN,
    std=IMAGENET_STD)``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module expects an nn.Module, got {type(module).__name__}")
    if not callable(embed_fn) or (dense_fn is not None and not callable(dense_fn)):
        raise TypeError("embed_fn and dense_fn must be callables taking (module, x)")
    return ModuleEncoder(module, embed_fn, dense_fn, mean=mean, std=std, embed_dim=embed_dim,
                         dense_dim=dense_dim, stride=stride, probe_size=probe_size)
