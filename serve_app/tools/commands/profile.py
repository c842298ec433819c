"""`aladdin profile`: build worker latency/KV profiles.

  aladdin profile --model DIR --tp N --out FILE      time a real vLLM engine and fit
  aladdin profile --from-ops DATA_DIR --out DIR      fit GPU profiles from operator data
  aladdin profile --from-bench RUN... --out FILE     fit to requests served in `aladdin bench` runs
  aladdin profile --list                             list committed profile families
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _from_engine(args: argparse.Namespace) -> int:
    from predictors.latency.engine_profiler import default_grid, profile_engine

    start = time.perf_counter()
    profile = profile_engine(
        args.model,
        tp=args.tp,
        model_name=args.name,
        hardware=args.hardware,
        kv_cache_bytes=args.kv_cache_bytes,
        max_model_len=args.max_model_len,
        grid=default_grid(args.max_model_len, quick=args.quick),
    )
    profile.save(args.out)
    fit = profile.fit
    print(
        f"{args.out}: prefill MAPE {fit.prefill_mape_pct:.1f}%, decode MAPE {fit.decode_mape_pct:.1f}% "
        f"(held out {fit.held_out_fraction:.0%} of {fit.prefill_points}+{fit.decode_points} points), "
        f"KV {profile.kv.capacity_tokens} tokens, {time.perf_counter() - start:.0f} s"
    )
    return 0


def _from_ops(args: argparse.Namespace) -> int:
    from predictors.latency.ops_compose import build_gpu_profiles
    from predictors.latency.splitwise_validation import validate_family

    out = Path(args.out)
    for profile in build_gpu_profiles(Path(args.from_ops)):
        path = profile.save(out / profile.family / f"tp{profile.tp}.json")
        print(
            f"{path}: prefill MAPE {profile.fit.prefill_mape_pct:.1f}%, decode MAPE {profile.fit.decode_mape_pct:.1f}% "
            f"vs composed operator times, KV {profile.kv.capacity_tokens} tokens"
        )
    splitwise = Path(args.from_ops) / "splitwise_perf_model" / "perf_model.csv"
    if splitwise.exists():
        for row in validate_family(splitwise, out):
            print(row.describe())
    return 0


def _from_bench(args: argparse.Namespace) -> int:
    from predictors.latency.families import load_profile_family
    from predictors.latency.served_fit import fit_served_profile
    from serve_app.tools.bench import served_requests

    requests = served_requests(args.from_bench)
    base = load_profile_family(args.base_family).profile(args.tp)
    profile = fit_served_profile(requests, base, source=f"aladdin profile --from-bench ({len(args.from_bench)} runs)")
    profile.save(args.out)
    fit = profile.fit
    print(f"{args.out}: served fit over {len(requests)} requests; held-out prefill MAPE {fit.prefill_mape_pct:.1f}% "
          f"({fit.prefill_points} points), decode MAPE {fit.decode_mape_pct:.1f}% ({fit.decode_points} points); "
          f"decode step {profile.decode.d0_s * 1e3:.2f} ms + {profile.decode.d1_s_per_seq * 1e3:.3f} ms/seq")
    return 0


def _list(args: argparse.Namespace) -> int:
    from predictors.latency.families import list_profile_families, load_profile_family

    for name in list_profile_families():
        family = load_profile_family(name)
        print(f"{name}: tp {', '.join(str(tp) for tp in family.tps)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    if not args.out:
        raise SystemExit("aladdin profile: --out is required with --model, --from-ops or --from-bench")
    if args.from_bench:
        return _from_bench(args)
    return _from_ops(args) if args.from_ops else _from_engine(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="fit latency/KV profiles from a vLLM engine or GPU operator data")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model directory to load in vLLM (e.g. the output of `aladdin model tiny`)")
    what.add_argument("--from-ops", metavar="DATA_DIR", help="folder holding vidur_profiles/ and aiconfigurator_perf/")
    what.add_argument("--from-bench", nargs="+", metavar="RUN",
                      help="`aladdin bench --out` folders of this app: fit to what clients measured")
    what.add_argument("--list", action="store_true", help="list the committed profile families")
    p.add_argument("--out", help="profile JSON to write (--model) or folder of families (--from-ops)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (--model, --from-bench)")
    p.add_argument("--base-family", default="tiny-cpu",
                   help="--from-bench: engine profile family giving KV capacity and context length")
    p.add_argument("--name", default="tiny", help="model name recorded in the profile (--model)")
    p.add_argument("--hardware", default="cpu", help="hardware name recorded in the profile (--model)")
    p.add_argument("--kv-cache-bytes", type=int, default=512 * 1024**2, help="vLLM kv_cache_memory_bytes")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="half the grid, fewer repeats (a smoke run)")
    p.set_defaults(func=_run)
