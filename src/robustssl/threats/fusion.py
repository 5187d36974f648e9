"""Fold eval-mode batch norm into the layer before it, for the attack's own forward and backward passes.

A model in eval mode computes ``bn(conv(x)) = conv'(x)`` with ``conv'`` the convolution whose weights and bias
absorb the running statistics and the affine parameters; the function and its input gradient are the same
up to float rounding, and one elementwise pass less per layer forward and backward makes an attack step on a
CIFAR ResNet-18 markedly cheaper on CPU (``benchmarks/attacks.py``). ``fold_batch_norm(model)`` returns a
folded *view* of the model for attacks that only need ``forward``:

- The model itself is never changed: the folded layers are new modules in a new ``fx.GraphModule``; every
  other submodule is shared with the model (no copy of unfolded weights).
- Folded: ``Conv1d/2d/3d`` or ``Linear`` followed directly by ``BatchNorm`` (1d/2d/3d, or the branch a
  ``DualBatchNorm2d`` routes to at the time of the call), when the convolution's output feeds only that
  batch norm and the batch norm is in eval mode with running statistics.
- Only modules of PyTorch, robustssl, timm and torchvision are traced: tracing records tensor operations and
  would silently drop or freeze a forward's Python side effects (a query counter in a user's wrapper, say),
  so a module of any other class is left as it is, children included.
- A model whose ``forward`` ``torch.fx`` cannot trace (it branches on the data) is left as it is: the folded
  view is one graph of the whole forward pass, the only entry point an attack calls. (robustssl's input check
  is registered with ``torch.fx.wrap``, so its encoders and task models trace whole and the folded view
  still checks its input.)
- On CPU the folded 2-D convolutions keep their weights in channels-last layout, which oneDNN's kernels run
  faster; the output is the same up to rounding.
- Returned unchanged: anything that is not an ``nn.Module``, a module with a batch norm in training mode
  (its output depends on the batch), a module with hooks (a folded copy would bypass them), a forward that
  takes a ``generator`` (randomized models under EOT), and a module without such pairs.

``robustssl.threats.attack`` folds by default (``fold_bn=True``) and judges every result on the model as
given, so a verdict never rests on the rounding difference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from robustssl.runtime.logging import get_logger

_LOG = get_logger(__name__)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRUSTED_PACKAGES = ("torch", "robustssl", "timm", "torchvision")


def fold_batch_norm(model: Any) -> Any:
    """A view of ``model`` with eval-mode batch norm folded into the preceding convolution or linear layer
    (see the module docstring for what is folded and what is returned unchanged)."""
    from robustssl.threats.attacks.eot import accepts_generator

    if not isinstance(model, nn.Module) or accepts_generator(model):
        return model
    batch_norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    if not batch_norms or any(m.training or m.running_mean is None for m in batch_norms):
        return model
    if _has_hooks(model):
        return model
    return _fold(model)


def _has_hooks(model: nn.Module) -> bool:
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, name, None) for m in model.modules() for name in hook_dicts)


def _traceable_class(module: nn.Module) -> bool:
    """Classes whose ``forward`` is known to be a pure function of the input and the module's state (no
    counters, logging or other Python side effects, which ``torch.fx`` tracing would silently drop or freeze):
    PyTorch's, robustssl's, timm's and torchvision's. Anything else is left alone, children included."""
    return type(module).__module__.split(".")[0] in _TRUSTED_PACKAGES


def _fold(module: nn.Module) -> nn.Module:
    if not _traceable_class(module):
        return module
    try:
        graph_module = fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: leave the model as it is
        _LOG.debug("fold_batch_norm: %s is not traceable (%s); left as it is", type(module).__name__, exc)
        return module
    if not _fold_graph(graph_module):
        return module
    graph_module.train(module.training)
    return graph_module


def _fold_graph(graph_module: fx.GraphModule) -> bool:
    modules = dict(graph_module.named_modules())
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    changed = False
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCH_NORMS):
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            continue
        producer = node.args[0]
        layer = modules.get(producer.target) if producer.op == "call_module" else None
        norm = modules[node.target]
        if not isinstance(layer, (*_CONVS, nn.Linear)) or len(producer.users) != 1:
            continue
        if calls[producer.target] != 1 or norm.training or norm.running_mean is None:
            continue
        if isinstance(layer, nn.Linear) and not isinstance(norm, nn.BatchNorm1d):
            continue
        if not _owned_path(graph_module, producer.target):
            continue
        was_training = layer.training
        layer.train(False)  # the fusion utilities insist on eval-mode inputs; restored right after
        try:
            fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
            fused = fuse(layer, norm)
        finally:
            layer.train(was_training)
        fused.requires_grad_(False)
        if isinstance(fused, nn.Conv2d) and fused.weight.device.type == "cpu":
            # oneDNN's convolutions run faster in channels-last layout (measured 1.3x for a step of the
            # folded CIFAR ResNet-18 on CPU); a channels-last weight makes the convolution choose it. The
            # weight is the view's own, so the model's layout is untouched.
            fused.weight = nn.Parameter(
                fused.weight.detach().contiguous(memory_format=torch.channels_last), requires_grad=False
            )
        _set_submodule(graph_module, producer.target, fused)
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
        changed = True
    if changed:
        graph_module.graph.lint()
        graph_module.delete_all_unused_submodules()
        graph_module.recompile()
    return changed


def _owned_path(root: fx.GraphModule, target: str) -> bool:
    """True when every container on the way to ``target`` belongs to the graph module (the plain
    ``nn.Module`` holders ``GraphModule`` builds), so replacing the layer there cannot touch the model."""
    parent: nn.Module = root
    for part in target.split(".")[:-1]:
        parent = getattr(parent, part)
        if type(parent) is not nn.Module:
            return False
    return True


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    *path, name = target.split(".")
    parent = root
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, name, module)
