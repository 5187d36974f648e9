"""``robustssl demo``: the main job on built-in data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

from robustssl.cli.args import add_runtime_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the quickstart: pretrain, fit heads, attack, on built-in scenes",
        description="SimCLR-pretrain a small ConvNet on synthetic scenes, fit classification, "
        "segmentation and depth heads, attack them and the embedding with PGD, "
        "print the table and write runs/<name>/results.csv.",
    )
    p.add_argument("--name", default="demo", help="run name: results go to runs/<name>/")
    p.add_argument("--out-root", default="runs")
    p.add_argument("--pretrain-steps", type=int, default=None, help="SimCLR steps (default: preset)")
    p.add_argument("--n-test", type=int, default=None, help="test images attacked (default: preset)")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustssl.bench.quickstart import QuickstartConfig
    from robustssl.bench.quickstart import run as run_quickstart
    from robustssl.runtime import deterministic_mode

    cfg = QuickstartConfig(
        name=args.name, out_root=args.out_root, device=args.device, precision=args.precision, seed=args.seed
    )
    if args.pretrain_steps is not None:
        cfg.pretrain_steps = args.pretrain_steps
    if args.n_test is not None:
        cfg.n_test = cfg.attack_n = args.n_test
    with deterministic_mode(args.deterministic):
        run_quickstart(cfg)
    return 0
