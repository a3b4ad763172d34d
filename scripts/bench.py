"""`make bench`: our handler beside TorchServe's stock object_detector and the bare model, in one run.

    python scripts/bench.py                              # the full run (about 27 minutes on 2 cores)
    python scripts/bench.py --quick                      # a smoke run of a minute or two (tests/test_bench.py)
    python scripts/bench.py --variants ours_exact        # also our handler with its optimizations off (exact path)
    python scripts/bench.py --markdown-only              # rewrite docs/benchmarks.md from reports/bench.json

Three ways to answer the same images with the same model and weights on the same machine:
- `direct`: the floor. The original pipeline in a loop in this process, no server: PIL decode ->
  pil_to_tensor -> float / 255 -> model([tensor]) under torch.inference_mode. At concurrency N,
  N threads share the one model (--direct-mode serial: they take turns, a queue in front of one loop).
- `stock`: TorchServe with its built-in object_detector handler, as a user would package it
  (--model-file with one no-argument class, --serialized-file, index_to_name.json).
- `ours`: our handler, the archive scripts/build_mar.py builds.
Each server variant runs at its best configuration per cell: every candidate of --configs
(workers x batchSize) is measured --repeats times and the one with the highest median throughput
wins, answering without errors preferred. At concurrency 1 only 1 worker x batch 1 is a candidate:
a lone request never fills a batch (batchSize > 1 only adds maxBatchDelay) and a second worker
only halves the threads the one busy worker gets. Each worker gets cores / workers torch threads.
Within a configuration the stock and our servers are up at once and take turns, run by run (and
`direct` with them, in the first configuration that measures a cell), so that the drift of a
shared machine touches every variant alike and the ratios compare runs taken moments apart.

A cell (model, workload, concurrency) is measured as a closed loop: N clients each send an image,
wait for its answer and send the next, for --seconds and at least --min-requests per client,
after a warm-up that is not counted. An answer counts only when it is 200 and has the variant's
format; anything else is an error. Throughput is answered images per second of wall time;
p50/p99 are over the answered requests. Each cell is repeated --repeats times and the median of
the runs is reported (errors and requests: summed over the runs).

Workloads: `small` 640x480 JPEGs, `phone` 4032x3024 JPEGs with sensor-like noise (~3 MB at
quality 90, as phones produce), `mixed` 640x480, 1280x960 and 4032x3024 JPEGs and an 800x600 PNG,
client k sending image (k + i) mod 4 as its i-th request, so that concurrent requests (a batch
window) always differ in size: the stock handler stacks a batch into one tensor and fails it.
Models: the embedded `shapes` model, and torchvision architectures with seeded random weights
(no COCO weights can be downloaded here; timing does not depend on them), one class logit raised
so that they detect something, as tests/test_model_quality.py does.

Writes --out (reports/bench.json) and --docs (docs/benchmarks.md, see render_markdown).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import psutil
import requests
import torch
import yaml
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from build_mar import EMBEDDED_WEIGHTS, MODEL_CONFIG, build_mar
from server import ROOT, Ports, ServerError, TorchServe

from objdetect import registry, shapes_net, synthetic
from objdetect.settings import ENV_PREFIX, SPEED_SWITCHES

WORKLOADS = ("small", "phone", "mixed")
DEFAULT_MODELS = ("fasterrcnn_mobilenet_v3_large_320_fpn", registry.EMBEDDED)
GOAL_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
BASE_VARIANTS = ("direct", "stock", "ours")
# Our handler with some of its optimizations switched off (objdetect settings, by environment):
# measured at the configuration `ours` chose for the cell, so only the switch differs.
EXTRA_VARIANTS: dict[str, dict[str, str]] = {
    "ours_exact": {f"{ENV_PREFIX}{name.upper()}": "false" for name in SPEED_SWITCHES},
    "ours_no_draft": {"OBJDETECT_JPEG_DRAFT": "false"},
    "ours_no_pre_resize": {"OBJDETECT_PRE_RESIZE": "false"},
    "ours_no_channels_last": {"OBJDETECT_CHANNELS_LAST": "false"},
    "ours_no_fold_batch_norms": {"OBJDETECT_FOLD_BATCH_NORMS": "false"},
}
# Seeds for workload images: far from those training (0 up) and the tests (1e9, 2e9 up) draw.
IMAGE_SEED = 3_000_000_000
RANDOM_WEIGHTS_SEED = 0
# Random weights score every proposal alike, so a raised "person" logit decides all or nothing:
# +4 (the tests, which ask for threshold 0) scores 0.37, under the stock handler's fixed 0.5;
# +5 scores 0.61, so every answer carries torchvision's cap of 100 detections (the worst case
# for response building, for stock and ours alike) and the stock format check sees real boxes.
BOOSTED_CLASS, BOOST = 1, 5.0
REQUEST_TIMEOUT_S = 120

# 5 rounds: runs of one cell spread +-10% on this shared 2-core machine, and 3 rounds left
# differences of a few percent (small images) to chance.
FULL = dict(repeats=5, seconds=3.0, min_requests=2, warmup=5, configs=["1x1", "1x4", "2x1", "2x4"],
            images={"small": 8, "phone": 4, "mixed": 4})
QUICK = dict(repeats=1, seconds=0.0, min_requests=2, warmup=1, configs=["1x1", "1x4"],
             images={"small": 2, "phone": 1, "mixed": 4})


# ---------------------------------------------------------------- workloads

@dataclass(frozen=True)
class Payload:
    name: str
    data: bytes
    content_type: str
    size: tuple[int, int]


def photo(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    """Shapes on a busy background with sensor-like noise: compresses like a real photo does
    (a 4032x3024 one is ~3 MB at quality 90). The same as scripts/locustfile.py's photo()."""
    image = synthetic.generate(seed).image.resize((width, height), Image.BILINEAR)
    noise = np.random.default_rng(seed).integers(-12, 13, (height, width, 3))
    noisy = (np.asarray(image, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


MIXED_SIZES = ((640, 480, "JPEG"), (1280, 960, "JPEG"), (4032, 3024, "JPEG"), (800, 600, "PNG"))


def workload_images(workload: str, count: int) -> list[Payload]:
    """`count` distinct images of the workload; for `mixed`, consecutive images differ in size."""
    payloads = []
    for i in range(count):
        seed = IMAGE_SEED + 1000 * WORKLOADS.index(workload) + i
        width, height, fmt = {"small": (640, 480, "JPEG"), "phone": (4032, 3024, "JPEG"),
                              "mixed": MIXED_SIZES[i % len(MIXED_SIZES)]}[workload]
        payloads.append(Payload(f"{fmt.lower()} {width}x{height}", photo(width, height, seed, fmt),
                                f"image/{fmt.lower()}", (width, height)))
    return payloads


# ---------------------------------------------------------------- models

@dataclass
class BenchModel:
    name: str
    labels: list[str]
    weights: Path  # a float32 state_dict that all three variants load
    weights_note: str
    module: torch.nn.Module  # for `direct`


def prepare_model(name: str, workdir: Path) -> BenchModel:
    arch = registry.architecture(name)
    labels = arch.labels()
    weights = workdir / f"{name}-weights.pth"
    if arch.coco_weights is None:  # the embedded model: the committed weights, as float32
        state_dict = registry.load_state_dict(EMBEDDED_WEIGHTS)
        note = f"embedded weights ({EMBEDDED_WEIGHTS.relative_to(ROOT)})"
    else:
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = arch.build(num_classes=len(labels)).eval()
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[BOOSTED_CLASS] += BOOST
        state_dict = model.state_dict()
        note = (f"random weights (torch.manual_seed({RANDOM_WEIGHTS_SEED}); class {labels[BOOSTED_CLASS]!r} "
                f"logit +{BOOST:g}): no COCO weights can be downloaded here, and timing does not depend on them")
    torch.save(state_dict, weights)
    module = registry.build_model(name, labels, registry.load_state_dict(weights))
    return BenchModel(name, labels, weights, note, module)


# TorchServe's object_detector handler builds its model as `TheOnlyClass()` from --model-file,
# then load_state_dict(torch.load(--serialized-file)). These are the files a user would write.
STOCK_TORCHVISION_MODEL = '''"""{arch}, built with no arguments as TorchServe's object_detector needs."""
from torch import nn
from torchvision.models import detection


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = detection.{arch}(weights=None, weights_backbone=None, num_classes={num_classes})

    def forward(self, images, targets=None):
        return self.model(images, targets)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        # the plain torchvision state_dict (the same file the other variants load)
        return self.model.load_state_dict(state_dict, strict, assign)
'''
STOCK_SHAPES_MODEL = '''"""The embedded shapes detector, built with no arguments as TorchServe's object_detector needs."""
from torch import nn

from shapes_net import build_shapes_detector  # packed beside this file (--extra-files)


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = build_shapes_detector(num_classes={num_classes})

    def forward(self, images, targets=None):
        return self.model(images, targets)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return self.model.load_state_dict(state_dict, strict, assign)
'''


# ---------------------------------------------------------------- server configurations

@dataclass(frozen=True)
class ServerConfig:
    workers: int
    batch_size: int
    max_batch_delay_ms: int

    @classmethod
    def parse(cls, text: str, max_batch_delay_ms: int) -> "ServerConfig":
        workers, batch = (int(v) for v in text.lower().split("x"))
        if workers < 1 or batch < 1:
            raise ValueError(f"config {text!r}: workers and batch size must be positive")
        return cls(workers, batch, max_batch_delay_ms)

    @property
    def label(self) -> str:
        return f"w{self.workers}b{self.batch_size}"

    def threads(self, cores: int) -> int:
        return max(1, cores // self.workers)

    def describe(self, cores: int) -> dict:
        return {"workers": self.workers, "batch_size": self.batch_size,
                "max_batch_delay_ms": self.max_batch_delay_ms, "threads_per_worker": self.threads(cores)}

    def yaml_fields(self) -> dict:
        return {"minWorkers": self.workers, "maxWorkers": self.workers, "batchSize": self.batch_size,
                "maxBatchDelay": self.max_batch_delay_ms, "responseTimeout": REQUEST_TIMEOUT_S}


def candidates(configs: list[ServerConfig], concurrency: int) -> list[ServerConfig]:
    """At concurrency 1, one worker without batching (see the module docstring)."""
    if concurrency > 1:
        return configs
    lone = [c for c in configs if c.workers == 1 and c.batch_size == 1]
    return lone or configs


def build_ours(model: BenchModel, config: ServerConfig, store: Path) -> str:
    """Our archive, with the repository's model-config.yaml (handler settings included) at `config`."""
    settings = yaml.safe_load(MODEL_CONFIG.read_text())
    settings.update(config.yaml_fields())
    path = store / f"ours-{config.label}-config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    name = f"ours_{config.label}"
    build_mar(model.name, store, name, "1.0", weights=model.weights, config=path)
    return name


def build_stock(model: BenchModel, config: ServerConfig, store: Path) -> str:
    """The stock handler's archive: torch-model-archiver --handler object_detector."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    name = f"stock_{config.label}"
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        model_file = staging / "stock_model.py"
        extra = [staging / "index_to_name.json"]
        if model.name == registry.EMBEDDED:
            model_file.write_text(STOCK_SHAPES_MODEL.format(num_classes=len(model.labels)))
            extra.append(staging / "shapes_net.py")
            shutil.copy(shapes_net.__file__, extra[-1])
        else:
            model_file.write_text(STOCK_TORCHVISION_MODEL.format(arch=model.name, num_classes=len(model.labels)))
        extra[0].write_text(json.dumps({str(i): label for i, label in enumerate(model.labels)}))
        config_file = staging / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(config.yaml_fields(), sort_keys=False))
        generate_model_archive(ModelArchiverConfig(
            model_name=name, version="1.0", handler="object_detector", model_file=str(model_file),
            serialized_file=str(model.weights), extra_files=",".join(str(p) for p in extra),
            config_file=str(config_file), export_path=str(store), force=True,
        ))
    return name


# ---------------------------------------------------------------- answers

def ours_answer_ok(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("detections"), list)


def stock_answer_ok(body: Any) -> bool:
    """The object_detector's format: [{"<label>": [x1, y1, x2, y2], "score": s}, ...]."""
    if not isinstance(body, list):
        return False
    for detection in body:
        if not isinstance(detection, dict) or len(detection) != 2 or not isinstance(detection.get("score"), float):
            return False
        (box,) = (v for k, v in detection.items() if k != "score")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            return False
    return True


# ---------------------------------------------------------------- load generation

class Sender:
    """Sends one payload and says whether it was answered well; keeps error statuses and one answer."""

    def __init__(self):
        self.statuses: Counter = Counter()
        self.example: Any = None
        self.timings: list[dict] = []  # our handler's own per-stage timings_ms, one per answer
        self._lock = threading.Lock()

    def __call__(self, payload: Payload) -> bool:
        raise NotImplementedError

    def _record(self, status: str | None = None, answer: Any = None) -> None:
        with self._lock:
            if status is not None:
                self.statuses[status] += 1
            elif self.example is None or (not self.example and answer):
                self.example = answer  # prefer an answer that found something


class HttpSender(Sender):
    def __init__(self, url: str, check: Callable[[Any], bool]):
        super().__init__()
        self.url, self.check = url, check
        self._local = threading.local()

    def __call__(self, payload: Payload) -> bool:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            response = session.post(self.url, data=payload.data, headers={"Content-Type": payload.content_type},
                                    timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as error:
            self._record(type(error).__name__)
            return False
        if response.status_code != 200:
            self._record(str(response.status_code))
            return False
        try:
            body = response.json()
        except ValueError:
            self._record("not JSON")
            return False
        if not self.check(body):
            self._record("wrong format")
            return False
        self._record(answer=body if isinstance(body, list) else body.get("detections"))
        if isinstance(body, dict) and isinstance(body.get("timings_ms"), dict):
            with self._lock:
                self.timings.append(body["timings_ms"])
        return True


class DirectSender(Sender):
    """The original pipeline: PIL decode -> tensor -> float -> model, no server."""

    def __init__(self, model: torch.nn.Module, serial: bool):
        super().__init__()
        self.model = model
        self._turn = threading.Lock() if serial else contextlib.nullcontext()

    def __call__(self, payload: Payload) -> bool:
        try:
            with self._turn, torch.inference_mode():
                image = Image.open(io.BytesIO(payload.data)).convert("RGB")
                tensor = pil_to_tensor(image).float() / 255
                output = self.model([tensor])[0]
        except Exception as error:  # a failure counts as an error, like a server's 5xx
            self._record(type(error).__name__)
            return False
        self._record(answer={"detections": len(output["scores"])})
        return True


@dataclass
class Run:
    latencies_s: list[float]
    errors: int
    wall_s: float

    def summary(self) -> dict:
        answered = len(self.latencies_s)
        ms = np.array(self.latencies_s) * 1000
        return {
            "throughput": answered / self.wall_s if self.wall_s > 0 else 0.0,
            "p50_ms": float(np.percentile(ms, 50)) if answered else None,
            "p99_ms": float(np.percentile(ms, 99)) if answered else None,
            "errors": self.errors,
            "requests": answered + self.errors,
            "wall_s": round(self.wall_s, 3),
        }


def closed_loop(send: Callable[[Payload], bool], payloads: list[Payload], concurrency: int,
                seconds: float, min_requests: int) -> Run:
    """`concurrency` clients, each sending its next image as soon as the last is answered, until
    `seconds` have passed and each has sent at least `min_requests`. Client k's i-th image is
    payloads[(k + i) % len]: at any moment the clients send different images."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_line = threading.Barrier(concurrency + 1)
    clock: dict[str, float] = {}

    def client(k: int) -> None:
        start_line.wait()
        i = 0
        while i < min_requests or time.perf_counter() < clock["deadline"]:
            payload = payloads[(k + i) % len(payloads)]
            began = time.perf_counter()
            if send(payload):
                latencies[k].append(time.perf_counter() - began)
            else:
                errors[k] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    clock["start"] = time.perf_counter()
    clock["deadline"] = clock["start"] + seconds
    start_line.wait()
    for thread in threads:
        thread.join()
    return Run([v for per_client in latencies for v in per_client], sum(errors), time.perf_counter() - clock["start"])


def median_of_runs(runs: list[dict]) -> dict:
    """Median of the runs for rates and latencies; errors and requests summed over them."""
    def median(key):
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None
    return {"throughput": median("throughput"), "p50_ms": median("p50_ms"), "p99_ms": median("p99_ms"),
            "errors": sum(r["errors"] for r in runs), "requests": sum(r["requests"] for r in runs),
            "runs": runs}


def median_timings(timings: list[dict]) -> dict:
    """Median per stage of the handler's own timings_ms: where the served time goes."""
    keys = dict.fromkeys(k for t in timings for k, v in t.items() if isinstance(v, (int, float)))
    return {k: round(statistics.median(t[k] for t in timings if isinstance(t.get(k), (int, float))), 2) for k in keys}


def best(measured: dict[str, dict]) -> str:
    """The configuration that answered the most images per second; one without errors first."""
    return max(measured, key=lambda label: (measured[label]["errors"] == 0, measured[label]["throughput"] or 0.0,
                                            -(measured[label]["p50_ms"] or math.inf)))


# ---------------------------------------------------------------- the benchmark

@dataclass
class Options:
    models: list[str]
    workloads: list[str]
    concurrency: list[int]
    repeats: int
    seconds: float
    min_requests: int
    warmup: int
    configs: list[ServerConfig]
    variants: list[str]  # extra variants, from EXTRA_VARIANTS
    direct_mode: str
    images: dict[str, int]
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))


class Bench:
    def __init__(self, options: Options, log: Callable[[str], None] = print):
        self.o = options
        self.began = time.monotonic()
        self._log = log
        self.payloads = {w: workload_images(w, options.images[w]) for w in options.workloads}
        self.failures: list[str] = []
        self.weights: dict[str, str] = {}  # model -> where its weights came from

    def log(self, message: str) -> None:
        self._log(f"[{time.monotonic() - self.began:6.0f}s] {message}")

    def cells(self) -> Iterable[tuple[str, int]]:
        return ((w, c) for w in self.o.workloads for c in self.o.concurrency)

    def measure(self, makers: dict[str, Callable[[], Sender]], what: dict[str, str],
                cells: list[tuple[str, int]], warmup_clients: int) -> dict[str, dict]:
        """Warm-up, then --repeats rounds over `cells`, each cell run by every variant in turn (in an
        order rotated each round), so the drift of a shared machine touches all of them alike.
        Returns {variant: {(workload, c): median summary}}, each with the error statuses of its runs
        and a sample of what was answered."""
        for make in makers.values():
            warmup = make()
            for workload in dict.fromkeys(w for w, _ in cells):
                closed_loop(warmup, self.payloads[workload], warmup_clients, 0, self.o.warmup)
        senders = {(variant, cell): make() for variant, make in makers.items() for cell in cells}
        runs: dict[tuple[str, tuple[str, int]], list[dict]] = {key: [] for key in senders}
        variants = list(makers)
        for repeat in range(self.o.repeats):
            # Each round starts with another variant: none always runs right after the same neighbour
            # (whose server may still be busy a moment after its run ends, JIT or GC in its JVM).
            order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
            for workload, c in cells:
                for variant in order:
                    send = senders[(variant, (workload, c))]
                    run = closed_loop(send, self.payloads[workload], c, self.o.seconds, self.o.min_requests).summary()
                    runs[(variant, (workload, c))].append(run)
                    self.log(f"{what[variant]} {workload} c{c} run {repeat + 1}/{self.o.repeats}: {_fmt(run)}")
        out: dict[str, dict] = {variant: {} for variant in makers}
        for (variant, cell), cell_runs in runs.items():
            send = senders[(variant, cell)]
            out[variant][cell] = {**median_of_runs(cell_runs), "error_statuses": dict(send.statuses),
                                  "example": _example(send.example)}
            if send.timings:
                out[variant][cell]["server_timings_ms"] = median_timings(send.timings)
        return out

    def serve_and_measure(self, model: BenchModel, config: ServerConfig, store: Path, archives: dict,
                          cells: list[tuple[str, int]], servers: dict[str, tuple[str, dict[str, str]]],
                          local: dict[str, Callable[[], Sender]]) -> dict[str, dict | str]:
        """One TorchServe per server variant ({variant: (kind, extra environment)}), all with their
        archive at `config` and up at once, measured in turn with the `local` variants: per variant,
        its measurements, or why its server failed to start."""
        threads = str(config.threads(self.o.cores))
        makers, what, failed = dict(local), {v: f"{model.name} {v}" for v in local}, {}
        with contextlib.ExitStack() as running:
            for variant, (kind, extra_env) in servers.items():
                key = (kind, config)
                if key not in archives:
                    archives[key] = (build_stock if kind == "stock" else build_ours)(model, config, store)
                name = archives[key]
                env = {"OMP_NUM_THREADS": threads, **({"OBJDETECT_TORCH_THREADS": threads} if kind == "ours" else {}),
                       **extra_env}
                server = TorchServe(store, {name: f"{name}-v1.0.mar" if kind == "ours" else f"{name}.mar"},
                                    Ports.free(), env=env)
                running.callback(server.cleanup)
                running.callback(server.stop)
                what[variant] = f"{model.name} {variant} {config.label}"
                try:
                    started = time.monotonic()
                    server.start()
                    self.log(f"{what[variant]}: TorchServe up in {time.monotonic() - started:.0f} s")
                except ServerError as error:
                    self.failures.append(f"{what[variant]}: {error}")
                    self.log(f"{what[variant]}: FAILED to start: {str(error).splitlines()[0]}")
                    failed[variant] = str(error).splitlines()[0]
                    continue
                check = stock_answer_ok if kind == "stock" else ours_answer_ok
                makers[variant] = partial(HttpSender, f"{server.url()}/predictions/{name}", check)
            measured = self.measure(makers, what, cells, max(max(c for _, c in cells), config.workers))
        return {**measured, **failed}

    def run_model(self, model: BenchModel, store: Path) -> dict:
        o = self.o
        results: dict[str, dict] = {w: {f"c{c}": {"config": {}} for c in o.concurrency} for w in o.workloads}

        def cell(workload: str, c: int) -> dict:
            return results[workload][f"c{c}"]

        # stock and ours: every candidate configuration, side by side; the best per cell. direct (the
        # model in this process) takes its turns with them wherever a cell is first measured.
        direct = partial(DirectSender, model.module, o.direct_mode == "serial")
        archives: dict = {}
        per_config: dict[ServerConfig, dict[str, dict | str]] = {}
        unmeasured = set(self.cells())
        for config in o.configs:
            mine = [(w, c) for w, c in self.cells() if config in candidates(o.configs, c)]
            if not mine:
                continue
            local = {"direct": direct} if unmeasured & set(mine) else {}
            per_config[config] = measured = self.serve_and_measure(
                model, config, store, archives, mine, {"stock": ("stock", {}), "ours": ("ours", {})}, local)
            for workload, c in (unmeasured & set(mine)) if local else ():
                cell(workload, c)["direct"] = measured["direct"][(workload, c)]
                cell(workload, c)["config"]["direct"] = {"mode": o.direct_mode, "torch_threads": torch.get_num_threads()}
            unmeasured -= set(mine)
        for kind in ("stock", "ours"):
            for workload, c in self.cells():
                tried = {cfg.label: m[kind][(workload, c)] for cfg, m in per_config.items()
                         if isinstance(m.get(kind), dict) and (workload, c) in m[kind]}
                failed = {cfg.label: m[kind] for cfg, m in per_config.items() if isinstance(m.get(kind), str)}
                entry = {"candidates": {label: {k: v for k, v in s.items() if k not in ("runs", "example")}
                                        for label, s in tried.items()}, **({"failed": failed} if failed else {})}
                if tried:
                    chosen = best(tried)
                    config = next(cfg for cfg in o.configs if cfg.label == chosen)
                    cell(workload, c)[kind] = tried[chosen]
                    entry = {"chosen": chosen, **config.describe(o.cores), **entry}
                cell(workload, c)["config"][kind] = entry

        # extra variants: our handler with switches off, at the configuration `ours` chose per cell
        if o.variants:
            by_config: dict[ServerConfig, list[tuple[str, int]]] = {}
            for workload, c in self.cells():
                chosen = cell(workload, c)["config"]["ours"].get("chosen")
                if chosen:
                    by_config.setdefault(next(cfg for cfg in o.configs if cfg.label == chosen), []).append((workload, c))
            for config, cells in by_config.items():
                measured = self.serve_and_measure(model, config, store, archives, cells,
                                                  {v: ("ours", EXTRA_VARIANTS[v]) for v in o.variants}, {})
                for variant in o.variants:
                    for workload, c in cells:
                        entry = {"chosen": config.label, **config.describe(o.cores), "env": EXTRA_VARIANTS[variant]}
                        if isinstance(measured[variant], dict):
                            cell(workload, c)[variant] = measured[variant][(workload, c)]
                        else:
                            entry["failed"] = measured[variant]
                        cell(workload, c)["config"][variant] = entry

        for workload, c in self.cells():
            cell(workload, c)["ratios"] = ratios(cell(workload, c), o.variants)
        return results

    def run(self) -> dict:
        results = {}
        with tempfile.TemporaryDirectory(prefix="objdetect-bench-") as workdir:
            for name in self.o.models:
                store = Path(workdir) / name
                store.mkdir()
                self.log(f"{name}: preparing weights and archives")
                model = prepare_model(name, store)
                self.weights[name] = model.weights_note
                results[name] = self.run_model(model, store)
        return results


def ratios(cell: dict, extra_variants: Iterable[str] = ()) -> dict:
    """ours/stock and ours/direct for throughput (higher is better) and p50/p99 (lower is better)."""
    def ratio(variant: str, metric: str) -> float | None:
        ours, other = cell.get("ours") or {}, cell.get(variant) or {}
        if ours.get(metric) is None or not other.get(metric):
            return None  # e.g. stock answered nothing
        return round(ours[metric] / other[metric], 3)

    out = {f"{metric}_ours_vs_{variant}": ratio(variant, metric)
           for variant in ("stock", "direct") for metric in ("throughput", "p50_ms", "p99_ms")}
    for variant in extra_variants:
        out.update({f"{metric}_ours_vs_{variant}": ratio(variant, metric) for metric in ("throughput", "p50_ms")})
    return out


# ---------------------------------------------------------------- goals (issue 6)

def evaluate_goals(results: dict) -> list[dict]:
    """Issue 6's goals, each met (True), not met (False) or not measured (None) in this run."""
    goals = []
    phone = results.get(GOAL_MODEL, {}).get("phone", {}).get("c4")
    goal = {"goal": "phone, c4, mobilenet 320: ours/stock throughput >= 3.0 with p99 no worse than stock",
            "model": GOAL_MODEL, "met": None, "detail": "not measured in this run"}
    if phone and phone.get("ours") and phone.get("stock"):
        r = phone["ratios"]
        throughput, p99 = r["throughput_ours_vs_stock"], r["p99_ms_ours_vs_stock"]
        if phone["stock"]["throughput"] == 0:  # stock answered nothing: any answer beats it
            goal["met"] = phone["ours"]["throughput"] > 0
            goal["detail"] = "stock answered no request"
        else:
            goal["met"] = throughput is not None and throughput >= 3.0 and p99 is not None and p99 <= 1.0
            goal["detail"] = f"throughput x{_num(throughput)}, p99 x{_num(p99)} of stock"
    goals.append(goal)
    for model, workloads in results.items():
        small = workloads.get("small", {}).get("c1")
        goal = {"goal": "small, c1: ours p50 <= 1.10 x direct p50", "model": model, "met": None,
                "detail": "not measured in this run"}
        if small and small.get("ours") and small.get("direct"):
            r = small["ratios"]["p50_ms_ours_vs_direct"]
            goal["met"] = r is not None and r <= 1.10
            goal["detail"] = f"p50 x{_num(r)} of direct"
        goals.append(goal)
    for model, workloads in results.items():
        slower, measured = [], 0
        for workload, cells in workloads.items():
            if not isinstance(cells, dict):
                continue
            for c, cell in cells.items():
                if cell.get("ours") and cell.get("stock"):
                    measured += 1
                    if (cell["ours"]["throughput"] or 0) < (cell["stock"]["throughput"] or 0):
                        slower.append(f"{workload} {c} (x{_num(cell['ratios']['throughput_ours_vs_stock'])})")
        goals.append({"goal": "no workload where ours is slower than stock (throughput)", "model": model,
                      "met": (not slower) if measured else None,
                      "detail": ("slower in " + ", ".join(slower)) if slower else
                                (f"faster or equal in all {measured} cells" if measured else "not measured")})
    return goals


# ---------------------------------------------------------------- machine

def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def command(*args: str) -> str | None:
        try:
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else ""  # "": ran and printed nothing (a clean `git status`)

    commit = command("git", "rev-parse", "--short", "HEAD")
    dirty = command("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchvision": version("torchvision"),
        "torchserve": version("torchserve"),
        "pillow": version("pillow"),
        "java": command("java", "-version"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": (commit + ("-dirty" if dirty else "")) if commit else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- docs/benchmarks.md

def render_markdown(report: dict) -> str:
    """docs/benchmarks.md from a bench.json report (so it can be regenerated without rerunning)."""
    machine, settings, results = report["machine"], report.get("settings", {}), report["results"]
    goals = report.get("goals") or evaluate_goals(results)
    mark = {True: "met", False: "**not met**", None: "not measured"}
    lines = [
        "# Benchmarks: ours vs TorchServe's stock handler vs the bare model",
        "",
        "Generated by `make bench` (`scripts/bench.py`); the numbers are in `reports/bench.json`. Regenerate "
        "this page from that file with `python scripts/bench.py --markdown-only`.",
        "",
        f"Command: `{settings.get('command', 'python scripts/bench.py')}`; "
        f"{settings.get('repeats', '?')} run(s) per cell (median reported), each at least "
        f"{settings.get('seconds', '?')} s and {settings.get('min_requests', '?')} requests per client; "
        f"run took {_duration(report.get('runtime_s'))}.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu')}, {machine.get('cores')} cores usable "
        f"({machine.get('physical_cores')} physical), {machine.get('memory_gb')} GB memory; GPU: {machine.get('gpu') or 'none'}",
        f"- {machine.get('os')}; Python {machine.get('python')}; torch {machine.get('torch')}, torchvision "
        f"{machine.get('torchvision')}, TorchServe {machine.get('torchserve')}, Pillow {machine.get('pillow')}; "
        f"{machine.get('java') or 'java: ?'}",
        f"- Date {machine.get('date')}, commit {machine.get('git_commit')}, load average at start "
        f"{machine.get('load_average_at_start')} (the run is only as good as the machine was idle)",
        "",
        "## Goals (issue 6)",
        "",
        "| goal | model | result | status |",
        "|---|---|---|---|",
    ]
    lines += [f"| {g['goal']} | {g['model']} | {g['detail']} | {mark[g['met']]} |" for g in goals]
    extra = [v for v in settings.get("variants", []) if v in EXTRA_VARIANTS]
    for model, workloads in results.items():
        lines += ["", f"## {model}", "", f"Weights: {settings.get('weights', {}).get(model, '?')}.", "",
                  "Throughput in images/s; latency p50 / p99 in ms; errors summed over the runs; "
                  "ratios are ours / other (throughput: higher is better; p50: lower is better).", "",
                  "| workload | c | direct img/s | direct p50 / p99 | stock img/s | stock p50 / p99 | stock err "
                  "| stock config | ours img/s | ours p50 / p99 | ours err | ours config | ours/stock img/s "
                  "| ours/stock p50 | ours/direct img/s | ours/direct p50 |",
                  "|---|---|" + "---:|" * 4 + "---:|---|" + "---:|" * 3 + "---|" + "---:|" * 4]
        rows = list(_cells(workloads))
        for workload, c, cell in rows:
            d, s, o, r, cfg = (cell.get("direct"), cell.get("stock"), cell.get("ours"), cell.get("ratios", {}),
                               cell.get("config", {}))
            lines.append(
                f"| {workload} | {c[1:]} | {_num(_get(d, 'throughput'))} | {_lat(d)} | {_num(_get(s, 'throughput'))} "
                f"| {_lat(s)} | {_get(s, 'errors', '-')} | {_config(cfg.get('stock'))} | {_num(_get(o, 'throughput'))} "
                f"| {_lat(o)} | {_get(o, 'errors', '-')} | {_config(cfg.get('ours'))} "
                f"| {_num(r.get('throughput_ours_vs_stock'))} | {_num(r.get('p50_ms_ours_vs_stock'))} "
                f"| {_num(r.get('throughput_ours_vs_direct'))} | {_num(r.get('p50_ms_ours_vs_direct'))} |")
        if extra:
            lines += ["", "Our handler with optimizations switched off, at the configuration `ours` chose:", "",
                      "| workload | c | " + " | ".join(f"{v} img/s | {v} p50 / p99 | ours/{v} img/s | ours/{v} p50"
                                                       for v in extra) + " |",
                      "|---|---|" + "---:|" * (4 * len(extra))]
            for workload, c, cell in rows:
                r = cell.get("ratios", {})
                lines.append(f"| {workload} | {c[1:]} | " + " | ".join(
                    f"{_num(_get(cell.get(v), 'throughput'))} | {_lat(cell.get(v))} "
                    f"| {_num(r.get(f'throughput_ours_vs_{v}'))} | {_num(r.get(f'p50_ms_ours_vs_{v}'))}"
                    for v in extra) + " |")
        stages = list(dict.fromkeys(k for _, _, cell in rows for k in (cell.get("ours") or {}).get("server_timings_ms", {})))
        if stages:
            lines += ["", "Where `ours` spends its time: our handler's own `timings_ms`, median per request, ms:", "",
                      "| workload | c | " + " | ".join(stages) + " |", "|---|---|" + "---:|" * len(stages)]
            for workload, c, cell in rows:
                timings = (cell.get("ours") or {}).get("server_timings_ms", {})
                lines.append(f"| {workload} | {c[1:]} | " + " | ".join(_num(timings.get(k)) for k in stages) + " |")
        for kind in ("stock", "ours"):
            labels = sorted({label for _, _, cell in rows
                             for label in cell.get("config", {}).get(kind, {}).get("candidates", {})})
            if not labels:
                continue
            lines += ["", f"{kind}: every configuration tried (median img/s, errors; w = workers, b = batchSize):", "",
                      "| workload | c | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
            for workload, c, cell in rows:
                tried = cell.get("config", {}).get(kind, {}).get("candidates", {})
                lines.append(f"| {workload} | {c[1:]} | " + " | ".join(
                    f"{_num(tried[label]['throughput'])} ({tried[label]['errors']} err)" if label in tried else "-"
                    for label in labels) + " |")
    lines += [
        "",
        "## How it is measured",
        "",
        "- Same model, weights, images and machine for all three; one `make bench` run.",
        "- `direct`: PIL decode -> `pil_to_tensor` -> float / 255 -> `model([tensor])` under `torch.inference_mode`, "
        f"in the benchmark process, no server (mode `{settings.get('direct_mode', 'threads')}`: at concurrency N, "
        "N threads share the model; `serial`: they queue for one loop).",
        "- `stock`: TorchServe 0.12 with its built-in `object_detector` handler (archive: `--model-file` with one "
        "no-argument class, `--serialized-file`, `index_to_name.json`); it stacks a batch into one tensor, so a "
        "batch of mixed sizes fails (503) for every request in it: those are counted as errors.",
        "- `ours`: our handler, archived by `scripts/build_mar.py`.",
        f"- Server configurations tried: {', '.join(settings.get('configs', []))} (workers x batchSize, "
        f"maxBatchDelay {settings.get('max_batch_delay_ms', '?')} ms, cores / workers torch threads per worker); "
        "each is measured with every repeat and the best median throughput is reported (a configuration "
        "without errors first). At concurrency 1 only 1x1 is tried: a lone request never fills a batch, and a "
        "second worker only halves the threads of the busy one.",
        "- Closed loop: N clients each send the next image when the last is answered. Throughput = answered "
        "images / wall time; p50/p99 over answered requests; a non-200 answer or one in the wrong format is an "
        "error. Warm-up requests are not counted. Within a configuration every variant runs each cell once per "
        "round, the order rotated from round to round, so none always follows the same neighbour.",
        "- Workloads: `small` 640x480 JPEGs; `phone` 4032x3024 JPEGs with sensor-like noise (~3 MB, quality 90); "
        "`mixed` 640x480, 1280x960, 4032x3024 JPEGs and an 800x600 PNG, concurrent clients always sending "
        "different sizes (so every batch window mixes sizes).",
        "",
        "## GPU",
        "",
    ]
    gpu = report.get("gpu")
    lines.append(gpu if isinstance(gpu, str) else
                 "Not yet measured: this run had no GPU (fasterrcnn_resnet50_fpn_v2 at 800 px, eager fp32 batch 1 "
                 "versus our best, is to be measured on a GPU machine).")
    return "\n".join(lines) + "\n"


def _cells(workloads: dict):
    for workload, cells in workloads.items():
        if isinstance(cells, dict):
            for c, cell in sorted(cells.items(), key=lambda kv: int(kv[0][1:])):
                yield workload, c, cell


def _get(summary: dict | None, key: str, default: Any = None) -> Any:
    return default if summary is None else summary.get(key, default)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _lat(summary: dict | None) -> str:
    return "-" if summary is None else f"{_num(summary.get('p50_ms'))} / {_num(summary.get('p99_ms'))}"


def _config(entry: dict | None) -> str:
    return "-" if not entry or "chosen" not in entry else entry["chosen"]


def _duration(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


def _fmt(run: dict) -> str:
    return (f"{run['throughput']:.2f} img/s, p50 {_num(run['p50_ms'])} ms, p99 {_num(run['p99_ms'])} ms, "
            f"{run['errors']} errors of {run['requests']}")


def _example(answer: Any) -> Any:
    """A short sample of what a variant answered (its first detections), for the report."""
    return answer[:3] if isinstance(answer, list) else answer


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    pick = lambda value, key: profile[key] if value is None else value  # noqa: E731
    default_models = [registry.EMBEDDED] if args.quick else list(DEFAULT_MODELS)
    default_workloads = ["small", "mixed"] if args.quick else list(WORKLOADS)
    options = Options(
        models=args.models or default_models,
        workloads=args.workloads or default_workloads,
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
        report = json.loads(args.out.read_text())
        args.docs.write_text(render_markdown(report))
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
    report = {
        "machine": machine,
        "settings": {"command": " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]),
                     "models": options.models, "workloads": options.workloads, "concurrency": options.concurrency,
                     "repeats": options.repeats, "seconds": options.seconds, "min_requests": options.min_requests,
                     "warmup": options.warmup, "configs": [f"{c.workers}x{c.batch_size}" for c in options.configs],
                     "max_batch_delay_ms": args.max_batch_delay, "variants": options.variants,
                     "direct_mode": options.direct_mode, "images_per_workload": options.images,
                     "weights": bench.weights, "inherited_environment": inherited},
        "results": results,
        "goals": evaluate_goals(results),
        "failures": bench.failures,
        "runtime_s": round(time.monotonic() - bench.began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(render_markdown(report))
    print(f"bench: wrote {args.out} and {args.docs} in {_duration(report['runtime_s'])}")
    for goal in report["goals"]:
        print(f"  {goal['model']}: {goal['goal']}: {goal['detail']}: "
              f"{ {True: 'met', False: 'NOT MET', None: 'not measured'}[goal['met']] }")
    if bench.failures:
        print("bench: some servers failed:\n" + "\n".join(bench.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
