"""``robustssl encoders list [PATTERN]`` and ``robustssl encoders inspect PATH|NAME``."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from robustssl.cli.args import key_values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encoders", help="list encoders; inspect an encoder or a checkpoint",
                       description="List the registered encoders, or inspect one (by name) or a checkpoint "
                                   "(architecture, parameters, dims, stride, metadata, sha256, key mapping).")
    verbs = p.add_subparsers(dest="encoders_command", metavar="COMMAND")
    lp = verbs.add_parser("list", help="registered encoder names (timm:*/torchvision:* patterns query those)",
                          description="List encoder names matching a glob PATTERN. 'timm:*vit*' and "
                                      "'torchvision:resnet*' list the adapter models (needs the timm extra).")
    lp.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="glob, default *")
    lp.add_argument("--details", action="store_true",
                    help="build each built-in encoder and show embed/dense dims, stride and parameter count")
    lp.set_defaults(func=run_list)
    ip = verbs.add_parser("inspect", help="architecture, dims and checkpoint metadata of a PATH or NAME",
                          description="Inspect a checkpoint file (.safetensors with its .json sidecar, or "
                                      ".pt/.pth read with weights_only=True) or an encoder name.")
    ip.add_argument("target", metavar="PATH|NAME", help="checkpoint path or encoder name")
    ip.add_argument("--name", default=None, help="architecture of a foreign checkpoint (e.g. resnet18_cifar)")
    ip.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                    help="encoder constructor argument, value as JSON if it parses (repeatable), "
                         "e.g. --arg img_size=32 --arg patch_size=4")
    ip.add_argument("--modules", action="store_true", help="also print the module tree")
    ip.add_argument("--json", action="store_true", help="print one JSON object")
    ip.set_defaults(func=run_inspect)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_list(args: argparse.Namespace) -> int:
    from robustssl import encoders

    found = encoders.names(args.pattern)
    if not found:
        print(f"no encoder matches {args.pattern!r}; built-ins: {', '.join(encoders.names())}")
        return 1
    rows = []
    for name in found:
        description = encoders.ENCODERS.meta(name).get("description", "") if name in encoders.ENCODERS else ""
        if args.details and name in encoders.ENCODERS:
            enc = encoders.create(name)
            params = sum(p.numel() for p in enc.parameters())
            rows.append((name, str(enc.embed_dim), str(enc.dense_dim), str(enc.stride),
                         f"{params / 1e6:.2f}M", description))
        else:
            rows.append((name, description))
    header = ("name", "embed", "dense", "stride", "params", "description") if args.details else ("name",
                                                                                                 "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if args.pattern == "*":
        print("\nadapters: timm:<model> and torchvision:<model> (list with PATTERN 'timm:*resnet*')")
    return 0


def _is_checkpoint(target: str) -> bool:
    from robustssl.encoders.checkpoints import weights_path

    path = Path(target).expanduser()
    return path.is_file() or weights_path(path).is_file()


def run_inspect(args: argparse.Namespace) -> int:
    from robustssl import encoders
    from robustssl.encoders.checkpoints import load_with_report

    kwargs = key_values(args.arg, "--arg")
    info: dict[str, Any] = {}
    if _is_checkpoint(args.target):
        # Missing/unexpected keys are part of the report printed below, not warnings.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc, report = load_with_report(args.target, name=args.name, encoder_kwargs=kwargs or None)
        info.update(file=report.path, format=report.format, sha256=report.sha256,
                    sha256_status=report.sha256_status)
    elif args.target.startswith(("timm:", "torchvision:")) or args.target in encoders.ENCODERS:
        enc, report = encoders.create(args.target, **kwargs), None
    else:
        raise FileNotFoundError(f"{args.target!r} is neither a checkpoint file nor an encoder name; encoder "
                                f"names: {', '.join(encoders.names())}, timm:<model>, torchvision:<model>")
    info.update(
        name=enc.name, class_name=type(enc).__name__, encoder_config=enc.config,
        parameters=sum(p.numel() for p in enc.parameters()),
        trainable_parameters=sum(p.numel() for p in enc.parameters() if p.requires_grad),
        embed_dim=enc.embed_dim, dense_dim=enc.dense_dim, stride=enc.stride,
        normalization=("none" if enc.normalize.identity else
                       {"mean": [round(v, 4) for v in enc.normalize.mean.flatten().tolist()],
                        "std": [round(v, 4) for v in enc.normalize.std.flatten().tolist()]}),
    )
    if report is not None:
        meta = {k: v for k, v in report.metadata.items() if k not in ("sha256", "encoder_config", "name")}
        info.update(metadata=meta, key_prefix=report.prefix, missing_keys=report.missing,
                    unexpected_keys=report.unexpected, dropped_head_keys=report.dropped,
                    ignored_keys=report.ignored, resampled_keys=report.resampled)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if isinstance(value, list):
            more = f", ... ({len(value)} in all)" if len(value) > 10 else ""
            shown = ", ".join(map(str, value[:10])) + more
            print(f"{key}: {len(value)}" + (f" [{shown}]" if value else ""))
        elif isinstance(value, dict):
            print(f"{key}: {json.dumps(value, default=str, sort_keys=True)}")
        else:
            print(f"{key}: {value}")
    if args.modules:
        print(enc)
    return 0
