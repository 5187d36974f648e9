"""The walking skeleton of the main job, on built-in data (``make demo`` / ``robustssl demo``).

1. SimCLR-pretrain the small ConvNet on ``scenes`` (and keep a random-init twin as the baseline),
2. fit a linear probe (classification) and segmentation and depth heads on each frozen encoder,
3. measure clean metrics, L-inf PGD (eps 8/255, 10 steps) against each head, and the embedding attack
   (maximize ‖embed(x_adv) − embed(x)‖²; reported as the cosine similarity to the clean embedding),
4. print the table and write it as CSV (one result record per row) under ``runs/<name>/``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robustssl import __version__, data, encoders, threats
from robustssl.data.views import SimCLRViews
from robustssl.finetune.heads import evaluate, fit_dense_head, fit_linear_probe
from robustssl.heads.task_model import TaskModel
from robustssl.pretrain import METHODS, TrainConfig, train
from robustssl.runtime import autocast, get_logger, make_generator, progress, resolve_device, seeded_init

log = get_logger(__name__)
RESULT_FIELDS = (
    "run",
    "encoder",
    "task",
    "threat",
    "metric",
    "value",
    "n",
    "seconds",
    "fwd",
    "bwd",
    "config_hash",
    "version",
)


@dataclass
class QuickstartConfig:
    name: str = "demo"
    out_root: str = "runs"
    encoder: str = "convnet_small"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 32
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    pretrain_steps: int = 300
    pretrain_batch: int = 128
    pretrain_lr: float = 0.5
    # SimCLR's CIFAR crops go down to 8% of the image; on 32-px scenes such crops often miss the largest
    # object (which defines the label), and 30% learned better features within the demo's budget.
    crop_scale: tuple[float, float] = (0.3, 1.0)
    head_epochs: int = 15
    eps: float = 8 / 255
    pgd_steps: int = 10
    attack_n: int = 500
    batch_size: int = 250
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _record(
    cfg: QuickstartConfig,
    encoder: str,
    task: str,
    threat: str,
    metric: str,
    value: float,
    n: int,
    seconds: float,
    fwd: int = 0,
    bwd: int = 0,
) -> dict[str, Any]:
    return {
        "run": cfg.name,
        "encoder": encoder,
        "task": task,
        "threat": threat,
        "metric": metric,
        "value": float(value),
        "n": n,
        "seconds": round(seconds, 3),
        "fwd": fwd,
        "bwd": bwd,
        "config_hash": cfg.hash(),
        "version": __version__,
    }


def _load_split(cfg: QuickstartConfig, split: str, n: int) -> data.VisionDataset:
    return data.load("scenes", split=split, size=cfg.image_size, n=n)


def _attack_dataset(
    model: TaskModel,
    dataset: data.VisionDataset,
    cfg: QuickstartConfig,
    device: torch.device,
    target_key: str | None,
) -> tuple[list[dict[str, torch.Tensor]], float, int, int]:
    """PGD on the first ``attack_n`` test samples.

    Returns the adversarial batches (targets kept), seconds, forward and backward counts."""
    gen = make_generator(cfg.seed + 7, device)
    out, fwd, bwd, start = [], 0, 0, time.perf_counter()
    indices = range(min(cfg.attack_n, len(dataset)))
    for batch in dataset.batches(cfg.batch_size, indices=indices):
        batch = {k: v.to(device) for k, v in batch.items()}
        target = batch[target_key] if target_key else None
        result = threats.attack(
            model,
            batch["image"],
            target,
            "pgd",
            eps=cfg.eps,
            steps=cfg.pgd_steps,
            generator=gen,
            precision=cfg.precision,
        )
        fwd, bwd = fwd + result.fwd, bwd + result.bwd
        out.append({**batch, "image": result.x_adv.detach()})
    return out, time.perf_counter() - start, fwd, bwd


def _evaluate_batches(
    model: TaskModel,
    batches: list[dict[str, torch.Tensor]],
    cfg: QuickstartConfig,
    dataset: data.VisionDataset,
) -> dict[str, float]:
    images = torch.cat([b["image"] for b in batches]).cpu()
    targets = {k: torch.cat([b[k] for b in batches]).cpu() for k in dataset.targets}
    adv = data.TensorDataset(
        images,
        name=f"{dataset.name}-pgd",
        split=dataset.split,
        num_classes=dataset.num_classes,
        depth_range=dataset.depth_range,
        **targets,
    )
    return evaluate(model, adv, batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision)


def run(cfg: QuickstartConfig | None = None) -> Path:
    """Run the quickstart; return the CSV path."""
    cfg = cfg or QuickstartConfig()
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.out_root) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_ds = _load_split(cfg, "train", cfg.n_train)
    val_ds = _load_split(cfg, "val", cfg.n_val)
    test_ds = _load_split(cfg, "test", cfg.n_test)

    # The baseline is the SimCLR encoder's own starting point: same architecture, same initial weights.
    with seeded_init(cfg.seed):
        random_init = encoders.create(cfg.encoder, **cfg.encoder_kwargs)
    with seeded_init(cfg.seed):
        simclr_encoder = encoders.create(cfg.encoder, **cfg.encoder_kwargs)
        method = METHODS.create(
            "simclr", encoder=simclr_encoder, views=SimCLRViews.preset("cifar", scale=tuple(cfg.crop_scale))
        )
    train_cfg = TrainConfig(
        steps=cfg.pretrain_steps,
        batch_size=cfg.pretrain_batch,
        lr=cfg.pretrain_lr,
        warmup_steps=cfg.pretrain_steps // 10,
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed,
    )
    summary = train(method, train_ds, train_cfg, out_dir=run_dir / "simclr", method_name="simclr")
    log.info(
        "simclr pretraining: %d steps in %.0f s, final loss %.3f",
        summary["steps"],
        summary["seconds"],
        summary["loss"],
    )

    records: list[dict[str, Any]] = []
    for enc_name, encoder in progress(
        [("random-init", random_init), ("simclr", simclr_encoder)], desc="evaluate encoders"
    ):
        records += _evaluate_encoder(
            cfg, enc_name, encoder.to(device).eval(), train_ds, val_ds, test_ds, device
        )

    csv_path = run_dir / "results.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(records)
    tmp.replace(csv_path)
    print(format_table(records))
    print(f"\nresults: {csv_path}")
    return csv_path


def _evaluate_encoder(
    cfg: QuickstartConfig,
    enc_name: str,
    encoder: encoders.Encoder,
    train_ds: data.VisionDataset,
    val_ds: data.VisionDataset,
    test_ds: data.VisionDataset,
    device: torch.device,
) -> list[dict[str, Any]]:
    records = []
    n_attack = min(cfg.attack_n, len(test_ds))
    log.info("%s: fitting the linear probe, segmentation and depth heads", enc_name)
    probe = fit_linear_probe(encoder, train_ds, val_ds, device=device)[0]
    seg, depth = (fit_dense_head(encoder, train_ds, val_ds, task=t, epochs=cfg.head_epochs, device=device)[0]
                  for t in ("segmentation", "depth"))
    tasks = {
        "classification": (probe, "label", ("top1",)),
        "segmentation": (seg, "mask", ("miou",)),
        "depth": (depth, "depth", ("rmse",)),
    }
    for task, (head, target_key, metrics) in tasks.items():
        model = TaskModel(encoder, head.to(device).eval(), task).eval()
        start = time.perf_counter()
        clean = evaluate(
            model,
            test_ds,
            batch_size=cfg.batch_size,
            device=device,
            precision=cfg.precision,
            indices=range(n_attack),
        )
        clean_seconds = time.perf_counter() - start
        log.info("%s: PGD on the %s head (%d images, %d steps)", enc_name, task, n_attack, cfg.pgd_steps)
        adv_batches, seconds, fwd, bwd = _attack_dataset(model, test_ds, cfg, device, target_key)
        robust = _evaluate_batches(model, adv_batches, cfg, test_ds)
        for metric in metrics:
            records.append(
                _record(cfg, enc_name, task, "clean", metric, clean[metric], n_attack, clean_seconds)
            )
            records.append(
                _record(
                    cfg,
                    enc_name,
                    task,
                    f"pgd-linf-{cfg.eps * 255:.0f}/255",
                    metric,
                    robust[metric],
                    n_attack,
                    seconds,
                    fwd,
                    bwd,
                )
            )
    log.info("%s: PGD on the embedding", enc_name)
    records.append(_embedding_attack(cfg, enc_name, encoder, test_ds, device))
    return records


def _embedding_attack(
    cfg: QuickstartConfig,
    enc_name: str,
    encoder: encoders.Encoder,
    test_ds: data.VisionDataset,
    device: torch.device,
) -> dict[str, Any]:
    """Maximize ‖embed(x_adv) − embed(x)‖² and report the mean cosine similarity to the clean embedding."""
    model = TaskModel(encoder, None, "embedding").eval()
    gen = make_generator(cfg.seed + 11, device)
    cos, n, fwd, bwd, start = 0.0, 0, 0, 0, time.perf_counter()
    for batch in test_ds.batches(cfg.batch_size, indices=range(min(cfg.attack_n, len(test_ds)))):
        x = batch["image"].to(device)
        result = threats.attack(
            model,
            x,
            None,
            "pgd",
            eps=cfg.eps,
            steps=cfg.pgd_steps,
            objective="embed-mse",
            generator=gen,
            precision=cfg.precision,
        )
        with torch.no_grad(), autocast(device, cfg.precision):
            sim = F.cosine_similarity(encoder.embed(x).float(), encoder.embed(result.x_adv).float(), dim=1)
        cos, n = cos + float(sim.sum()), n + x.shape[0]
        fwd, bwd = fwd + result.fwd, bwd + result.bwd
    return _record(
        cfg,
        enc_name,
        "embedding",
        f"pgd-linf-{cfg.eps * 255:.0f}/255",
        "cosine_to_clean",
        cos / n,
        n,
        time.perf_counter() - start,
        fwd,
        bwd,
    )


def format_table(records: list[dict[str, Any]]) -> str:
    """Rows = (task, metric, threat), columns = encoders."""
    encs = list(dict.fromkeys(r["encoder"] for r in records))
    keys = list(dict.fromkeys((r["task"], r["metric"], r["threat"]) for r in records))
    values = {(r["task"], r["metric"], r["threat"], r["encoder"]): r["value"] for r in records}
    header = f"{'task':<15}{'metric':<17}{'threat':<17}" + "".join(f"{e:>13}" for e in encs)
    lines = [header, "-" * len(header)]
    for task, metric, threat in keys:
        cells = "".join(f"{values.get((task, metric, threat, e), float('nan')):>13.4f}" for e in encs)
        lines.append(f"{task:<15}{metric:<17}{threat:<17}" + cells)
    return "\n".join(lines)
