"""`aladdin bench-report OUT`: markdown tables of a `make bench` folder (for BENCHMARKS.md)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from serve_app.tools.bench_report import report

    print(report(args.out), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-report", help="markdown tables of a `make bench` result folder")
    p.add_argument("out", nargs="?", default="bench-results", help="the folder `make bench` wrote")
    p.set_defaults(func=_run)
