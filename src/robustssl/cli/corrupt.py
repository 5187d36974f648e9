"""``robustssl corrupt``: write a corrupted copy of a dataset (CIFAR-10-C or ImageNet-C layout), resumably."""

from __future__ import annotations

import argparse

from robustssl.runtime.device import resolve_device


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,5, got {text!r}") \
            from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "corrupt", help="write a corrupted copy of a dataset (CIFAR-10-C / ImageNet-C layout)",
        description="Corrupt a dataset with every chosen corruption x severity and write it in the "
                    "CIFAR-10-C layout (<corruption>.npy + labels.npy) or the ImageNet-C layout "
                    "(<corruption>/<severity>/<class>/<index>.png). Interrupted runs resume where they "
                    "stopped.")
    parser.add_argument("--data", required=True, help="dataset name (see `robustssl data list`)")
    parser.add_argument("--root", default=None, help="dataset directory (default: the dataset's own default)")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument("--out", required=True, help="output directory (created; reruns resume into it)")
    parser.add_argument("--params", default="auto", choices=("cifar", "imagenet", "auto"),
                        help="published parameter set; auto: cifar below 64 pixels, else imagenet")
    parser.add_argument("--corruptions", type=_names, default=None,
                        help="comma-separated corruption names (default: all registered)")
    parser.add_argument("--severities", type=_ints, default=[1, 2, 3, 4, 5],
                        help="comma-separated severities in 1..5 (default all; the cifar layout needs all)")
    parser.add_argument("--layout", default="auto", choices=("cifar", "imagenet", "auto"),
                        help="output layout; auto: cifar for fixed-size images below 64 pixels, "
                             "else imagenet")
    parser.add_argument("--n", type=int, default=None, help="corrupt only the first N samples (default all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="base seed; each corruption/severity derives its own")
    parser.add_argument("--batch-size", type=int, default=64, help="images corrupted per batch (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import robustssl.data as data
    from robustssl.runtime.logging import get_logger
    from robustssl.threats.corruptions.writer import write_corrupted

    load = getattr(data, "load", None)
    if load is None:
        raise RuntimeError("robustssl.data.load is not available in this build; cannot open --data "
                           f"{args.data!r}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    dataset = load(args.data, root=args.root, split=args.split)
    manifest = write_corrupted(
        dataset, args.out, corruptions=args.corruptions, severities=args.severities, layout=args.layout,
        params=args.params, seed=args.seed, n=args.n, batch_size=args.batch_size,
        device=resolve_device(args.device))
    cells = sum(len(v) for v in manifest["done"].values())
    get_logger("cli.corrupt").info("%s: %d corruption/severity cells of %d images in the %s layout",
                                   args.out, cells, manifest["n"], manifest["layout"])
    return 0
