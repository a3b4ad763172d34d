"""`python scripts/bench.py`: the options, the full and quick profiles, and the files a run writes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from objdetect import registry
from objdetect_serving.paths import ROOT

from . import __doc__ as PACKAGE_DOC
from . import goals
from .archives import EXTRA_VARIANTS
from .load import WORKLOADS
from .machine import machine_info
from .report import duration, render_markdown
from .results import Report, ServerConfig, from_json, to_json
from .run import Bench, Options

DEFAULT_MODELS = (goals.GOAL_MODEL, registry.EMBEDDED)
# 5 rounds: runs of one cell spread +-10% on this shared 2-core machine, and 3 rounds left
# differences of a few percent (small images) to chance.
FULL = dict(repeats=5, seconds=3.0, min_requests=2, warmup=5, configs=["1x1", "1x4", "2x1", "2x4"],
            images={"small": 8, "phone": 4, "mixed": 4})
QUICK = dict(repeats=1, seconds=0.0, min_requests=2, warmup=1, configs=["1x1", "1x4"],
             images={"small": 2, "phone": 1, "mixed": 4})


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options | None]:
    parser = argparse.ArgumentParser(description=PACKAGE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(registry.ARCHITECTURES))
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS)
    parser.add_argument("--concurrency", nargs="+", type=int)
    parser.add_argument("--repeats", type=int, help="runs per cell; the median is reported (default 5)")
    parser.add_argument("--seconds", type=float, help="least duration of a run (default 3)")
    parser.add_argument("--min-requests", type=int, help="least requests per client in a run (default 2)")
    parser.add_argument("--warmup", type=int, help="uncounted requests per client per workload per server (default 5)")
    parser.add_argument("--configs", nargs="+", metavar="WxB",
                        help="server configurations to try: workers x batchSize (default 1x1 1x4 2x1 2x4)")
    parser.add_argument("--max-batch-delay", type=int, default=10, help="maxBatchDelay in ms (default 10)")
    parser.add_argument("--variants", nargs="+", default=[], choices=[*EXTRA_VARIANTS, "all"],
                        help="also measure our handler with optimizations off (ours_exact: all of them)")
    parser.add_argument("--direct-mode", choices=("threads", "serial"), default="threads")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 run per cell, 2 requests per client")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite --docs from --out; measure nothing")
    args = parser.parse_args(argv)
    if args.markdown_only:
        return args, None
    profile = QUICK if args.quick else FULL

    def pick(value, key):
        return profile[key] if value is None else value

    options = Options(
        models=args.models or ([registry.EMBEDDED] if args.quick else list(DEFAULT_MODELS)),
        workloads=args.workloads or (["small", "mixed"] if args.quick else list(WORKLOADS)),
        concurrency=sorted(set(args.concurrency or [1, 4])),
        repeats=pick(args.repeats, "repeats"),
        seconds=pick(args.seconds, "seconds"),
        min_requests=pick(args.min_requests, "min_requests"),
        warmup=pick(args.warmup, "warmup"),
        configs=[ServerConfig.parse(text, args.max_batch_delay) for text in pick(args.configs, "configs")],
        variants=list(EXTRA_VARIANTS) if "all" in args.variants else list(dict.fromkeys(args.variants)),
        direct_mode=args.direct_mode,
        images=profile["images"],
    )
    if options.repeats < 1 or options.min_requests < 1 or min(options.concurrency) < 1:
        parser.error("--repeats, --min-requests and --concurrency must be positive")
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    if options is None:
        args.docs.write_text(render_markdown(from_json(json.loads(args.out.read_text()))))
        print(f"wrote {args.docs} from {args.out}")
        return 0
    machine = machine_info()
    if machine["load_average_at_start"][0] > 0.5 * machine["cores"]:
        print(f"bench: warning: load average {machine['load_average_at_start']} on {machine['cores']} cores: "
              "the machine is busy, and the numbers will show it", file=sys.stderr)
    # Servers inherit this environment: an OBJDETECT_* setting here would change what `ours` is.
    inherited = {k: v for k, v in os.environ.items()
                 if k.startswith("OBJDETECT_") or k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if inherited:
        print(f"bench: warning: measuring with {inherited} from the environment", file=sys.stderr)
    bench = Bench(options, log=lambda message: print(message, flush=True))
    results = bench.run()
    report = Report(
        machine=machine,
        settings={"command": " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]),
                  "models": options.models, "workloads": options.workloads, "concurrency": options.concurrency,
                  "repeats": options.repeats, "seconds": options.seconds, "min_requests": options.min_requests,
                  "warmup": options.warmup, "configs": [f"{c.workers}x{c.batch_size}" for c in options.configs],
                  "max_batch_delay_ms": args.max_batch_delay, "variants": options.variants,
                  "direct_mode": options.direct_mode, "images_per_workload": options.images,
                  "weights": bench.weights, "openvino_direct": bench.openvino_runtimes,
                  "inherited_environment": inherited},
        results=results,
        goals=goals.evaluate(results),
        failures=bench.failures,
        runtime_s=round(time.monotonic() - bench.began, 1),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_json(report), indent=2))
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(render_markdown(report))
    print(f"bench: wrote {args.out} and {args.docs} in {duration(report.runtime_s)}")
    for goal in report.goals:
        print(f"  {goal.model}: {goal.goal}: {goal.detail}: "
              f"{ {True: 'met', False: 'NOT MET', None: 'not measured'}[goal.met] }")
    if bench.failures:
        print("bench: some servers failed:\n" + "\n".join(bench.failures), file=sys.stderr)
        return 1
    return 0
