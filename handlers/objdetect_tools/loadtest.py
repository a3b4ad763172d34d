"""`make loadtest`: run locust headless against a server and write a report with plots (scripts/loadtest.py).

    python scripts/loadtest.py [--host URL] [--users 4] [--spawn-rate 2] [--duration 60s]
                               [--soak --rate 1 --warmup-s 60]

Without --host, a local TorchServe serving model_store/detector-v1.0.mar is started for the run
(and stopped). Writes reports/loadtest-<timestamp>/: locust's CSVs and HTML, summary.json
(requests, failures, throughput_rps, p50_ms, p90_ms, p99_ms, from locust's own aggregate), report.md,
and plots: throughput and latency percentiles over time, the latency distribution, and the server's
view beside the client's: time queued in TorchServe and in each stage of the request path, scraped
from its metrics port during the run (a local server's, or --metrics-url's).
--soak runs at a fixed rate per user and records the server's memory over time (from the process
table for a local server, or from --metrics-url), flagging growth after the warm-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from objdetect.telemetry import STAGES

from objdetect_serving.archive import archive_path, build_mar
from objdetect_serving.paths import MODEL_STORE, ROOT
from objdetect_serving.torchserve import Ports, TorchServe

LOCUSTFILE = Path(__file__).with_name("locustfile.py")  # not imported here: locust monkey-patches what imports it
# Memory is judged growing when, after the warm-up, the last quarter of the samples sits this much
# above the first. The warm-up is not judged: a new server's memory climbs for its first minute or so
# (OpenVINO compiles kernels for each new number of proposals, allocators grow to their working set;
# measured: 1037 -> 1253 MB in 40 s, then +0.6% over the next 110 s).
GROWTH_LIMIT = 0.10


def run_locust(host: str, out: Path, users: int, spawn_rate: float, duration: str, rate: float | None) -> int:
    env = {**os.environ, "OBJDETECT_LATENCY_LOG": str(out / "latencies.txt")}
    if rate:
        env["OBJDETECT_RATE"] = str(rate)
    command = [str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE), "--headless", "--host", host,
               "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", duration,
               "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust.html"),
               "--only-summary", "--stop-timeout", "30"]
    with open(out / "locust.log", "w") as log:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def _ms(value: str) -> float | None:
    """A locust percentile; None where it has none (a run in which every request failed)."""
    return None if value in ("", "N/A") else float(value)


def _num(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:g}"


def summarize(out: Path) -> dict:
    """The numbers locust measured: its Aggregated row."""
    with open(out / "locust_stats.csv") as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    total = rows["Aggregated"]
    summary = {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "throughput_rps": round(float(total["Requests/s"]), 3),
        "p50_ms": _ms(total["50%"]),
        "p90_ms": _ms(total["90%"]),
        "p99_ms": _ms(total["99%"]),
        "per_request_type": {name: {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                                    "p50_ms": _ms(r["50%"]), "p99_ms": _ms(r["99%"])}
                             for name, r in rows.items() if name != "Aggregated"},
    }
    return summary


def plot(out: Path, memory: list[tuple[float, float]], warmup_s: float = 0.0,
         server: list[tuple[float, dict[str, float]]] = ()) -> list[str]:
    """The report's plots; `server`: ServerSampler.intervals(), the server's view of the same run."""
    # Imported here, when there is a report to draw: matplotlib's first import builds its font cache
    # in HOME, which `--help` must not.
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    with open(out / "locust_stats_history.csv") as file:
        history = [r for r in csv.DictReader(file) if r["Name"] == "Aggregated"]
    start = int(history[0]["Timestamp"]) if history else 0
    seconds = [int(r["Timestamp"]) - start for r in history]

    def column(name):
        return [float(r[name]) if r[name] not in ("", "N/A") else float("nan") for r in history]

    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    throughput.plot(seconds, column("Requests/s"), label="requests/s")
    throughput.plot(seconds, column("Failures/s"), label="failures/s", color="tab:red")
    throughput.set_ylabel("per second")
    throughput.legend()
    for name in ("50%", "90%", "99%"):
        latency.plot(seconds, column(name), label=f"p{name[:-1]}")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds into the run")
    latency.legend()
    figure.suptitle("objdetect load test: throughput and latency percentiles")
    figure.tight_layout()
    figure.savefig(out / "over_time.png", dpi=90)
    plt.close(figure)
    files = ["over_time.png"]

    latencies = [float(line) for line in (out / "latencies.txt").read_text().split()] if (out / "latencies.txt").exists() else []
    if latencies:
        figure, axis = plt.subplots(figsize=(8, 3.5))
        axis.hist(latencies, bins=50)
        axis.set_xlabel("latency (ms)")
        axis.set_ylabel("requests")
        axis.set_title(f"latency distribution ({len(latencies)} successful requests)")
        figure.tight_layout()
        figure.savefig(out / "latency_distribution.png", dpi=90)
        plt.close(figure)
        files.append("latency_distribution.png")

    if server and history:
        figure, axis = plt.subplots(figsize=(8, 4))
        axis.plot(seconds, column("50%"), label="client: p50 response time", color="black", linewidth=2)
        for name in ("queue_ms", *(f"{stage}_ms" for stage in STAGES)):
            if any(name in means for _, means in server):
                axis.plot([t - start for t, _ in server], [means.get(name, float("nan")) for _, means in server],
                          label=f"server: mean {name[:-3]}" + (" (TorchServe's queue)" if name == "queue_ms" else ""))
        axis.set_xlabel("seconds into the run")
        axis.set_ylabel("ms per request")
        axis.set_title("the client's view and the server's: where a request's time goes")
        axis.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out / "server_view.png", dpi=90)
        plt.close(figure)
        files.append("server_view.png")

    if memory:
        figure, axis = plt.subplots(figsize=(8, 3.5))
        axis.plot([t for t, _ in memory], [mb for _, mb in memory])
        if warmup_s:
            axis.axvspan(0, min(warmup_s, memory[-1][0]), color="0.9", label="warm-up (not judged)")
            axis.legend(loc="lower right")
        axis.set_xlabel("seconds into the run")
        axis.set_ylabel("server memory (MB)")
        axis.set_title("server memory during the soak")
        figure.tight_layout()
        figure.savefig(out / "memory.png", dpi=90)
        plt.close(figure)
        files.append("memory.png")
    return files


def scrape(metrics_url: str) -> dict[str, float]:
    """A server's running totals on its metrics port, over all its models: microseconds requests
    spent queued and how many were answered (TorchServe's), seconds spent in each stage and how
    many requests passed it (ours), and the host's memory in use (MB)."""
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(requests.get(metrics_url, timeout=5).text):
        for sample in family.samples:
            if sample.name == "ts_queue_latency_microseconds_total":  # the parser adds _total to counters
                totals["queue_us"] += sample.value
            elif sample.name == "ts_inference_requests_total":
                totals["requests"] += sample.value
            elif sample.name in ("objdetect_stage_seconds_sum", "objdetect_stage_seconds_count"):
                totals[f"{sample.labels['stage']}_{sample.name.rsplit('_', 1)[1]}"] += sample.value
            elif sample.name == "MemoryUsed":
                totals["memory_mb"] = sample.value
    return dict(totals)


def server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds per request between two scrapes: queued, and in each stage that ran."""
    means = {}
    # TorchServe counts a request when it arrives but adds its queue time when it is answered, and
    # exports neither counter before it first moves: a scrape between a server's first request and
    # first answer has requests but no queue time yet, which says nothing about the queue.
    answered = after.get("requests", 0) - before.get("requests", 0)
    if answered > 0 and "queue_us" in after:
        means["queue_ms"] = (after["queue_us"] - before.get("queue_us", 0)) / answered / 1000
    for stage in STAGES:
        count = after.get(f"{stage}_count", 0) - before.get(f"{stage}_count", 0)
        if count > 0:
            means[f"{stage}_ms"] = (after[f"{stage}_sum"] - before.get(f"{stage}_sum", 0)) / count * 1000
    return {name: round(ms, 2) for name, ms in means.items()}


class ServerSampler(threading.Thread):
    """Every `interval_s`: the server's metrics (`metrics_url`), and its memory: the RSS of a local
    TorchServe's processes, or Prometheus' MemoryUsed."""

    def __init__(self, server: TorchServe | None, metrics_url: str | None, interval_s: float = 2.0):
        super().__init__(daemon=True)
        self.server, self.metrics_url, self.interval_s = server, metrics_url, interval_s
        self.memory: list[tuple[float, float]] = []  # (seconds into the run, MB)
        self.scrapes: list[tuple[float, dict[str, float]]] = []  # (unix time, totals)
        self.stopped = threading.Event()

    def run(self):
        start = time.monotonic()
        while True:
            totals = self.scrape()
            if totals:
                self.scrapes.append((time.time(), totals))
            megabytes = self.local_memory() if self.server is not None else totals.get("memory_mb")
            if megabytes is not None:
                self.memory.append((round(time.monotonic() - start, 1), megabytes))
            if self.stopped.wait(self.interval_s):
                self.scrapes.append((time.time(), self.scrape()))  # the run's last totals
                return

    def scrape(self) -> dict[str, float]:
        try:
            return scrape(self.metrics_url) if self.metrics_url else {}
        except requests.RequestException:
            return {}

    def local_memory(self) -> float:
        group, total = self.server.process.pid, 0
        for process in psutil.process_iter(["memory_info"]):
            try:
                if os.getpgid(process.pid) == group:
                    total += process.info["memory_info"].rss
            except (ProcessLookupError, psutil.Error):
                continue
        return total / 1e6

    def intervals(self) -> list[tuple[float, dict[str, float]]]:
        """(unix time at the interval's end, server_means over it), for each pair of scrapes."""
        scrapes = [(t, totals) for t, totals in self.scrapes if totals]
        return [(t, server_means(before, after)) for (_, before), (t, after) in zip(scrapes, scrapes[1:])]

    def run_means(self) -> dict[str, float]:
        scrapes = [totals for _, totals in self.scrapes if totals]
        return server_means(scrapes[0], scrapes[-1]) if len(scrapes) > 1 else {}


def memory_verdict(samples: list[tuple[float, float]], warmup_s: float = 0.0) -> dict:
    """`samples` are (seconds into the run, MB); those in the first `warmup_s` seconds are not judged."""
    samples = [(t, mb) for t, mb in samples if t >= warmup_s]
    if len(samples) < 8:
        return {"samples": len(samples), "verdict": "too few samples after the warm-up to judge"}
    quarter = len(samples) // 4
    first = statistics.median(mb for _, mb in samples[:quarter])
    last = statistics.median(mb for _, mb in samples[-quarter:])
    growth = (last - first) / first
    return {"samples": len(samples), "first_quarter_mb": round(first, 1), "last_quarter_mb": round(last, 1),
            "growth": round(growth, 4), "verdict": "GROWING" if growth > GROWTH_LIMIT else "stable"}


def write_report(out: Path, args, summary: dict, plots: list[str], memory: dict | None) -> None:
    server = summary.get("server_ms")
    lines = [f"# Load test {out.name}", "",
             f"Host {args.host or 'a local TorchServe (started for the run)'}, {args.users} users, spawn rate "
             f"{args.spawn_rate}/s, {args.duration}"
             + (f", soak at {args.rate} requests/s per user, the first {args.warmup_s:g} s not judged" if args.soak else ""),
             "", "| requests | failures | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) |", "|---|---|---|---|---|---|",
             f"| {summary['requests']} | {summary['failures']} | {summary['throughput_rps']} | {_num(summary['p50_ms'])} | "
             f"{_num(summary['p90_ms'])} | {_num(summary['p99_ms'])} |", "", "| request | requests | failures | p50 (ms) | p99 (ms) |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['requests']} | {r['failures']} | {_num(r['p50_ms'])} | {_num(r['p99_ms'])} |"
              for name, r in summary["per_request_type"].items()]
    if server:
        lines += ["", "The server's mean per request over the run (ms), from its metrics port:", "",
                  "| " + " | ".join(name[:-3] for name in server) + " |", "|---" * len(server) + "|",
                  "| " + " | ".join(f"{ms:g}" for ms in server.values()) + " |"]
    if memory:
        lines += ["", f"Server memory: {memory}"]
    lines += [""] + [f"![{name}]({name})" for name in plots] + ["", "Locust's own report: locust.html; raw numbers: locust_*.csv."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="the server (e.g. https://my-alb.example.com); default: start one locally")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--spawn-rate", type=float, default=2)
    parser.add_argument("--duration", default="60s", help="locust run time: 30s, 10m, 2h")
    parser.add_argument("--soak", action="store_true", help="fixed rate, and record server memory")
    parser.add_argument("--rate", type=float, default=1.0, help="with --soak: requests per second per user")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="with --soak: seconds of memory samples recorded but not judged (the server warming up)")
    parser.add_argument("--metrics-url", help="with --host: the server's Prometheus metrics (queue and stage times, "
                        "and memory with --soak); e.g. through an SSH or ECS Exec port forward to 8082")
    parser.add_argument("--out", type=Path, help="report folder (default reports/loadtest-<timestamp>)")
    args = parser.parse_args()

    out = args.out or ROOT / "reports" / f"loadtest-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if not args.host:
        archive = archive_path(MODEL_STORE, "detector", "1.0")
        if not archive.exists():
            build_mar("shapes", MODEL_STORE)
        server = TorchServe(MODEL_STORE, {"detector": archive.name}, Ports.free()).start()
        args.host, args.metrics_url = server.url(), f"{server.url('metrics')}/metrics"
    sampler = ServerSampler(server, args.metrics_url)
    try:
        sampler.start()
        status = run_locust(args.host, out, args.users, args.spawn_rate, args.duration, args.rate if args.soak else None)
    finally:
        sampler.stopped.set()
        sampler.join()
        if server:
            server.stop()
            server.cleanup()
    if not (out / "locust_stats.csv").exists():
        print(f"loadtest: locust wrote no statistics; see {out / 'locust.log'}", file=sys.stderr)
        return 1
    summary = summarize(out)
    if server_ms := sampler.run_means():
        summary["server_ms"] = server_ms
        (out / "server_metrics.json").write_text(json.dumps(sampler.intervals()))
    memory = memory_verdict(sampler.memory, args.warmup_s) if args.soak else None
    if memory:
        summary["memory"] = memory
        (out / "memory.csv").write_text("seconds,megabytes\n" + "".join(f"{t},{mb:.1f}\n" for t, mb in sampler.memory))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plots = plot(out, sampler.memory if args.soak else [], args.warmup_s, sampler.intervals())
    write_report(out, args, summary, plots, memory)
    print(f"loadtest: {summary['requests']} requests, {summary['failures']} failures, {summary['throughput_rps']} req/s, "
          f"p50 {_num(summary['p50_ms'])} ms, p90 {_num(summary['p90_ms'])} ms, p99 {_num(summary['p99_ms'])} ms -> {out}")
    if memory:
        print(f"loadtest: server memory {memory}")
    # Non-zero when any request failed (locust's own verdict) or a soak's memory grew.
    return status or int(bool(memory and memory["verdict"] == "GROWING"))
