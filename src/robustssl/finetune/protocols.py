"""``finetune(encoder, train_ds, val_ds, task=..., protocol=...)``: the four fine-tuning protocols.

======  ===============  ===========================================  ==================  ================
name    encoder          the head (and encoder) learn from            solver              selection (val)
======  ===============  ===========================================  ==================  ================
slf     frozen           clean images, features cached once           L-BFGS; Adam for    weight decay or
                                                                      dense heads         epoch, clean
alf     frozen           PGD examples through the frozen encoder      SGD                 lr, wd, epoch;
                         (ALF, Fan et al. 2021)                                           robust
aff     fine-tuned copy  PGD-AT (Madry et al. 2018) or TRADES         SGD                 lr, wd, epoch;
                         (Zhang et al. 2019) examples                                     robust
ft      fine-tuned copy  clean images                                 SGD                 lr, wd, epoch;
                                                                                          clean
======  ===============  ===========================================  ==================  ================

Frozen protocols never change the encoder's weights or buffers: it runs in eval mode (batch-norm statistics
fixed), no optimizer sees its parameters, and the returned model shares it (so the caller's encoder ends in
eval mode on ``device``). Full protocols fine-tune a deep copy; the caller's encoder is not touched.

Training-time examples come from :func:`robustssl.finetune.adversarial.craft_training_examples` (the attack
engine's PGD, model in **eval** mode while crafting, the last iterate). Defaults follow AdvCL's fine-tuning
(Fan et al. 2021, ``finetuning_advCL_SLF.py``): 25 epochs, SGD with momentum 0.9, weight decay 2e-4, the
learning rate divided by 10 at epochs 15 and 20 (60% and 80% of the run), L-inf eps 8/255, 10 steps of
2/255; learning rate 0.01 for ALF and 0.1 for full fine-tuning (their run scripts' AFF-TRADES setting);
TRADES beta 6 (Zhang et al. 2019).

Model selection (the epoch, and every learning rate x weight decay of the grid when ``lr`` or
``weight_decay`` is a list) uses only the validation data, by the validation metric (``top1``, ``miou``
or ``-rmse``), on adversarial validation examples (``select="robust"``: PGD with ``val_steps`` steps) or
clean ones (``"clean"``). A dataset whose ``split`` is ``"test"`` is refused as training or validation data.

Options (keyword arguments of :func:`finetune`; each protocol accepts only its own and names them on error):

- every protocol: ``batch_size`` (128), ``train_indices``/``val_indices`` (subsets; needed when ``train_ds``
  is ``val_ds``), ``val_fraction`` (0.1: part of ``train_ds`` held out when ``val_ds`` is None);
- ``slf`` classification: ``weight_decays`` (grid), ``max_iter`` (L-BFGS iterations per decay);
  ``slf`` dense: ``epochs`` (20), ``lr`` (1e-3), ``weight_decay`` (0);
- ``alf``/``aff``/``ft``: ``epochs`` (25), ``lr``, ``weight_decay`` (2e-4; each a number or a list),
  ``momentum`` (0.9), ``schedule`` (step, cosine, constant), ``optimizer`` (sgd, adam), ``select``,
  ``eps`` (8/255), ``norm`` (linf), ``steps`` (10), ``step_size`` (2/255), ``val_steps`` (10);
  ``aff`` also ``loss`` (trades, pgd-at) and, with TRADES, ``beta`` (6);
- depth: ``depth_loss`` (silog, l1) and ``head`` (``{"mode", "n_bins", "bin_spacing"}`` of ``DepthHead``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustssl.data.base import TensorDataset, VisionDataset
from robustssl.encoders.base import Encoder
from robustssl.finetune import adversarial
from robustssl.finetune.adversarial import TARGET_KEYS, TASKS, TRAINING_LOSSES, evaluate_under_attack
from robustssl.finetune.heads import (
    DEFAULT_WEIGHT_DECAYS,
    DEPTH_LOSSES,
    _check_selection_splits,
    _depth_range,
    _mask_classes,
    _num_classes,
    evaluate,
    fit_dense_head,
    fit_linear_probe,
    holdout_split,
)
from robustssl.heads.build import build_head
from robustssl.heads.depth import BIN_SPACINGS, DEPTH_MODES
from robustssl.heads.task_model import TaskModel
from robustssl.runtime.device import resolve_device
from robustssl.runtime.logging import get_logger
from robustssl.runtime.precision import autocast
from robustssl.runtime.progress import progress
from robustssl.runtime.seeding import make_generator, seeded_init
from robustssl.threats.threat_model import NORMS, ThreatModel

log = get_logger(__name__)

PROTOCOLS = ("slf", "alf", "aff", "ft")
FROZEN_PROTOCOLS = ("slf", "alf")
SELECTIONS = ("clean", "robust")
SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adam")
DEPTH_HEAD_OPTIONS = ("mode", "n_bins", "bin_spacing")
#: AdvCL's learning rates: 0.01 (argparse default) for linear fine-tuning, 0.1 in its AFF-TRADES scripts
DEFAULT_LR = {"alf": 0.01, "aff": 0.1, "ft": 0.1}
#: the metric each task selects on, and whether larger is better
SELECT_METRIC = {"classification": ("top1", True), "segmentation": ("miou", True), "depth": ("rmse", False)}


@dataclass
class FinetuneResult:
    """``model``: the ``TaskModel`` (eval mode, on the device); ``info``: a JSON-serializable summary."""

    model: TaskModel
    info: dict[str, Any] = field(default_factory=dict)


# --- options ----------------------------------------------------------------------------------------------
def _defaults(protocol: str, task: str, options: dict[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"batch_size": 128, "train_indices": None, "val_indices": None,
                                "val_fraction": 0.1}
    if protocol == "slf" and task == "classification":
        defaults.update(weight_decays=DEFAULT_WEIGHT_DECAYS, max_iter=100)
    elif protocol == "slf":
        defaults.update(epochs=20, lr=1e-3, weight_decay=0.0)
    else:
        defaults.update(epochs=25, lr=DEFAULT_LR[protocol], weight_decay=2e-4, momentum=0.9, schedule="step",
                        optimizer="sgd", select="clean" if protocol == "ft" else "robust", eps=8 / 255,
                        norm="linf", steps=10, step_size=2 / 255, val_steps=10)
    if protocol == "aff":
        defaults["loss"] = "trades"
        if options.get("loss", "trades") == "trades":
            defaults["beta"] = 6.0
    if task == "depth":
        defaults.update(depth_loss="silog", head={})
    return defaults


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"option {name!r} must be an int >= 1, got {value!r}")
    return value


def _number(name: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"option {name!r} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {value!r}")
    return float(value)


def _grid(name: str, value: Any, *, positive: bool) -> tuple[float, ...]:
    """A number or a non-empty list of numbers -> tuple (a selection grid)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"option {name!r} is an empty list; give a number or a list of numbers")
    return tuple(_number(name, v, positive=positive) for v in values)


def _choice(name: str, value: Any, accepted: Sequence[str]) -> str:
    if value not in accepted:
        raise ValueError(f"option {name!r}: unknown value {value!r}; accepted: {', '.join(accepted)}")
    return value


def _check_options(protocol: str, task: str, options: dict[str, Any]) -> dict[str, Any]:
    """The protocol's options with defaults filled in, every value checked."""
    defaults = _defaults(protocol, task, options)
    unknown = sorted(set(options) - set(defaults))
    if unknown == ["beta"] and protocol == "aff":
        raise ValueError(f"option 'beta' is TRADES' weight; it needs loss='trades', "
                         f"got loss={options['loss']!r}")
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for protocol {protocol!r} on "
                         f"task {task!r}; accepted: {', '.join(sorted(defaults))}")
    opts = {**defaults, **options}
    opts["batch_size"] = _positive_int("batch_size", opts["batch_size"])
    frac = opts["val_fraction"]
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 < frac < 1:
        raise ValueError(f"option 'val_fraction' must lie in (0, 1), got {frac!r}")
    for name in ("epochs", "max_iter", "steps", "val_steps"):
        if name in opts:
            opts[name] = _positive_int(name, opts[name])
    if protocol == "slf" and task != "classification":
        opts["lr"] = _number("lr", opts["lr"], positive=True)
        opts["weight_decay"] = _number("weight_decay", opts["weight_decay"], positive=False)
    elif protocol != "slf":
        opts["lr"] = _grid("lr", opts["lr"], positive=True)
        opts["weight_decay"] = _grid("weight_decay", opts["weight_decay"], positive=False)
        momentum = opts["momentum"]
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum < 1:
            raise ValueError(f"option 'momentum' must lie in [0, 1), got {momentum!r}")
        _choice("schedule", opts["schedule"], SCHEDULES)
        _choice("optimizer", opts["optimizer"], OPTIMIZERS)
        _choice("select", opts["select"], SELECTIONS)
        _choice("norm", opts["norm"], NORMS)
        opts["eps"] = _number("eps", opts["eps"], positive=False)
        ThreatModel(opts["norm"], opts["eps"])
        opts["step_size"] = _number("step_size", opts["step_size"], positive=True)
    if "loss" in opts:
        _choice("loss", opts["loss"], TRAINING_LOSSES)
    if "beta" in opts:
        opts["beta"] = _number("beta", opts["beta"], positive=False)
    if "depth_loss" in opts:
        _choice("depth_loss", opts["depth_loss"], DEPTH_LOSSES)
    if "head" in opts:
        head = opts["head"]
        if not isinstance(head, dict) or set(head) - set(DEPTH_HEAD_OPTIONS):
            raise ValueError(f"option 'head' must be a dict with keys among {', '.join(DEPTH_HEAD_OPTIONS)}, "
                             f"got {head!r}")
        if "mode" in head:
            _choice("head.mode", head["mode"], DEPTH_MODES)
        if "bin_spacing" in head:
            _choice("head.bin_spacing", head["bin_spacing"], BIN_SPACINGS)
        if "n_bins" in head:
            _positive_int("head.n_bins", head["n_bins"])
    return opts


# --- data -------------------------------------------------------------------------------------------------
def _check_indices(name: str, indices: Sequence[int] | None, n: int) -> list[int] | None:
    if indices is None:
        return None
    out = [int(i) for i in indices]
    if not out:
        raise ValueError(f"option {name!r} is empty; give at least one sample index")
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"option {name!r} holds indices outside [0, {n - 1}], e.g. {bad[:5]}")
    return out


def _splits(train_ds: VisionDataset, val_ds: VisionDataset | None, opts: dict[str, Any],
            seed: int) -> tuple[VisionDataset, list[int], list[int]]:
    """``(val_ds, train_indices, val_indices)``; without ``val_ds`` a ``val_fraction`` of the training
    samples (or of ``train_indices``) is held out for selection."""
    train_idx = _check_indices("train_indices", opts["train_indices"], len(train_ds))
    if val_ds is None and opts["val_indices"] is None:
        pool = train_idx if train_idx is not None else list(range(len(train_ds)))
        fit, held = holdout_split(len(pool), opts["val_fraction"], make_generator(seed))
        return train_ds, [pool[i] for i in fit], [pool[i] for i in held]
    val_ds = train_ds if val_ds is None else val_ds
    val_idx = _check_indices("val_indices", opts["val_indices"], len(val_ds))
    if train_ds is val_ds and (train_idx is None or val_idx is None):
        raise ValueError("train_ds and val_ds are the same dataset; pass disjoint train_indices and "
                         "val_indices (see holdout_split), or val_ds=None to hold out val_fraction of it")
    return (val_ds, train_idx if train_idx is not None else list(range(len(train_ds))),
            val_idx if val_idx is not None else list(range(len(val_ds))))


def _targets(dataset: VisionDataset, key: str, indices: list[int]) -> torch.Tensor:
    """The ``key`` targets of ``indices`` (in memory for tensor datasets, else one pass over the data)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[key][indices]
    return torch.cat([batch[key] for batch in dataset.batches(256, indices=indices)])


def _head_args(task: str, train_ds: VisionDataset, val_ds: VisionDataset, train_idx: list[int],
               val_idx: list[int], opts: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``build_head`` for the task: the class count or the depth range (+ options)."""
    if task == "classification":
        labels = torch.cat([_targets(train_ds, "label", train_idx), _targets(val_ds, "label", val_idx)])
        return {"num_classes": _num_classes(train_ds, labels.long())}
    if task == "segmentation":
        masks = torch.cat([_targets(train_ds, "mask", train_idx).flatten(),
                           _targets(val_ds, "mask", val_idx).flatten()])
        return {"num_classes": _mask_classes(train_ds, masks.long())}
    depths = _targets(train_ds, "depth", train_idx) if train_ds.depth_range is None else torch.empty(0)
    return {"depth_range": _depth_range(train_ds, depths.float()), **opts["head"]}


# --- the entry point --------------------------------------------------------------------------------------
def finetune(encoder: Encoder, train_ds: VisionDataset, val_ds: VisionDataset | None, *,
             task: str = "classification", protocol: str = "slf", seed: int = 0,
             device: str | torch.device = "auto", precision: str = "fp32", **options: Any) -> FinetuneResult:
    """Fine-tune a head (and, for ``aff``/``ft``, a copy of ``encoder``) for ``task`` by ``protocol``.

    ``train_ds``/``val_ds``: datasets carrying the task's target (``label``, ``mask`` or ``depth``), neither
    a test split; ``val_ds`` None holds out ``val_fraction`` of ``train_ds``. ``seed`` drives every
    generator (head initialization, shuffling, attack starts, hold-out). ``options``: see the module doc.
    Everything is checked before any work. Returns ``FinetuneResult(model, info)``; ``info`` has
    ``protocol``, ``task``, the chosen hyper-parameters, ``val_metric``/``val_score``, ``epochs``,
    ``n_train``/``n_val``, ``seconds`` and ``fwd``/``bwd`` (images through the encoder's forward and
    backward passes, attacks and validation included).
    """
    start = time.perf_counter()
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    if not isinstance(encoder, Encoder):
        raise TypeError(f"finetune expects a robustssl Encoder, got {type(encoder).__name__}; wrap a plain "
                        "module with robustssl.encoders.from_module")
    opts = _check_options(protocol, task, options)
    make_generator(seed)  # a bad seed fails here
    device = resolve_device(device)
    autocast(device, precision)  # an unknown (or unsupported) precision fails here
    key = TARGET_KEYS[task]
    for ds in (train_ds, val_ds):
        if ds is not None:
            ds.require(key, purpose=f"{protocol} fine-tuning for {task}")
    val_ds, train_idx, val_idx = _splits(train_ds, val_ds, opts, seed)
    _check_selection_splits(train_ds, val_ds, train_idx, val_idx)
    if protocol == "slf":
        model, info = _slf(encoder, train_ds, val_ds, train_idx, val_idx, task, opts, seed, device, precision)
    else:
        model, info = _trained(encoder, train_ds, val_ds, train_idx, val_idx, task, protocol, opts, seed,
                               device, precision)
    info = {"protocol": protocol, "task": task, "seed": seed, "device": str(device), "precision": precision,
            "batch_size": opts["batch_size"], **info, "seconds": time.perf_counter() - start}
    return FinetuneResult(model.to(device).eval(), info)


# --- slf --------------------------------------------------------------------------------------------------
def _slf(encoder: Encoder, train_ds: VisionDataset, val_ds: VisionDataset, train_idx: list[int],
         val_idx: list[int], task: str, opts: dict[str, Any], seed: int, device: torch.device,
         precision: str) -> tuple[TaskModel, dict[str, Any]]:
    common = dict(device=device, precision=precision, train_indices=train_idx, val_indices=val_idx)
    head: nn.Module
    if task == "classification":
        head, fit = fit_linear_probe(encoder, train_ds, val_ds, batch_size=opts["batch_size"],
                                     weight_decays=opts["weight_decays"], max_iter=opts["max_iter"], **common)
        # full-batch L-BFGS has no epochs: max_iter iterations per weight decay
        info = {"val_metric": "top1", "val_score": fit["val_accuracy"], "weight_decay": fit["weight_decay"],
                "epochs": None, "train_accuracy": fit["train_accuracy"], "max_iter": opts["max_iter"],
                "val_accuracy_by_weight_decay": {str(k): v for k, v in
                                                 fit["val_accuracy_by_weight_decay"].items()}}
    else:
        # the dense head's initial weights come from the default generator: pin it to ``seed`` so the head
        # does not depend on what ran before in this process
        with seeded_init(seed):
            head, fit = fit_dense_head(encoder, train_ds, val_ds, task, epochs=opts["epochs"], lr=opts["lr"],
                                       batch_size=opts["batch_size"], weight_decay=opts["weight_decay"],
                                       depth_loss=opts.get("depth_loss", "silog"),
                                       generator=make_generator(seed), **opts.get("head", {}), **common)
        metric = SELECT_METRIC[task][0]
        info = {"val_metric": metric, "val_score": fit[f"val_{metric}"], "best_epoch": fit["best_epoch"],
                "epochs": opts["epochs"], "lr": opts["lr"], "weight_decay": opts["weight_decay"],
                "history": fit["history"]}
        if task == "depth":
            info.update(depth_loss=opts["depth_loss"], head=opts["head"])
    n = fit["n_train"] + fit["n_val"]
    info.update(select="clean", n_train=fit["n_train"], n_val=fit["n_val"], fwd=n, bwd=0)
    return TaskModel(encoder, head, task), info


# --- alf, aff, ft -----------------------------------------------------------------------------------------
def _lr_at(lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """Learning rate of ``epoch`` (0-based): constant, cosine to 0, or /10 at 60% and again at 80% of
    ``epochs`` (AdvCL's epochs 15 and 20 of 25)."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    factor = 0.1 if epoch >= round(0.6 * epochs) else 1.0
    return lr * factor * (0.1 if epoch >= round(0.8 * epochs) else 1.0)


def _seeds(seed: int) -> dict[str, int]:
    """Independent seeds for shuffling, training attacks and validation attacks, derived from ``seed``."""
    values = torch.randint(0, 2**62, (3,), generator=make_generator(seed)).tolist()
    return dict(zip(("shuffle", "attack", "validation"), (int(v) for v in values), strict=True))


@dataclass
class _Run:
    """One training run (one lr x weight decay): its best epoch's state and the validation record."""

    model: TaskModel
    score: float
    summary: dict[str, Any]
    val: dict[str, float]
    history: list[dict[str, Any]]


class _Trainer:
    """Trains one ``TaskModel`` by a non-cached protocol; counts encoder passes in ``counts``."""

    def __init__(self, protocol: str, task: str, opts: dict[str, Any], seed: int, device: torch.device,
                 precision: str, counts: dict[str, int]):
        self.protocol, self.task, self.opts = protocol, task, opts
        self.device, self.precision = device, precision
        self.frozen = protocol in FROZEN_PROTOCOLS
        self.key = TARGET_KEYS[task]
        self.threat = ThreatModel(opts["norm"], opts["eps"])
        self.seeds = _seeds(seed)
        self.counts = counts
        self.depth_loss = opts.get("depth_loss", "silog")
        self.metric, self.higher_is_better = SELECT_METRIC[task]

    # one batch ---------------------------------------------------------------------------------------------
    def _craft(self, model: TaskModel, x: torch.Tensor, target: torch.Tensor, loss: str,
               generator: torch.Generator) -> torch.Tensor:
        x_adv, counts = adversarial.craft_training_examples(
            model, x, target, loss=loss, threat=self.threat, steps=self.opts["steps"],
            step_size=self.opts["step_size"], generator=generator, precision=self.precision)
        self.counts["fwd"] += counts["fwd"]
        self.counts["bwd"] += counts["bwd"]
        return x_adv

    def _count(self, n: int, backward: bool) -> None:
        self.counts["fwd"] += n
        self.counts["bwd"] += n if backward else 0

    def batch_loss(self, model: TaskModel, x: torch.Tensor, target: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor | None:
        """The training loss of one batch (the model left in the right train/eval modes)."""
        task, device, precision = self.task, self.device, self.precision
        if self.protocol == "alf":
            x_adv = self._craft(model, x, target, "pgd-at", generator)
            # the head learns; the frozen encoder keeps its batch-norm statistics (eval mode)
            model.train()
            model.encoder.eval()
            with torch.no_grad(), autocast(device, precision):
                encoder = model.encoder
                features = encoder.embed(x_adv) if task == "classification" else encoder.dense(x_adv)
            with autocast(device, precision):
                output = (model.head(features) if task == "classification"
                          else model.head(features, size=tuple(x.shape[-2:])))
            self._count(x.shape[0], backward=False)
            return adversarial.natural_loss(output, target, task, self.depth_loss)
        if self.protocol == "ft":
            model.train()
            with autocast(device, precision):
                output = model(x)
            self._count(x.shape[0], backward=True)
            return adversarial.natural_loss(output, target, task, self.depth_loss)
        loss = self.opts["loss"]
        x_adv = self._craft(model, x, target, loss, generator)
        model.train()
        if loss == "pgd-at":
            with autocast(device, precision):
                output = model(x_adv)
            self._count(x.shape[0], backward=True)
            return adversarial.natural_loss(output, target, task, self.depth_loss)
        with autocast(device, precision):
            clean, adv = model(x), model(x_adv)
        self._count(2 * x.shape[0], backward=True)
        return adversarial.trades_loss(clean, adv, target, task, self.opts["beta"], self.depth_loss)

    # validation --------------------------------------------------------------------------------------------
    def validate(self, model: TaskModel, val_ds: VisionDataset, val_idx: list[int]) -> tuple[float, dict]:
        """(score, metrics): the selection score (larger is better) and the validation metrics."""
        bs, device, precision = self.opts["batch_size"], self.device, self.precision
        if self.opts["select"] == "clean":
            metrics = evaluate(model, val_ds, batch_size=bs, device=device, precision=precision,
                               indices=val_idx)
            self._count(len(val_idx), backward=False)
            value = metrics[self.metric]
            return (value if self.higher_is_better else -value), metrics
        result = evaluate_under_attack(
            model, val_ds, eps=self.opts["eps"], norm=self.opts["norm"], batch_size=bs, device=device,
            precision=precision, indices=val_idx,
            attack_kwargs={"steps": self.opts["val_steps"], "step_size": self.opts["step_size"]},
            generator=make_generator(self.seeds["validation"], device))
        self.counts["fwd"] += result["fwd"]
        self.counts["bwd"] += result["bwd"]
        metrics = {**{f"clean_{k}": v for k, v in result["clean"].items()},
                   **{f"robust_{k}": v for k, v in result["robust"].items()}}
        value = result["robust"][self.metric]
        return (value if self.higher_is_better else -value), metrics

    # one run -----------------------------------------------------------------------------------------------
    def run(self, model: TaskModel, lr: float, weight_decay: float, train_ds: VisionDataset,
            val_ds: VisionDataset, train_idx: list[int], val_idx: list[int]) -> _Run:
        opts, device = self.opts, self.device
        model.to(device)
        if self.frozen:
            model.encoder.eval()
        params = list(model.head.parameters() if self.frozen else model.parameters())
        if opts["optimizer"] == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=opts["momentum"],
                                                               weight_decay=weight_decay)
        else:
            optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        shuffle = make_generator(self.seeds["shuffle"])
        attack_gen = make_generator(self.seeds["attack"], device)
        best: tuple[float, int, dict[str, torch.Tensor], dict[str, float]] | None = None
        history: list[dict[str, Any]] = []
        diverged = False
        trainable = model.head if self.frozen else model
        epochs = opts["epochs"]
        for epoch in progress(range(epochs), desc=f"{self.protocol} lr={lr:g} wd={weight_decay:g}"):
            epoch_lr = _lr_at(lr, epoch, epochs, opts["schedule"])
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr
            total, steps = 0.0, 0
            batches = train_ds.batches(opts["batch_size"], shuffle=True, generator=shuffle, indices=train_idx)
            for batch in batches:
                if batch["image"].shape[0] < 2 and len(train_idx) > 1:
                    continue  # batch norm cannot train on a single sample
                x, target = batch["image"].to(device), batch[self.key].to(device)
                loss = self.batch_loss(model, x, target, attack_gen)
                if loss is None:
                    continue
                if not torch.isfinite(loss):
                    diverged = True
                    break
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total, steps = total + float(loss.detach()), steps + 1
            if diverged:
                log.warning("%s: training diverged (non-finite loss) at epoch %d with lr=%g, weight_decay=%g",
                            self.protocol, epoch, lr, weight_decay)
                break
            score, metrics = self.validate(model, val_ds, val_idx)
            history.append({"epoch": epoch, "lr": epoch_lr, "train_loss": total / max(steps, 1),
                            **{f"val_{k}": v for k, v in metrics.items()}})
            if best is None or score > best[0]:
                state = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
                best = (score, epoch, state, metrics)
        summary: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "diverged": diverged}
        if best is None:
            return _Run(model, -math.inf, {**summary, "best_epoch": None, "val_score": None}, {}, history)
        trainable.load_state_dict(best[2])
        value = best[0] if self.higher_is_better else -best[0]
        summary.update(best_epoch=best[1], val_score=value)
        return _Run(model, best[0], summary, best[3], history)


def _trained(encoder: Encoder, train_ds: VisionDataset, val_ds: VisionDataset, train_idx: list[int],
             val_idx: list[int], task: str, protocol: str, opts: dict[str, Any], seed: int,
             device: torch.device, precision: str) -> tuple[TaskModel, dict[str, Any]]:
    head_args = _head_args(task, train_ds, val_ds, train_idx, val_idx, opts)
    counts = {"fwd": 0, "bwd": 0}
    trainer = _Trainer(protocol, task, opts, seed, device, precision, counts)
    frozen = protocol in FROZEN_PROTOCOLS
    if frozen:
        encoder.to(device).eval()
    best: _Run | None = None
    grid = []
    prefix = "robust_" if opts["select"] == "robust" else ""
    for lr in opts["lr"]:
        for wd in opts["weight_decay"]:
            # every configuration starts from the caller's encoder and the same seeded head
            enc = encoder if frozen else copy.deepcopy(encoder)
            with seeded_init(seed):
                head = build_head(task, enc, **head_args)
            run = trainer.run(TaskModel(enc, head, task), lr, wd, train_ds, val_ds, train_idx, val_idx)
            grid.append(run.summary)
            log.info("%s %s lr=%g wd=%g: best epoch %s, val %s%s %s", protocol, task, lr, wd,
                     run.summary["best_epoch"], prefix, trainer.metric, run.summary["val_score"])
            if best is None or run.score > best.score:
                best = run
    assert best is not None
    if best.score == -math.inf:
        raise RuntimeError(f"{protocol} fine-tuning diverged (non-finite training loss) for every learning "
                           f"rate and weight decay tried ({grid}); try a smaller lr")
    info: dict[str, Any] = {
        "select": opts["select"], "val_metric": prefix + trainer.metric,
        "val_score": best.summary["val_score"], "val": best.val, "lr": best.summary["lr"],
        "weight_decay": best.summary["weight_decay"],
        "best_epoch": best.summary["best_epoch"], "epochs": opts["epochs"], "schedule": opts["schedule"],
        "optimizer": opts["optimizer"], "momentum": opts["momentum"], "grid": grid, "history": best.history,
        "n_train": len(train_idx), "n_val": len(val_idx), **counts,
    }
    if protocol != "ft" or opts["select"] == "robust":
        info.update(eps=opts["eps"], norm=opts["norm"], steps=opts["steps"], step_size=opts["step_size"],
                    val_steps=opts["val_steps"])
    if protocol == "aff":
        info["loss"] = opts["loss"]
        if opts["loss"] == "trades":
            info["beta"] = opts["beta"]
    if task == "depth":
        info.update(depth_loss=opts["depth_loss"], head=opts["head"])
    return best.model, info
