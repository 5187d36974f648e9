"""``robustssl data list`` and ``robustssl data info NAME [--root DIR] [--split S] [--set KEY=VALUE ...]``."""

from __future__ import annotations

import argparse
import json

from robustssl.cli.args import key_value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list datasets, inspect one",
                       description="Datasets: which exist, which targets they carry, what a local copy "
                                   "holds.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="dataset names, their targets, and whether they need --root")
    ls.add_argument("pattern", nargs="?", default="*", help="glob over names (default *)")
    ls.set_defaults(func=run_list)
    info = actions.add_parser("info", help="size, image shape and targets of one dataset split")
    info.add_argument("name", help="dataset name (see `robustssl data list`)")
    info.add_argument("--root", default=None, help="local folder of a real dataset")
    info.add_argument("--split", default=None,
                      help="split to inspect (default: test, or the dataset's first)")
    info.add_argument("--set", dest="options", action="append", type=key_value, default=[],
                      metavar="KEY=VALUE",
                      help="dataset option, repeatable (e.g. --set corruption=fog --set severity=3)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    info.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    from robustssl.data import DATASETS, names

    metas = {n: DATASETS.meta(n) for n in names(args.pattern)}
    rows = [(n, ",".join(m.get("targets", ())), "yes" if m.get("needs_root") else "no",
             m.get("description", ""))
            for n, m in metas.items()]
    if not rows:
        raise ValueError(f"no dataset matches {args.pattern!r}; registered: {', '.join(names())}")
    header = ("name", "targets", "root", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    return 0


def run_info(args: argparse.Namespace) -> int:
    from robustssl.data import info

    details = info(args.name, root=args.root, split=args.split, **dict(args.options))
    if args.json:
        print(json.dumps(details, default=str))
        return 0
    for key in ("name", "description", "split", "size", "image_shape", "targets", "num_classes", "needs_root",
                "splits", "layout"):
        if details.get(key) is not None:
            value = details[key]
            print(f"{key:12s} {', '.join(map(str, value)) if isinstance(value, list) else value}")
    if "size" not in details:
        print("(pass --root DIR to inspect a local copy)")
    return 0
