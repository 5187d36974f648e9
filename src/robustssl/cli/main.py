"""``robustssl VERB ...``: one module per verb, each exposing ``register(subparsers)``.

A verb module adds its sub-parser and sets ``func`` (a callable taking the parsed args and returning an exit
code). Errors a user can act on (``ValueError``, ``FileNotFoundError``, ...) are printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from robustssl import __version__
from robustssl.runtime import distributed
from robustssl.runtime.logging import configure

# Verb modules under robustssl.cli, in the order --help lists them.
VERBS = ("data", "encoders", "pretrain", "finetune", "attack", "corrupt", "defend", "bench", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustssl",
        description="How robust is a self-supervised vision encoder, on which task, against which threat.")
    parser.add_argument("--version", action="version", version=f"robustssl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"robustssl.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure(-1 if args.quiet else args.verbose)
    try:
        code = int(args.func(args) or 0)
        distributed.shutdown()  # under torchrun: every rank ends the process group cleanly (no-op otherwise)
        return code
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as exc:
        if args.verbose > 1:
            raise
        print(f"robustssl {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustssl {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
