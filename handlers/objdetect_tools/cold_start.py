"""`make cold-start`: from a server's start to its first answered prediction, per CPU runtime.

Per model, one archive as `make mar` builds it (the repository's model-config.yaml, the OpenVINO
parts converted ahead). Each round starts one TorchServe on loopback per runtime in turn
(OBJDETECT_RUNTIME), sends one image until it is answered, and reads the worker's own log line for
what loading the model and its warm-up took. The image's goal (first prediction within 10 s of
container start, docs/image.md) is this plus the container's own start. Then it times compiling the
archive's OpenVINO parts with and without OpenVINO's model cache (CACHE_DIR): whether a cache
would spare a restarted worker anything (docs/image.md).

    python scripts/cold_start.py [--models shapes fasterrcnn_mobilenet_v3_large_320_fpn] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests

from objdetect import openvino_runtime, registry, synthetic
from objdetect.settings import ENV_PREFIX, RUNTIMES
from objdetect_serving.archive import build_mar
from objdetect_serving.torchserve import Ports, ServerError, TorchServe

from .bench.models import default_cpu_runtime, write_weights

WORKER_LINE = re.compile(r"runtime (?P<runtime>.+?), \d+ threads?, .*?loaded in (?P<load>\d+) ms, "
                         r"warmed up in (?P<warm_up>\d+) ms")


def first_prediction(url: str, body: bytes, started: float, limit_s: float = 120,
                     alive=lambda: True) -> tuple[float | None, requests.Response | None]:
    """Posts `body` to `url` until it is answered 200: the seconds since `started` (time.monotonic)
    and the answer; None for the seconds after `limit_s`, or once `alive()` says the server is gone."""
    answer = None
    while time.monotonic() - started < limit_s and alive():
        try:
            answer = requests.post(url, data=body, timeout=30)
            if answer.status_code == 200:
                return time.monotonic() - started, answer
        except requests.RequestException:
            pass
        time.sleep(0.05)
    return None, answer


@dataclass
class Start:
    runtime: str  # what the worker ran, in its own words
    first_prediction_s: float
    load_ms: float  # the worker's: reading the archive's model (and compiling its OpenVINO parts)
    warm_up_ms: float  # the worker's: one forward pass before it takes requests


def cold_start(store: Path, archive: str, runtime: str, image: bytes) -> Start:
    server = TorchServe(store, {"detector": archive}, Ports.free(), env={f"{ENV_PREFIX}RUNTIME": runtime})
    started = time.monotonic()
    try:
        server.launch()
        seconds, _ = first_prediction(f"{server.url()}/predictions/detector", image, started,
                                      alive=lambda: server.process.poll() is None)
        if seconds is None:
            raise ServerError(f"no answered prediction within 120 s:\n{server.log_tail()}")
        line = WORKER_LINE.search((server.log_dir / "model_log.log").read_text(errors="replace"))
        if line is None:
            raise ServerError(f"the worker logged no load and warm-up times:\n{server.log_tail()}")
        return Start(line["runtime"], seconds, float(line["load"]), float(line["warm_up"]))
    finally:
        server.stop()
        server.cleanup()


def compile_ms(ir: Path, precision: str, threads: int, cache: Path | None) -> float:
    """Compiling the three parts as a worker does, with OpenVINO's model cache in `cache` or none."""
    import openvino as ov

    models, _ = openvino_runtime.load(ir)
    core = ov.Core()
    if cache:
        core.set_property({"CACHE_DIR": str(cache)})
    clock = time.perf_counter()
    for model in models.values():
        core.compile_model(model, "CPU", openvino_runtime.cpu_config(precision, threads))
    return (time.perf_counter() - clock) * 1000


def compile_times(archive: Path, workdir: Path, repeats: int = 3) -> str | None:
    """The compile table's row for `archive`, or None where workers do not run OpenVINO here."""
    _, precision, _ = default_cpu_runtime()
    if precision is None:
        return None
    ir = workdir / "ir"
    with zipfile.ZipFile(archive) as packed:
        packed.extractall(ir, [n for n in packed.namelist() if n.startswith(f"{openvino_runtime.IR_FOLDER}/")])
    ir, threads = ir / openvino_runtime.IR_FOLDER, len(os.sched_getaffinity(0))
    plain = statistics.median(compile_ms(ir, precision, threads, None) for _ in range(repeats))
    cache = workdir / "cache"
    writing = compile_ms(ir, precision, threads, cache)
    reading = statistics.median(compile_ms(ir, precision, threads, cache) for _ in range(repeats))
    return f"{precision} | {plain:.0f} | {writing:.0f} | {reading:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=registry.ARCHITECTURES,
                        default=[registry.EMBEDDED, "fasterrcnn_mobilenet_v3_large_320_fpn"])
    parser.add_argument("--rounds", type=int, default=5, help="server starts per model and runtime")
    args = parser.parse_args(argv)
    image = synthetic.encode(synthetic.generate(synthetic.SAMPLE_SEED).image)
    starts: dict[tuple[str, str], list[Start]] = {}
    compiles: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="objdetect-cold-start-") as workdir:
        for model in args.models:
            store = Path(workdir) / model
            store.mkdir()
            weights, note = write_weights(model, store)
            archive = build_mar(model, store, weights=weights)
            print(f"{model}: {archive.name} ({note})", flush=True)
            for round_ in range(args.rounds):
                # Runtimes take turns, the order rotated each round, so drift touches both alike.
                order = RUNTIMES[round_ % len(RUNTIMES):] + RUNTIMES[:round_ % len(RUNTIMES)]
                for runtime in order:
                    start = cold_start(store, archive.name, runtime, image)
                    starts.setdefault((model, runtime), []).append(start)
                    print(f"  round {round_ + 1} {runtime}: first prediction {start.first_prediction_s:.2f} s "
                          f"(worker: loaded in {start.load_ms:.0f} ms, warmed up in {start.warm_up_ms:.0f} ms)",
                          flush=True)
            compiles[model] = compile_times(archive, store)

    print(f"\nMedians of {args.rounds} server starts each, {len(os.sched_getaffinity(0))} cores:\n")
    print("| model | runtime setting | the worker ran | start to first prediction (s) | worker load (ms) | "
          "worker warm-up (ms) |\n|---|---|---|---:|---:|---:|")
    for (model, runtime), measured in starts.items():
        print(f"| {model} | {runtime} | {measured[0].runtime} "
              f"| {statistics.median(s.first_prediction_s for s in measured):.2f} "
              f"| {statistics.median(s.load_ms for s in measured):.0f} "
              f"| {statistics.median(s.warm_up_ms for s in measured):.0f} |")
    rows = {model: row for model, row in compiles.items() if row}
    if rows:
        print("\nCompiling the archive's OpenVINO parts (ms; medians of 3):\n")
        print("| model | precision | no cache | cache, first (writes it) | cache, again |\n|---|---|---:|---:|---:|")
        for model, row in rows.items():
            print(f"| {model} | {row} |")
    return 0
