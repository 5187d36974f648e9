"""``robustssl pretrain --method NAME --encoder NAME --data NAME``: train an encoder, write a checkpoint."""

from __future__ import annotations

import argparse
import json

from robustssl.cli.args import add_runtime_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of an encoder",
        description="Pretrain an encoder with a self-supervised method and write "
        "runs/<name>/encoder.safetensors (+ JSON metadata) and config.json.",
    )
    p.add_argument("--method", default="simclr", help="pretraining method (see --list)")
    p.add_argument("--list", action="store_true", help="list the pretraining methods and exit")
    p.add_argument("--encoder", default="convnet_small", help="encoder registry name")
    p.add_argument("--data", default="scenes", help="dataset name")
    p.add_argument("--root", default=None, help="dataset folder (for datasets read from disk)")
    p.add_argument("--split", default="train")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature (simclr)")
    p.add_argument("--out", default="runs/pretrain", help="output folder")
    p.add_argument(
        "--checkpoint-every", type=int, default=0, help="write train_state.safetensors every N steps"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustssl import data, encoders
    from robustssl.pretrain import METHODS, TrainConfig, train
    from robustssl.runtime import deterministic_mode, seeded_init

    if args.list:
        print("\n".join(METHODS.names()))
        return 0
    method_cls = METHODS.get(args.method)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        precision=args.precision,
        device=args.device,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    dataset = data.load(args.data, root=args.root, split=args.split)
    with seeded_init(args.seed):
        encoder = encoders.create(args.encoder)
        method = method_cls(encoder, temperature=args.temperature)
    with deterministic_mode(args.deterministic):
        summary = train(
            method, dataset, config, out_dir=args.out, method_name=args.method, resume=args.resume
        )
    print(json.dumps(summary, indent=2))
    return 0
