"""Adaptive evaluation of a randomized input-purification defence (De³ and its MAE baseline).

:func:`evaluate_defense` attacks the same test images in every setting and reports the task's metrics:

==================  ==============================================================================
threat              what it is
==================  ==============================================================================
``clean``           no attack (the defended model: its clean cost)
``pgd``             white-box PGD; on the defended model each gradient sees one random draw (no EOT)
``eot-pgd``         white-box PGD through the whole randomized pipeline (noise, denoiser, clamp, task
                    model) with each gradient averaged over ``eot_samples`` draws (the engine's ``eot``)
``bpda-eot-pgd``    EOT-PGD whose gradients pass the final clamp straight through (BPDA on the one
                    non-differentiable-in-effect step: the clamp zeroes gradients where it saturates)
``transfer-pgd``    gray-box: PGD crafted on the undefended model, evaluated on the defended one
``square``          black-box Square (score-based; margin loss for classification)
``autoattack-rand`` AutoAttack's version for randomized defences (APGD-CE, APGD-DLR with EOT; classifiers)
==================  ==============================================================================

The undefended model gets ``clean`` and ``pgd``. Every metric of a randomized model is measured on fresh
draws, never on the draws the attack saw: ``eval_draws`` evaluations averaged, drawn from a stream
seeded ``eval_seed`` (default ``seed + 1000``) that restarts for every threat. Every threat is therefore
judged on the *same* noise (common random numbers), so a difference between threats (EOT-PGD against plain
PGD, say) is the attacks' doing, not evaluation noise; each row keeps its per-draw values in ``draws``.
Headline metrics: top-1 (classification), mIoU (segmentation), AbsRel (depth, lower is better).

:func:`tradeoff_curve` sweeps σ_test (or the MAE baseline's test-time mask ratio) and records clean and
EOT-PGD metrics per value; :func:`write_curve` writes them as CSV and as a PNG (metric vs σ_test, and robust
vs clean).
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustssl.data.base import TensorDataset, VisionDataset
from robustssl.defenses.de3 import TARGET_KEYS, DenoisedModel
from robustssl.finetune.heads import evaluate
from robustssl.metrics.intervals import mean_and_standard_error
from robustssl.pretrain.masked_image import MaskedImageModel
from robustssl.runtime.device import resolve_device
from robustssl.runtime.logging import get_logger
from robustssl.runtime.seeding import make_generator
from robustssl.threats.api import attack
from robustssl.threats.attacks.eot import EOT

log = get_logger(__name__)

THREATS = ("pgd", "eot-pgd", "bpda-eot-pgd", "transfer-pgd", "square", "autoattack-rand")
#: headline metric per task and whether higher is better
HEADLINE = {"classification": ("top1", True), "segmentation": ("miou", True), "depth": ("abs_rel", False)}
#: metrics recorded per task
METRICS = {"classification": ("top1",), "segmentation": ("miou", "pixel_accuracy"),
           "depth": ("abs_rel", "rmse", "delta1")}
ROW_FIELDS = ("model", "defense", "task", "threat", "eps", "metric", "value", "n", "seconds", "fwd", "bwd")
CURVE_FIELDS = ("defense", "knob", "value", "task", "metric", "clean", "robust", "n", "eps")
KNOBS = ("sigma", "mask_ratio")


@dataclass
class DefenseEvalConfig:
    """Attack budget and sample counts. ``eps`` in image units (L-inf by default); ``steps``/``step_size``
    are PGD's (step None: 2.5 eps / steps); ``n`` test images from the start of the dataset (or the given
    indices); ``eval_draws`` fresh evaluations of the randomized model averaged per metric, from a stream
    seeded ``eval_seed`` (None: ``seed + 1000``) restarted for every threat (common random numbers)."""

    #: offset of the default evaluation seed from ``seed`` (kept away from the attacks' seeds)
    EVAL_SEED_OFFSET = 1000

    eps: float = 4 / 255
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    eot_samples: int = 8
    square_queries: int = 500
    autoattack_steps: int = 100
    autoattack_eot_samples: int = 20
    threats: tuple[str, ...] = THREATS
    n: int = 256
    batch_size: int = 64
    eval_draws: int = 1
    seed: int = 0
    eval_seed: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        for key in ("steps", "eot_samples", "square_queries", "autoattack_steps", "autoattack_eot_samples",
                    "n", "batch_size", "eval_draws"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        seed = self.eval_seed
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"eval_seed must be None or an int >= 0, got {self.eval_seed!r}")
        self.threats = tuple(self.threats)
        unknown = [t for t in self.threats if t not in THREATS]
        if unknown:
            raise ValueError(f"unknown threat(s) {unknown}; accepted: {', '.join(THREATS)}")


def _row(model: str, defense: str, task: str, threat: str, eps: float, metric: str, value: float, n: int,
         seconds: float = 0.0, fwd: int = 0, bwd: int = 0, draws: Sequence[float] = ()) -> dict[str, Any]:
    return {"model": model, "defense": defense, "task": task, "threat": threat, "eps": eps, "metric": metric,
            "value": float(value), "n": n, "seconds": round(seconds, 3), "fwd": fwd, "bwd": bwd,
            "draws": [float(v) for v in draws] or [float(value)]}


def _eval_seed(config: DefenseEvalConfig) -> int:
    return config.eval_seed if config.eval_seed is not None else config.seed + config.EVAL_SEED_OFFSET


def _metrics(model: nn.Module, task: str, images: torch.Tensor, targets: torch.Tensor, dataset: VisionDataset,
             draws: int, batch_size: int, device: torch.device, eval_seed: int) -> dict[str, Any]:
    """Task metrics of ``model`` on ``images``; a randomized model is evaluated ``draws`` times, averaged
    (``"draws"``: the per-draw values), on the stream seeded ``eval_seed`` (the same draws for every call:
    common random numbers); its own stream (which attacks without EOT use) is left where it was."""
    held = TensorDataset(images.cpu(), name=f"{dataset.name}-eval", split=dataset.split,
                         num_classes=dataset.num_classes, depth_range=dataset.depth_range,
                         **{TARGET_KEYS[task]: targets.cpu()})
    randomized = isinstance(model, DenoisedModel)
    with model.drawing_from(eval_seed) if randomized else contextlib.nullcontext():
        runs = [evaluate(model, held, batch_size=batch_size, device=device)
                for _ in range(draws if randomized else 1)]
    values: dict[str, Any] = {m: sum(r[m] for r in runs) / len(runs) for m in METRICS[task]}
    values["draws"] = {m: [float(r[m]) for r in runs] for m in METRICS[task]}
    return values


def _attack_spec(threat: str, task: str, config: DefenseEvalConfig, surrogate: nn.Module,
                 defended: DenoisedModel | None = None) -> tuple[str, dict]:
    """(attack name, keyword arguments for ``robustssl.threats.attack``) of a threat. ``surrogate``: the
    undefended model (gray-box); ``defended``: the defence (its BPDA twin crafts ``bpda-eot-pgd``)."""
    pgd = {"steps": config.steps, "step_size": config.step_size}
    if threat == "pgd":
        return "pgd", pgd
    if threat == "eot-pgd":
        return "eot", {"inner": "pgd", "samples": config.eot_samples, **pgd}
    if threat == "bpda-eot-pgd":
        if defended is None:
            raise ValueError("bpda-eot-pgd needs the defended model")
        return "transfer", {"surrogate": defended.bpda(),
                            "inner": EOT("pgd", samples=config.eot_samples, **pgd)}
    if threat == "transfer-pgd":
        return "transfer", {"surrogate": surrogate, "inner": "pgd", **pgd}
    if threat == "square":
        extra = {"objective": "cw"} if task == "classification" else {}
        return "square", {"n_queries": config.square_queries, **extra}
    return "autoattack-rand", {"steps": config.autoattack_steps, "eot_samples": config.autoattack_eot_samples}


def _run_attack(model: nn.Module, name: str, kwargs: dict, images: torch.Tensor, targets: torch.Tensor,
                config: DefenseEvalConfig, seed: int,
                device: torch.device) -> tuple[torch.Tensor, int, int, float]:
    """Adversarial images for all of ``images`` (batched), with forward/backward counts and seconds."""
    generator = make_generator(seed, device)
    adv, fwd, bwd, start = [], 0, 0, time.perf_counter()
    for begin in range(0, images.shape[0], config.batch_size):
        x = images[begin:begin + config.batch_size].to(device)
        y = targets[begin:begin + config.batch_size].to(device)
        result = attack(model, x, y, name, eps=config.eps, norm=config.norm, generator=generator, **kwargs)
        adv.append(result.x_adv.detach().cpu())
        fwd, bwd = fwd + result.fwd, bwd + result.bwd
    return torch.cat(adv), fwd, bwd, time.perf_counter() - start


def _test_batch(dataset: VisionDataset, task: str, n: int,
                indices: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    key = TARGET_KEYS[task]
    dataset.require(key, purpose=f"evaluating a {task} defence")
    chosen = list(indices)[:n] if indices is not None else list(range(min(n, len(dataset))))
    if not chosen:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no samples to evaluate")
    batch = next(dataset.batches(len(chosen), indices=chosen))
    target = batch[key].long() if task != "depth" else batch[key]
    return batch["image"], target


def _task(model: nn.Module) -> str:
    task = getattr(model, "task", None)
    if task not in TARGET_KEYS:
        raise ValueError(f"the model's task must be one of {', '.join(TARGET_KEYS)} (a TaskModel), got "
                         f"{task!r}")
    return task


def describe(defended: DenoisedModel) -> str:
    """A short label such as ``nim(sigma=70/255)`` or ``mae(mask=0.75)``."""
    name = getattr(defended.denoiser, "method_name", "denoiser")
    parts = []
    if defended.sigma > 0 or defended.mask_ratio == 0:
        parts.append(f"sigma={defended.sigma * 255:.4g}/255")
    if defended.mask_ratio > 0:
        parts.append(f"mask={defended.mask_ratio:.3g}")
    return f"{name}({', '.join(parts)})"


def evaluate_defense(undefended: nn.Module, defended: DenoisedModel, dataset: VisionDataset,
                     config: DefenseEvalConfig | None = None, *,
                     indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Clean and adversarial metrics of ``undefended`` (clean, PGD) and ``defended`` (clean and every threat
    of ``config.threats``; ``autoattack-rand`` only for classifiers) on the first ``config.n`` samples of
    ``dataset`` (or ``indices``). Returns one row per (model, threat, metric), fields :data:`ROW_FIELDS`."""
    config = config or DefenseEvalConfig()
    if not isinstance(defended, DenoisedModel):
        raise TypeError(f"defended must be a DenoisedModel (robustssl.defenses.denoise_then_classify), got "
                        f"{type(defended).__name__}")
    task = _task(undefended)
    if _task(defended) != task:
        raise ValueError(f"the undefended model does {task!r} but the defended one {defended.task!r}")
    device = resolve_device(config.device)
    undefended.to(device).eval()
    defended.to(device).eval()
    defended.reseed()
    images, targets = _test_batch(dataset, task, config.n, indices)
    n, eps, label = images.shape[0], config.eps, describe(defended)
    rows: list[dict[str, Any]] = []

    def record(model_name: str, defense: str, threat: str, model: nn.Module, x: torch.Tensor,
               seconds: float = 0.0, fwd: int = 0, bwd: int = 0) -> None:
        start = time.perf_counter()
        values = _metrics(model, task, x, targets, dataset, config.eval_draws, config.batch_size, device,
                          _eval_seed(config))
        draws = values.pop("draws")
        seconds += time.perf_counter() - start if threat == "clean" else 0.0
        for metric, value in values.items():
            rows.append(_row(model_name, defense, task, threat, 0.0 if threat == "clean" else eps, metric,
                             value, n, seconds, fwd, bwd, draws[metric]))
        log.info("%s %s %s: %s", model_name, task, threat,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    record("undefended", "none", "clean", undefended, images)
    adv, fwd, bwd, seconds = _run_attack(undefended, *_attack_spec("pgd", task, config, undefended), images,
                                         targets, config, config.seed, device)
    record("undefended", "none", "pgd", undefended, adv, seconds, fwd, bwd)
    record("defended", label, "clean", defended, images)
    for position, threat in enumerate(config.threats):
        if threat == "autoattack-rand" and task != "classification":
            continue
        name, kwargs = _attack_spec(threat, task, config, undefended, defended)
        adv, fwd, bwd, seconds = _run_attack(defended, name, kwargs, images, targets, config,
                                             config.seed + 1 + position, device)
        record("defended", label, threat, defended, adv, seconds, fwd, bwd)
    return rows


def _headline_row(rows: Iterable[dict[str, Any]], model: str, threat: str) -> dict[str, Any] | None:
    for row in rows:
        if row["model"] == model and row["threat"] == threat and row["metric"] == HEADLINE[row["task"]][0]:
            return row
    return None


def headline(rows: Iterable[dict[str, Any]], model: str, threat: str) -> float | None:
    """The headline metric's value of ``model`` under ``threat`` in ``rows`` (None if absent)."""
    row = _headline_row(rows, model, threat)
    return None if row is None else float(row["value"])


def paired_draw_difference(rows: Iterable[dict[str, Any]], model: str, threat: str,
                           reference: str) -> tuple[float, float] | None:
    """``(mean, standard error)`` over the evaluation draws of the headline metric of ``model`` under
    ``threat`` minus under ``reference``. :func:`evaluate_defense` evaluates every threat on the same draws,
    so draw ``k`` of one threat is paired with draw ``k`` of the other; the error is that of the evaluation
    noise (it is 0 with one draw, or with a deterministic model). None when a row is missing."""
    rows = list(rows)
    first, second = _headline_row(rows, model, threat), _headline_row(rows, model, reference)
    if first is None or second is None:
        return None
    a, b = first["draws"], second["draws"]
    if len(a) != len(b):
        raise ValueError(f"{threat} has {len(a)} evaluation draws but {reference} {len(b)}")
    return mean_and_standard_error([x - y for x, y in zip(a, b, strict=True)])


def tradeoff_curve(denoiser: MaskedImageModel, task_model: nn.Module, dataset: VisionDataset,
                   values: Sequence[float], *, knob: str = "sigma", sigma: float = 0.0,
                   mask_ratio: float = 0.0, config: DefenseEvalConfig | None = None,
                   indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Clean and EOT-PGD headline metric of ``task_model`` behind ``denoiser`` for each of ``values`` of
    ``knob`` (``sigma``: σ_test in image units; ``mask_ratio``: the MAE baseline's test-time masking), the
    other knob fixed at ``sigma`` / ``mask_ratio``. Rows have the fields :data:`CURVE_FIELDS`."""
    if knob not in KNOBS:
        raise ValueError(f"knob must be one of {', '.join(KNOBS)}, got {knob!r}")
    if not values:
        raise ValueError("values is empty; give at least one sigma (or mask ratio) to sweep")
    config = config or DefenseEvalConfig()
    task = _task(task_model)
    metric, _ = HEADLINE[task]
    device = resolve_device(config.device)
    images, targets = _test_batch(dataset, task, config.n, indices)
    name, kwargs = _attack_spec("eot-pgd", task, config, task_model)
    rows = []
    for position, value in enumerate(values):
        settings = {"sigma": sigma, "mask_ratio": mask_ratio, knob: float(value)}
        defended = DenoisedModel(denoiser, task_model, seed=config.seed, **settings).to(device).eval()
        draws, batch = config.eval_draws, config.batch_size
        clean = _metrics(defended, task, images, targets, dataset, draws, batch, device, _eval_seed(config))
        adv, *_ = _run_attack(defended, name, kwargs, images, targets, config, config.seed + 100 + position,
                              device)
        robust = _metrics(defended, task, adv, targets, dataset, draws, batch, device, _eval_seed(config))
        rows.append({"defense": getattr(denoiser, "method_name", "denoiser"), "knob": knob,
                     "value": float(value), "task": task, "metric": metric, "clean": clean[metric],
                     "robust": robust[metric], "n": images.shape[0], "eps": config.eps})
        log.info("%s %s=%.4g: clean %s %.4f, eot-pgd %.4f", rows[-1]["defense"], knob, value, metric,
                 clean[metric], robust[metric])
    return rows


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path, fields: Sequence[str] = ROW_FIELDS) -> Path:
    """Write ``rows`` as CSV (header ``fields``) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def write_curve(rows: Sequence[dict[str, Any]], csv_path: str | Path, png_path: str | Path | None = None,
                undefended: dict[str, float] | None = None) -> tuple[Path, Path | None]:
    """Write trade-off rows (from :func:`tradeoff_curve`, any number of defences) as CSV and, with
    ``png_path``, a two-panel PNG: clean and robust metric against each defence's knob, and robust against
    clean. ``undefended`` (``{"clean": .., "robust": ..}``) adds the bare model as a reference point."""
    if not rows:
        raise ValueError("no trade-off rows to write")
    csv_file = write_rows(rows, csv_path, CURVE_FIELDS)
    if png_path is None:
        return csv_file, None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, task, eps = rows[0]["metric"], rows[0]["task"], rows[0]["eps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["defense"], row["knob"]), []).append(row)
    for (defense, knob), group in groups.items():
        group = sorted(group, key=lambda r: r["value"])
        # both knobs on a 0-100 scale: sigma in 0-255 units, the mask ratio in percent
        xs = [r["value"] * (255 if knob == "sigma" else 100) for r in group]
        unit = "σ_test ×255" if knob == "sigma" else "mask ratio %"
        left.plot(xs, [r["clean"] for r in group], "o-", label=f"{defense} clean ({unit})")
        left.plot(xs, [r["robust"] for r in group], "s--", label=f"{defense} EOT-PGD ({unit})")
        right.plot([r["clean"] for r in group], [r["robust"] for r in group], "o-", label=defense)
        for r, x in zip(group, xs, strict=True):
            right.annotate(f"{x:.3g}", (r["clean"], r["robust"]), fontsize=7)
    if undefended is not None:
        right.plot([undefended["clean"]], [undefended["robust"]], "k*", markersize=10,
                   label="undefended (PGD)")
    left.set_xlabel("σ_test × 255  /  mask ratio (%)")
    left.set_ylabel(metric)
    left.set_title(f"{task}: {metric} vs defence strength")
    left.legend(fontsize=7)
    right.set_xlabel(f"clean {metric}")
    right.set_ylabel(f"{metric} under attack (eps {eps * 255:.3g}/255)")
    right.set_title("clean vs robust trade-off")
    right.legend(fontsize=7)
    fig.tight_layout()
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return csv_file, png


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of the headline metric: one line per (model, threat)."""
    lines = [f"{'model':<14} {'defense':<26} {'task':<15} {'threat':<16} {'metric':<8} {'value':>8} {'n':>5} "
             f"{'seconds':>8}"]
    for row in rows:
        if row["metric"] != HEADLINE[row["task"]][0]:
            continue
        lines.append(f"{row['model']:<14} {row['defense']:<26} {row['task']:<15} {row['threat']:<16} "
                     f"{row['metric']:<8} {row['value']:>8.4f} {row['n']:>5} {row['seconds']:>8.1f}")
    return "\n".join(lines)
