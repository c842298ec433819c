"""`aladdin bench`: open-loop trace replay against an OpenAI-compatible endpoint.

  aladdin bench --url http://127.0.0.1:8000 --trace azure_conv.csv --rate-scale 0.5 \\
      --duration 60 --slo-ttft-ms 1000 --slo-atgt-ms 50 --json --out results/
"""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from serve_app.tools.bench import TraceSlice, load_slice, run_bench, served_model, slice_dict, write_run
    from serve_app.config import ModelConfig
    from serve_app.model_source import resolve_tokenizer_dir
    from serve_app.tools.trace_prompts import trace_workload

    model, max_len = served_model(args.url, args.api_key)
    spec = TraceSlice(
        trace=args.trace, synthetic_rate=args.synthetic_rate, rate_scale=args.rate_scale,
        start_s=args.start, duration_s=args.duration, max_model_len=args.max_model_len or max_len or 2048,
        seed=args.seed, prefix_groups=args.prefix_groups,
    )
    trace, cut = load_slice(spec)
    tokenizer_dir = args.tokenizer or str(resolve_tokenizer_dir(ModelConfig()))
    workload = trace_workload(trace, AutoTokenizer.from_pretrained(tokenizer_dir), seed=args.seed)
    if not args.json:
        print(f"{len(workload)} requests over {workload[-1].arrival_s:.1f} s ({cut} cut to fit "
              f"{spec.max_model_len} tokens) -> {args.url} model {model}", flush=True)
    run = run_bench(
        args.url, workload, model=args.model or model, slo_ttft_ms=args.slo_ttft_ms, slo_atgt_ms=args.slo_atgt_ms,
        label=args.label, api_key=args.api_key, timeout_s=args.timeout, progress=not args.no_progress,
    )
    run.summary.update(slice=slice_dict(spec), cut_to_fit=cut, url=args.url)
    if args.out:
        for kind, path in write_run(run, args.out, plot=not args.no_plot).items():
            run.summary.setdefault("files", {})[kind] = str(path)
    if args.json:
        print(json.dumps(run.summary, indent=1))
    else:
        s = run.summary
        print(f"sent {s['requests']}  ok {s['succeeded']}  failed {s['failed']}  wall {s['wall_s']:.1f} s")
        print(f"SLO attainment {s['attainment']:.3f}  goodput {s['goodput_per_s']:.2f} req/s  "
              f"throughput {s['output_tokens_per_s']} tok/s")
        print(f"TTFT ms p50 {s['ttft_ms_p50']}  p99 {s['ttft_ms_p99']}   ATGT ms p50 {s['atgt_ms_p50']}  "
              f"p99 {s['atgt_ms_p99']}")
    return 0 if run.summary["failed"] == 0 or args.allow_failures else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="replay a trace open-loop against an OpenAI endpoint, score SLOs")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--trace", help="Azure CSV (.csv) or Mooncake JSONL (.jsonl); default: synthetic Poisson")
    p.add_argument("--synthetic-rate", type=float, default=2.0, help="req/s of the synthetic trace")
    p.add_argument("--rate-scale", type=float, default=1.0, help="arrivals k times as fast")
    p.add_argument("--start", type=float, default=0.0, help="offset into the scaled trace, s")
    p.add_argument("--prefix-groups", type=float,
                   help="Mooncake: replay this share of the prefix groups (conversations) whole, so a rate scale "
                        "above 1 keeps their prefix reuse in the window")
    p.add_argument("--duration", type=float, default=60.0, help="length of the replayed slice, s")
    p.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    p.add_argument("--slo-atgt-ms", type=float, default=50.0)
    p.add_argument("--model", help="model name to request (default: the first the server lists)")
    p.add_argument("--max-model-len", type=int, help="context window (default: what the server says, else 2048)")
    p.add_argument("--tokenizer", help="tokenizer directory for prompt lengths (default: the embedded tiny model's)")
    p.add_argument("--api-key", help="Bearer key, if the server wants one")
    p.add_argument("--label", default="bench", help="name of this run in the results")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for results.json, requests.csv and latency.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when requests failed")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)
