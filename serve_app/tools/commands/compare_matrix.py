"""`aladdin compare-matrix` (`make capacity`): `compare` over workloads x profile families x
rate scales, one table and a JSON file (placement.evaluation.compare_matrix)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _print_table(header: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))


def _run(args: argparse.Namespace) -> int:
    from placement.evaluation.compare_matrix import cells, run_matrix, summary, table_rows

    try:
        cell_list = cells(args.workloads.split(","), args.families.split(","),
                          [float(k) for k in args.rate_scales.split(",")])
    except (ValueError, LookupError) as exc:
        raise SystemExit(f"aladdin compare-matrix: {exc}") from None
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(cell_list), desc="cells", unit="cell")
    except ImportError:
        bar = None

    def progress(result) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{result.cell.label} {result.seconds:.0f} s")
            bar.update()

    results = run_matrix(
        cell_list, jobs=args.jobs, progress=progress, data_dir=args.data, slo_ttft_s=args.slo_ttft,
        slo_atgt_s=args.slo_atgt, target=args.target, limit=args.limit, autoscaled=not args.no_autoscaled,
        max_gpus=args.max_gpus,
    )
    if bar is not None:
        bar.close()
    header, rows = table_rows(results)
    _print_table(header, rows, args.markdown)
    goals = summary(results)
    print(json.dumps(goals, indent=1))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        Path(args.json).write_text(json.dumps(
            {"settings": settings, "summary": goals, "cells": [r.to_dict() for r in results]}, indent=1, default=str))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from placement.evaluation.compare_matrix import FAMILIES, RATE_SCALES, WORKLOADS

    p = sub.add_parser("compare-matrix", help="compare over workloads x profile families x rate scales")
    p.add_argument("--data", default="../shared/data", help="folder holding azure_llm_2023/ and mooncake_fast25/")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated (default: all)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--rate-scales", default=",".join(f"{k:g}" for k in RATE_SCALES))
    p.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT SLO, s (mooncake: 2 s, its own)")
    p.add_argument("--slo-atgt", type=float, default=0.05, help="ATGT SLO, s per token")
    p.add_argument("--target", type=float, default=0.99, help="SLO attainment to reach")
    p.add_argument("--limit", type=int, help="first N requests of each workload (quick runs)")
    p.add_argument("--max-gpus", type=int, default=1024, help="give up above this many GPUs per policy")
    p.add_argument("--no-autoscaled", action="store_true", help="skip the autoscaled runs")
    p.add_argument("--jobs", type=int, default=1, help="cells run in this many processes")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", help="write settings, summary and every cell here")
    p.set_defaults(func=_run)
