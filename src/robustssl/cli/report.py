"""``robustssl report``: the report of a benchmark run, from its result store.

    robustssl report runs/quickstart                  # report.html, summary.md, plots/*.png in the run folder
    robustssl report runs/quickstart --csv --json     # also results.csv / results.json there
    robustssl report runs/quickstart --csv out.csv --no-html

The HTML page is self-contained (plots inlined as PNG, no external resources).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a benchmark run's report (HTML, markdown, plots) and export its results",
        description="Turn runs/<name>/results.sqlite into report.html (self-contained), summary.md and "
        "plots/*.png, and optionally export every result row as CSV or JSON.",
    )
    p.add_argument("run", help="the run folder (runs/<name>) or its results.sqlite")
    p.add_argument("--out", default=None, help="folder for the report files (default: the run folder)")
    p.add_argument(
        "--csv",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="export the result rows as CSV (default file: <run>/results.csv)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="export rows and descriptions as JSON (default file: <run>/results.json)",
    )
    p.add_argument("--no-html", action="store_true", help="only export (with --csv/--json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustssl.bench.report import write_report
    from robustssl.bench.store import Store

    run_path = Path(args.run).expanduser()
    folder = run_path if run_path.is_dir() else run_path.parent
    with Store.open(run_path) as store:
        if args.csv is not None:
            print(f"csv: {store.export_csv(args.csv or folder / 'results.csv')}")
        if args.json is not None:
            print(f"json: {store.export_json(args.json or folder / 'results.json')}")
    if not args.no_html:
        path = write_report(run_path, args.out)
        print(path.with_name("summary.md").read_text())
        print(f"report: {path}")
    return 0
