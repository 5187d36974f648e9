"""``robustssl bench``: run (or resume) a benchmark spec and write its report.

    robustssl bench quickstart                         # a shipped spec (robustssl bench --list)
    robustssl bench my_spec.yaml --out runs --resume   # continue an interrupted run
    robustssl bench my_spec.yaml --check               # validate and load everything, compute nothing
    torchrun --nproc_per_node=2 -m robustssl bench my_spec.yaml

Results go to ``<out>/<name>/results.sqlite`` (``robustssl report`` turns them into HTML, markdown, CSV,
JSON); fine-tuned heads to ``<out>/<name>/heads``, pretrained preset encoders to ``<out>/<name>/encoders``.
A run whose store already holds finished cells continues only with ``--resume`` (finished cells are not
recomputed; cells whose spec changed are) or starts over with ``--overwrite``.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark spec: encoders x tasks x threats, resumable, with a report",
        description="Expand a benchmark spec (YAML) into cells (encoder x task x threat), fine-tune the "
        "heads, run every threat, store the results in runs/<name>/results.sqlite and write the report.",
    )
    p.add_argument("spec", nargs="?", help="a spec YAML file or a shipped spec name")
    p.add_argument("--list", action="store_true", help="list the shipped specs and exit")
    p.add_argument("--out", default="runs", help="folder holding the run folders (default runs)")
    p.add_argument("--resume", action="store_true", help="continue a run; finished cells are kept")
    p.add_argument(
        "--overwrite", action="store_true", help="discard earlier results of this run and start over"
    )
    p.add_argument("--check", action="store_true", help="validate the spec and load everything, then stop")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML/markdown report")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a top-level key or budgets.KEY, e.g. --set budgets.n_test=100 (repeatable)",
    )
    group = p.add_argument_group("runtime (default: the spec's)")
    group.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--precision", default=None, help="fp32, bf16 or fp16")
    group.add_argument("--seed", type=int, default=None, help="the seed every generator is derived from")
    group.add_argument("--deterministic", action="store_true", help="ask PyTorch for deterministic kernels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustssl.bench.spec import list_specs, load_spec

    if args.list:
        for name in list_specs():
            print(name)
        return 0
    if not args.spec:
        raise ValueError("give a spec: a YAML file or a shipped name (robustssl bench --list)")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    overrides = list(args.set)
    for key in ("device", "precision", "seed"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    spec = load_spec(args.spec, overrides)
    if args.check:
        return _check(spec)

    from robustssl.bench.runner import run as run_bench
    from robustssl.runtime import deterministic_mode, distributed

    with deterministic_mode(args.deterministic):
        summary = run_bench(
            spec, args.out, resume=args.resume, overwrite=args.overwrite, report=not args.no_report
        )
    if distributed.is_main():
        print(
            f"{summary.cells} cells in {summary.units} units, {summary.computed} units computed in "
            f"{summary.seconds:.0f} s"
        )
        if summary.report is not None:
            print((summary.report.parent / "summary.md").read_text())
            print(f"report: {summary.report}")
        print(f"results: {summary.run_dir / 'results.sqlite'}")
    return 0


def _check(spec) -> int:
    from robustssl.bench.plan import build_plan
    from robustssl.bench.resources import prepare
    from robustssl.runtime import resolve_device

    res = prepare(spec, resolve_device(spec.device))
    units = build_plan(spec, res.identities)
    kinds: dict[str, int] = {}
    for unit in units:
        kinds[unit.kind] = kinds.get(unit.kind, 0) + len(unit.cells)
    cells = sum(kinds.values())
    print(
        f"spec {spec.name!r} ({spec.source}) is valid: {len(spec.encoders)} encoders, "
        f"{len(spec.tasks)} tasks, "
        f"{cells} cells in {len(units)} units ({', '.join(f'{k}: {v} cells' for k, v in kinds.items())})"
    )
    return 0
