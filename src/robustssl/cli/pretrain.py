"""``robustssl pretrain``: train an encoder with a self-supervised method, from a preset or from flags.

    robustssl pretrain --preset simclr-scenes-tiny [--set train.lr=0.3 ...] [--out runs/NAME]
    robustssl pretrain --method acl --encoder convnet_small --encoder-opt dual_bn=true --data scenes \\
        --steps 300 --batch-size 128 [--method-opt eps=0.0314 ...]
    robustssl pretrain --list

Writes ``<out>/encoder.safetensors`` (+ JSON metadata, loadable by ``rs.encoders.load``), ``config.json`` (the
resolved configuration), ``preset.json``, ``train_state.safetensors`` and TensorBoard scalars in
``<out>/tensorboard``. ``--resume`` continues an interrupted run exactly; a finished run is not repeated.
Under ``torchrun --nproc_per_node=N -m robustssl pretrain ...`` it trains with DDP.
"""

from __future__ import annotations

import argparse
import inspect
import json

from robustssl.cli.args import add_runtime_args, key_values

FLAG_TO_TRAIN = {
    "steps": "steps",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
    "warmup_steps": "warmup_steps",
    "checkpoint_every": "checkpoint_every",
    "monitor_every": "monitor_every",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of an encoder",
        description="Pretrain an encoder with a self-supervised method (a preset or flags), writing "
        "<out>/encoder.safetensors (+ JSON metadata), config.json and TensorBoard scalars.",
    )
    p.add_argument("--list", action="store_true", help="list methods (with their options) and presets")
    p.add_argument("--preset", default=None, help="a shipped preset name (see --list) or a YAML file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a preset value, e.g. train.lr=0.1 or method_options.eps=0.0157 (repeatable)",
    )
    p.add_argument("--method", default=None, help="pretraining method (default simclr without --preset)")
    p.add_argument("--method-opt", action="append", default=[], metavar="KEY=VALUE", help="method option")
    p.add_argument("--encoder", default=None, help="encoder registry name (default convnet_small)")
    p.add_argument("--encoder-opt", action="append", default=[], metavar="KEY=VALUE", help="encoder option")
    p.add_argument("--data", default=None, help="dataset name (default scenes)")
    p.add_argument("--root", default=None, help="dataset folder (for datasets read from disk)")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE", help="dataset option")
    budget = p.add_argument_group("training (override the preset)")
    budget.add_argument("--steps", type=int, default=None)
    budget.add_argument("--epochs", type=int, default=None)
    budget.add_argument("--batch-size", type=int, default=None, help="global batch size")
    budget.add_argument("--optimizer", default=None, choices=["sgd", "lars", "adamw"])
    budget.add_argument("--lr", type=float, default=None)
    budget.add_argument("--weight-decay", type=float, default=None)
    budget.add_argument("--momentum", type=float, default=None)
    budget.add_argument("--warmup-steps", type=int, default=None)
    budget.add_argument(
        "--checkpoint-every", type=int, default=None, help="write the training state every N steps"
    )
    budget.add_argument(
        "--monitor-every",
        type=int,
        default=None,
        help="online linear probe + k-NN accuracy on the held-out split every N steps (needs labels)",
    )
    p.add_argument("--out", default=None, help="output folder (default runs/<preset or method>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_runtime_args(p)
    p.set_defaults(func=run)


def _listing() -> str:
    from robustssl.pretrain import METHODS, method_options
    from robustssl.pretrain.presets import list_presets

    lines = ["methods:"]
    for name in METHODS.names():
        opts = ", ".join(
            k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in method_options(name).items()
        )
        lines.append(f"  {name:<18} {opts}")
    lines.append("presets:")
    lines += [f"  {name}" for name in list_presets()]
    return "\n".join(lines)


def resolve(args: argparse.Namespace):  # -> Preset
    """The preset this command line asks for: ``--preset`` (or flags alone) with every given flag applied."""
    from robustssl.pretrain.presets import Preset, from_dict, load_preset

    if args.preset is not None:
        preset = load_preset(args.preset)
    else:
        preset = Preset(method=args.method or "simclr", name=args.method or "simclr", train={"steps": 500})
    raw = preset.to_dict()
    for key in ("method", "encoder", "data"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    raw["method_options"] = {**raw["method_options"], **key_values(args.method_opt, "--method-opt")}
    raw["encoder_options"] = {**raw["encoder_options"], **key_values(args.encoder_opt, "--encoder-opt")}
    raw["data_options"] = {**raw["data_options"], **key_values(args.data_opt, "--data-opt")}
    if args.root is not None:
        raw["data_options"]["root"] = args.root
    train = dict(raw["train"])
    for flag, key in FLAG_TO_TRAIN.items():
        value = getattr(args, flag)
        if value is not None:
            train[key] = value
            if key == "epochs":
                train["steps"] = None
            if key == "steps":
                train.pop("epochs", None)
    raw["train"] = train
    from robustssl.pretrain.presets import override

    return override(from_dict(raw, source=preset.source or "<command line>"), list(args.set))


def run(args: argparse.Namespace) -> int:
    from robustssl.pretrain.presets import pretrain_preset
    from robustssl.runtime import deterministic_mode, distributed

    if args.list:
        print(_listing())
        return 0
    preset = resolve(args)
    preset.train = {**preset.train, "seed": args.seed} if args.seed else preset.train
    out = args.out or f"runs/{preset.name or preset.method}"
    with deterministic_mode(args.deterministic):
        checkpoint = pretrain_preset(
            preset, out, resume=args.resume, device=args.device, precision=args.precision
        )
    if distributed.is_main():
        print(
            json.dumps(
                {"preset": preset.name, "method": preset.method, "checkpoint": str(checkpoint)}, indent=2
            )
        )
    return 0
