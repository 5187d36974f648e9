"""Issue #6's bars: noisy image modelling (``nim``) and the De³ defence, judged by adaptive attacks.

For each dataset (``scenes``: classification, segmentation, depth; ``digits``: classification):

1. pretrain ``nim`` and ``mae`` with their tiny presets (``configs/pretrain/<method>-<data>-tiny.yaml``); the
   denoisers are cached in ``--out`` and reused when the preset is unchanged;
2. reconstruction PSNR of the nim denoiser on held-out images at σ = 75/255 (the Gamma mean) with its initial
   and its trained weights (the noisy input's own PSNR for reference);
3. linear-probe accuracy (validation split) of the nim and mae encoders against the random-init encoder with
   the same initial weights;
4. per task: the *undefended* model is a task model (``--task-encoder``: by default ``convnet_small`` trained
   from scratch, since the tiny nim ViT barely fine-tunes on 32-px scenes in this budget; ``nim``: the nim
   encoder) with a fresh head, trained end to end on clean training images; the *defended* model is the same
   recipe on denoised images (σ ~ U(0, 30/255), as published) behind De³ at ``--sigma-test``. Both are
   attacked on the first ``--n`` test images at L-inf eps 4/255: PGD on the undefended model; PGD, EOT-PGD,
   gray-box transfer, Square and AutoAttack-rand (classification) on the defended one; every defended metric
   on fresh random draws, the same ``--eval-draws`` draws for every threat (common random numbers), so the
   EOT-PGD vs PGD comparison is reported as a paired difference over the draws with its standard error.
   Classification also gets the MAE reconstruction baseline (the same recipe on MAE
   reconstructions, 75% of the patches masked at test time).
5. the clean-vs-robust trade-off over σ_test (and, for classification, the MAE baseline over its mask
   ratio) for each ``--curve-tasks`` pair (default scenes classification): ``tradeoff-<data>-<task>.csv`` and
   ``.png``.

Prints the bar table and writes ``bars.csv`` (one row per bar) and ``results.csv`` (every metric) to
``--out``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/defenses.py --out runs/bench-defenses
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/defenses.py --quick      # a smoke run: tiny budgets
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from robustssl import data, encoders
from robustssl.cli.args import fraction
from robustssl.defenses import (
    DefenseEvalConfig,
    denoise_then_classify,
    evaluate_defense,
    finetune_on_denoised,
    format_table,
    headline,
    mae_reconstruction,
    paired_draw_difference,
    tradeoff_curve,
    write_curve,
    write_rows,
)
from robustssl.defenses.evaluate import HEADLINE, THREATS
from robustssl.finetune.heads import fit_linear_probe
from robustssl.heads.build import build as build_task_model
from robustssl.pretrain.masked_image import load_denoiser, psnr
from robustssl.pretrain.presets import build as build_preset
from robustssl.pretrain.presets import load_preset, override
from robustssl.pretrain.trainer import train
from robustssl.runtime import make_generator, seeded_init

TASKS = {"scenes": ("classification", "segmentation", "depth"), "digits": ("classification",)}
PSNR_SIGMA = 75 / 255


def dataset(name: str, split: str, n: int | None = None) -> data.VisionDataset:
    if name == "scenes":
        sizes = {"train": 4000, "val": 500, "test": 500}
        return data.load("scenes", split=split, size=32, n=n or sizes[split])
    return data.load(name, split=split)


def pretrained(method: str, data_name: str, out: Path, steps: int | None) -> tuple[Any, Any, dict]:
    """(trained denoiser, initial-weights copy, info); the trained one is cached in ``out``."""
    preset = load_preset(f"{method}-{data_name}-tiny")
    if steps is not None:
        preset = override(preset, [f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 10)}"])
    initial, train_ds, config, _ = build_preset(preset)
    initial = initial.eval()
    run = out / f"{method}-{data_name}"
    cache, digest = run / "denoiser.safetensors", preset.digest()
    marker = run / "preset-digest.txt"
    info: dict[str, Any] = {"preset": preset.name, "steps": config.steps}
    if cache.is_file() and marker.is_file() and marker.read_text() == digest:
        return load_denoiser(cache), initial, {**info, "cached": True}
    method_model = copy.deepcopy(initial).train()
    config.tensorboard = False
    start = time.perf_counter()
    summary = train(method_model, train_ds, config, out_dir=run / "train", method_name=method)
    method_model.save(cache)
    marker.write_text(digest)
    info.update(seconds=time.perf_counter() - start, final_train_psnr=summary.get("psnr"), cached=False)
    (run / "summary.json").write_text(json.dumps({**info, **{k: v for k, v in summary.items()
                                                             if isinstance(v, (int, float, str))}}, indent=2))
    return method_model.eval(), initial, info


@torch.no_grad()
def reconstruction_psnr(model: Any, images: torch.Tensor, sigma: float) -> float:
    """Mean PSNR (dB) of ``model``'s reconstruction of ``images`` from ``images + N(0, σ²)`` (fixed draws)."""
    return float(psnr(model.purify(images, sigma=sigma, generator=make_generator(123)), images).mean())


def noisy_psnr(images: torch.Tensor, sigma: float) -> float:
    noise = torch.randn(images.shape, generator=make_generator(123))
    return float(psnr((images + sigma * noise).clamp(0, 1), images).mean())


def fine_tuned(encoder: Any, task: str, train_ds: data.VisionDataset, denoiser: Any, args: argparse.Namespace,
               seed: int, mask_ratio: float = 0.0) -> Any:
    """``encoder`` (a copy; a name: a fresh one from ``seed``) + a fresh head for ``task``, trained end to end
    (on denoised images when ``denoiser`` is given: σ ~ U(0, ``--finetune-sigma``), or masking only)."""
    with seeded_init(seed):
        kwargs = ({"num_classes": train_ds.num_classes} if task == "classification" else
                  {"num_classes": train_ds.mask_classes} if task == "segmentation" else
                  {"depth_range": train_ds.depth_range})
        backbone = encoders.create(encoder) if isinstance(encoder, str) else copy.deepcopy(encoder)
        model = build_task_model(task, backbone, **kwargs)
    sigma = (0.0, 0.0) if mask_ratio > 0 else (0.0, args.finetune_sigma)
    finetune_on_denoised(model, denoiser, train_ds, sigma=sigma, mask_ratio=mask_ratio, epochs=args.epochs,
                         batch_size=64, lr=args.lr, weight_decay=0.05, train_encoder=True,
                         generator=make_generator(seed))
    return model


def bar(rows: list[dict], name: str, value: float | None, reference: float | None, higher: bool,
        detail: str) -> None:
    met = None if value is None or reference is None else (value > reference if higher else value < reference)
    rows.append({"bar": name, "value": value, "reference": reference, "met": met, "detail": detail})
    print(f"  {'MET ' if met else 'FAIL' if met is not None else '  - '} {name}: {value} vs {reference}  "
          f"({detail})")


def run_dataset(name: str, args: argparse.Namespace, out: Path, results: list, bars: list,
                curves: list) -> None:
    print(f"\n=== {name} ===")
    train_ds, val_ds, test_ds = dataset(name, "train"), dataset(name, "val"), dataset(name, "test")
    nim, nim_init, nim_info = pretrained("nim", name, out, args.pretrain_steps)
    mae, mae_init, _ = pretrained("mae", name, out, args.pretrain_steps)
    held_out = next(val_ds.batches(128))["image"]
    psnr_init = reconstruction_psnr(nim_init, held_out, PSNR_SIGMA)
    psnr_trained = reconstruction_psnr(nim, held_out, PSNR_SIGMA)
    bar(bars, f"{name}: nim reconstruction PSNR rises (dB, sigma 75/255, 128 val images)", psnr_trained,
        psnr_init, True, f"initial weights {psnr_init:.2f} dB; noisy input "
        f"{noisy_psnr(held_out, PSNR_SIGMA):.2f} dB; {nim_info['steps']} steps")
    probes = {}
    for label, encoder in (("random-init", nim_init.encoder), ("nim", nim.encoder), ("mae", mae.encoder)):
        probes[label] = fit_linear_probe(encoder, train_ds, val_ds)[1]["val_accuracy"]
        results.append({"model": label, "defense": "none", "task": "classification", "threat": "clean",
                        "eps": 0.0, "metric": "linear_probe_val_top1", "value": probes[label],
                        "n": len(val_ds), "seconds": 0, "fwd": 0, "bwd": 0, "dataset": name})
    bar(bars, f"{name}: nim linear probe beats random init (val top-1)", probes["nim"], probes["random-init"],
        True, f"mae {probes['mae']:.4f}; same architecture and initial weights")
    config = DefenseEvalConfig(eps=args.eps, steps=args.steps, eot_samples=args.eot_samples,
                               square_queries=args.square_queries, autoattack_steps=args.aa_steps,
                               autoattack_eot_samples=args.aa_eot_samples, n=args.n,
                               batch_size=args.batch_size, eval_draws=args.eval_draws,
                               threats=tuple(args.threats), device="cpu")
    for position, task in enumerate(TASKS[name]):
        if args.tasks and task not in args.tasks:
            continue
        print(f"--- {name} {task}")
        start = time.perf_counter()
        backbone = nim.encoder if args.task_encoder == "nim" else args.task_encoder
        undefended = fine_tuned(backbone, task, train_ds, None, args, seed=10 + position)
        adapted = fine_tuned(backbone, task, train_ds, nim, args, seed=10 + position)
        defended = denoise_then_classify(nim, adapted, sigma=args.sigma_test, seed=args.seed)
        rows = evaluate_defense(undefended, defended, test_ds, config)
        print(f"  (fine-tuning + evaluation {time.perf_counter() - start:.0f} s)")
        print(format_table(rows))
        metric, higher = HEADLINE[task]
        bare_pgd, de3_eot = headline(rows, "undefended", "pgd"), headline(rows, "defended", "eot-pgd")
        de3_pgd = headline(rows, "defended", "pgd")
        bare_clean, de3_clean = headline(rows, "undefended", "clean"), headline(rows, "defended", "clean")
        bar(bars, f"{name} {task}: De3 under EOT-PGD beats undefended under PGD ({metric})", de3_eot,
            bare_pgd, higher,
            f"clean cost: {metric} {bare_clean:.4f} -> {de3_clean:.4f}; eps {args.eps * 255:.3g}/255")
        strong = de3_eot <= de3_pgd if higher else de3_eot >= de3_pgd
        # every threat is evaluated on the same draws (common random numbers): the paired difference over the
        # draws and its standard error say whether the gap is the attacks' or the evaluation noise
        diff, diff_se = paired_draw_difference(rows, "defended", "eot-pgd", "pgd")
        paired = (f"EOT-PGD - PGD = {diff:+.4f} +- {diff_se:.4f} (paired over {args.eval_draws} common "
                  f"evaluation draws, n={args.n})")
        bars.append({"bar": f"{name} {task}: EOT-PGD at least as strong as PGD on De3 ({metric})",
                     "value": de3_eot, "reference": de3_pgd, "met": strong, "detail": ("lower is stronger"
                     if higher else "higher is stronger") + "; " + paired})
        print(f"  {'MET ' if strong else 'FAIL'} EOT-PGD {de3_eot:.4f} vs PGD {de3_pgd:.4f} on De3; {paired}")
        results.extend({**r, "dataset": name} for r in rows)
        mae_model = None
        if task == "classification" and not args.no_mae:
            mae_backbone = mae.encoder if args.task_encoder == "nim" else args.task_encoder
            mae_model = fine_tuned(mae_backbone, task, train_ds, mae, args, seed=10 + position,
                                   mask_ratio=0.75)
            baseline = mae_reconstruction(mae, mae_model, mask_ratio=0.75, seed=args.seed)
            mae_threats = tuple(t for t in ("eot-pgd", "bpda-eot-pgd") if t in args.threats) or ("eot-pgd",)
            mae_config = dataclasses.replace(config, threats=mae_threats)
            mae_rows = evaluate_defense(mae_model, baseline, test_ds, mae_config)
            for row in mae_rows:
                row["model"] = {"undefended": "mae-undefended", "defended": "mae-defended"}[row["model"]]
            results.extend({**r, "dataset": name} for r in mae_rows)
            print(format_table(mae_rows))
        if args.curve and f"{name}:{task}" in args.curve_tasks:
            curve_config = dataclasses.replace(config, n=min(args.n, args.curve_n))
            curve = tradeoff_curve(nim, adapted, test_ds, args.curve, config=curve_config)
            if mae_model is not None:
                curve += tradeoff_curve(mae, mae_model, test_ds, args.mae_curve, knob="mask_ratio",
                                        config=curve_config)
            curves.extend({**r, "dataset": name} for r in curve)
            for row in curve:
                print(f"  curve {row['defense']} {row['knob']}={row['value']:.4g}: clean {row['metric']} "
                      f"{row['clean']:.4f}, EOT-PGD {row['robust']:.4f} (n={row['n']})")
            write_curve(curve, out / f"tradeoff-{name}-{task}.csv", out / f"tradeoff-{name}-{task}.png",
                        undefended={"clean": bare_clean, "robust": bare_pgd})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-defenses")
    p.add_argument("--datasets", default="scenes,digits")
    p.add_argument("--quick", action="store_true", help="tiny budgets everywhere (a smoke run, not the bars)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the presets' steps")
    p.add_argument("--task-encoder", default="convnet_small",
                   help="encoder of the task models: a registered name (trained from scratch) or 'nim' (the "
                   "nim encoder, mae's for the MAE baseline)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs of every task model")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--finetune-sigma", type=fraction, default=30 / 255, help="fine-tuning sigma ~ U(0, this)")
    p.add_argument("--sigma-test", type=fraction, default=50 / 255, help="De³ test noise (e.g. 50/255)")
    p.add_argument("--eps", type=fraction, default=4 / 255)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eot-samples", type=int, default=8)
    p.add_argument("--square-queries", type=int, default=300)
    p.add_argument("--aa-steps", type=int, default=20)
    p.add_argument("--aa-eot-samples", type=int, default=8)
    p.add_argument("--threats", default=",".join(THREATS))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--curve-n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--eval-draws", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-curve", dest="curve", action="store_false")
    p.add_argument("--curve-tasks", default="scenes:classification",
                   help="comma-separated DATASET:TASK pairs that get the trade-off curve")
    p.add_argument("--tasks", default="", help="comma-separated subset of the tasks (default all)")
    p.add_argument("--no-mae", action="store_true", help="skip the MAE reconstruction baseline")
    args = p.parse_args()
    args.threats = [t for t in args.threats.split(",") if t]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.curve_tasks = [t for t in args.curve_tasks.split(",") if t]
    args.curve = [s / 255 for s in (0, 20, 35, 50, 75, 100)] if args.curve else None
    args.mae_curve = [0.25, 0.5, 0.75]
    if args.quick:
        args.pretrain_steps, args.epochs, args.n, args.curve_n = args.pretrain_steps or 20, 1, 16, 16
        args.steps, args.eot_samples, args.square_queries, args.aa_steps, args.aa_eot_samples = 3, 2, 20, 3, 2
        args.curve = args.curve and args.curve[::2]
        args.mae_curve = [0.75]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    bars: list[dict] = []
    curves: list[dict] = []
    start = time.perf_counter()
    for name in [d for d in args.datasets.split(",") if d]:
        if name not in TASKS:
            raise SystemExit(f"unknown dataset {name!r}; accepted: {', '.join(TASKS)}")
        run_dataset(name, args, out, results, bars, curves)
    write_rows(results, out / "results.csv", fields=("dataset", "model", "defense", "task", "threat", "eps",
                                                      "metric", "value", "n", "seconds", "fwd", "bwd"))
    write_rows(bars, out / "bars.csv", fields=("bar", "value", "reference", "met", "detail"))
    settings = json.dumps(vars(args), default=str)
    print(f"\n=== bars ({time.perf_counter() - start:.0f} s; settings: {settings})")
    for row in bars:
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        reference = "-" if row["reference"] is None else f"{row['reference']:.4f}"
        print(f"{'MET ' if row['met'] else 'FAIL'}  {row['bar']}: {value} vs {reference}  ({row['detail']})")
    print(f"\nresults: {out / 'results.csv'}, {out / 'bars.csv'}" + (
        ", tradeoff-*.csv, tradeoff-*.png" if curves else ""))


if __name__ == "__main__":
    main()
