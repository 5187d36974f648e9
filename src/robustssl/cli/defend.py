"""``robustssl defend``: put De³ (or the MAE reconstruction baseline) in front of a task model and attack it
adaptively.

    robustssl pretrain --preset nim-scenes-tiny --out runs/nim
    robustssl defend --denoiser runs/nim --data scenes --data-arg n=1000 --task classification \\
        --sigma 50/255 --eps 4/255 --n 128 --out runs/de3

The task model is the denoiser's own encoder (or ``--encoder``) with the task's head fitted on clean ``train``
images (the undefended model); a copy is fine-tuned on denoised images (``--finetune-epochs``, σ ~
``--finetune-sigma``, default U(0, 30/255)) and wrapped by the defence. Both are evaluated on the first
``--n`` samples of ``--split``: clean and PGD for the undefended model; clean, PGD, EOT-PGD, EOT-PGD with
a straight-through clamp (BPDA), gray-box transfer, Square and AutoAttack-rand (classifiers) for the
defended one (``--threats`` picks). ``--curve``
sweeps σ_test (the MAE baseline: the test-time mask ratio) and writes ``tradeoff.csv`` and ``tradeoff.png``
to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from robustssl.cli.args import add_runtime_args, fraction, fraction_list, key_values


def _threat_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "defend",
        help="evaluate the De³ denoise-then-predict defence with adaptive attacks",
        description="Fit a task head, fine-tune a copy on denoised images, wrap it with De³ (noise + "
        "pretrained nim denoiser) or the MAE baseline, and compare clean and adversarial metrics (PGD, "
        "EOT-PGD, transfer, Square, AutoAttack-rand) with the undefended model.",
    )
    p.add_argument("--denoiser", required=True, metavar="PATH",
                   help="a saved nim/mae model (.safetensors) or the --out folder of its pretraining run")
    p.add_argument("--encoder", default=None, metavar="PATH|NAME",
                   help="task model encoder (default: the denoiser's own encoder)")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="encoder constructor argument (JSON value), repeatable")
    p.add_argument("--data", required=True, metavar="NAME", help="dataset name (robustssl data list)")
    p.add_argument("--root", default=None, help="dataset folder for datasets read from disk")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset argument (JSON value), repeatable, e.g. --data-arg n=512")
    p.add_argument("--split", default="test", help="split evaluated (default test); heads fit on 'train'")
    p.add_argument("--task", required=True, choices=("classification", "segmentation", "depth"))
    p.add_argument("--sigma", type=fraction, default=None,
                   help="test-time noise σ in image units, e.g. 70/255 (required for nim; mae: 0)")
    p.add_argument("--mask-ratio", type=fraction, default=None,
                   help="test-time mask ratio (default 0.75 for an mae denoiser, 0 for nim)")
    p.add_argument("--eps", type=fraction, default=4 / 255, help="L-inf radius (default 4/255)")
    p.add_argument("--steps", type=int, default=10, help="PGD / EOT-PGD steps (default 10)")
    p.add_argument("--eot-samples", type=int, default=8, help="draws per EOT gradient (default 8)")
    p.add_argument("--square-queries", type=int, default=500, help="Square query budget (default 500)")
    p.add_argument("--aa-steps", type=int, default=100, help="AutoAttack-rand APGD steps (default 100)")
    p.add_argument("--aa-eot-samples", type=int, default=20, help="AutoAttack-rand EOT draws (default 20)")
    p.add_argument("--threats", type=_threat_list, default=None,
                   help="comma-separated subset of pgd,eot-pgd,bpda-eot-pgd,transfer-pgd,square,"
                   "autoattack-rand (default all)")
    p.add_argument("--eval-draws", type=int, default=1, help="fresh evaluations of the defence, averaged")
    p.add_argument("--n", type=int, default=128, help="samples evaluated (the first N of --split)")
    p.add_argument("--n-train", type=int, default=None, help="train samples for the head (default all)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="part of train held out for head selection")
    p.add_argument("--head-epochs", type=int, default=10, help="epochs of a dense head")
    p.add_argument("--finetune-epochs", type=int, default=3,
                   help="epochs of fine-tuning on denoised images (0: none)")
    p.add_argument("--finetune-sigma", type=fraction_list, default=[0.0, 30 / 255],
                   help="σ range of the fine-tuning noise (default 0,30/255)")
    p.add_argument("--finetune-encoder", action="store_true",
                   help="fine-tune the encoder too, not only the head")
    p.add_argument("--curve", type=fraction_list, default=None, metavar="V1,V2,...",
                   help="σ_test values (mae: mask ratios) for the clean-vs-robust trade-off curve")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, metavar="DIR", help="write defense.csv (and the curve) here")
    p.add_argument("--json", action="store_true", help="print the result rows as JSON lines")
    add_runtime_args(p)
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace, method: str) -> tuple[float, float]:
    """(sigma, mask_ratio) of the defence from the flags and the denoiser's kind."""
    if method == "mae":
        sigma = 0.0 if args.sigma is None else args.sigma
        mask_ratio = 0.75 if args.mask_ratio is None else args.mask_ratio
    else:
        if args.sigma is None:
            raise ValueError("--sigma is required with a nim denoiser (the test-time noise, e.g. 70/255)")
        sigma, mask_ratio = args.sigma, 0.0 if args.mask_ratio is None else args.mask_ratio
    return sigma, mask_ratio


def run(args: argparse.Namespace) -> int:
    from robustssl import data
    from robustssl.cli.attack import _encoder, _fit_model
    from robustssl.defenses import (
        DefenseEvalConfig,
        DenoisedModel,
        evaluate_defense,
        finetune_on_denoised,
        tradeoff_curve,
        write_curve,
        write_rows,
    )
    from robustssl.defenses.evaluate import THREATS, headline
    from robustssl.finetune.heads import holdout_split
    from robustssl.pretrain.masked_image import load_denoiser
    from robustssl.runtime import deterministic_mode, make_generator, resolve_device

    for flag, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--steps", args.steps),
                        ("--eval-draws", args.eval_draws)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    device = resolve_device(args.device)
    denoiser = load_denoiser(args.denoiser, map_location=device)
    sigma, mask_ratio = _settings(args, denoiser.method_name)
    config = DefenseEvalConfig(
        eps=args.eps, steps=args.steps, eot_samples=args.eot_samples, square_queries=args.square_queries,
        autoattack_steps=args.aa_steps, autoattack_eot_samples=args.aa_eot_samples,
        threats=tuple(args.threats) if args.threats else THREATS, n=args.n, batch_size=args.batch_size,
        eval_draws=args.eval_draws, seed=args.seed, device=str(device))
    with deterministic_mode(args.deterministic):
        encoder = copy.deepcopy(denoiser.encoder) if args.encoder is None else _encoder(args)
        encoder = encoder.to(device).eval()
        undefended, fit_info = _fit_model(args, encoder, device, make_generator(args.seed))
        model = copy.deepcopy(undefended)
        if args.finetune_epochs:
            train = data.load(args.data, root=args.root, split="train",
                              **key_values(args.data_arg, "--data-arg"))
            n_train = len(train) if args.n_train is None else min(args.n_train, len(train))
            fit_idx, _ = holdout_split(n_train, args.val_fraction, make_generator(args.seed))
            finetune_on_denoised(model, denoiser, train, sigma=tuple(args.finetune_sigma),
                                 mask_ratio=mask_ratio, epochs=args.finetune_epochs,
                                 batch_size=args.batch_size,
                                 train_encoder=args.finetune_encoder, indices=fit_idx,
                                 generator=make_generator(args.seed + 1), device=device)
        defended = DenoisedModel(denoiser, model, sigma=sigma, mask_ratio=mask_ratio, seed=args.seed)
        test = data.load(args.data, root=args.root, split=args.split,
                         **key_values(args.data_arg, "--data-arg"))
        rows = evaluate_defense(undefended, defended, test, config)
        curve = None
        if args.curve:
            knob = "mask_ratio" if denoiser.method_name == "mae" else "sigma"
            curve = tradeoff_curve(denoiser, model, test, args.curve, knob=knob, sigma=sigma,
                                   mask_ratio=mask_ratio, config=config)
    _print(rows, args, fit_info)
    if args.out is not None:
        out = Path(args.out).expanduser()
        print(f"results: {write_rows(rows, out / 'defense.csv')}")
        if curve is not None:
            bare = {"clean": headline(rows, "undefended", "clean"),
                    "robust": headline(rows, "undefended", "pgd")}
            csv_path, png_path = write_curve(curve, out / "tradeoff.csv", out / "tradeoff.png",
                                             undefended=bare)
            print(f"trade-off curve: {csv_path}, {png_path}")
    elif curve is not None:
        for row in curve:
            print(json.dumps(row))
    return 0


def _print(rows: list[dict[str, Any]], args: argparse.Namespace, fit_info: dict) -> None:
    from robustssl.defenses import format_table

    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    if fit_info:
        print(f"head fitted: { {k: round(v, 4) for k, v in fit_info.items() if isinstance(v, float)} }")
    print(format_table(rows))
