"""The measurement: every model, cell and variant, with the servers' configurations searched."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from objdetect.allocator import keep_freed_memory
from objdetect.settings import ENV_PREFIX
from objdetect_serving.torchserve import Ports, ServerError, TorchServe

from .archives import EXTRA_VARIANTS, Archive, build_ours, build_stock, candidates
from .load import ANSWER_CHECKS, Answers, Send, closed_loop, direct_sender, http_sender, median_of_runs, workload_images
from .models import BenchModel, prepare_model
from .results import (REFERENCE, SERVER_KINDS, Cell, ConfigSearch, Deployment, DirectSetup, ExtraSetup, Results,
                      RunSummary, ServerConfig, ServerFailure, VariantResult, ratios)

CellKey = tuple[str, int]  # workload, concurrency
MakeSender = Callable[[Answers], Send]  # a variant's sender, noting what it got in the Answers given


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


@dataclass
class Served:
    """What one configuration's servers (and the local variants beside them) measured."""

    measured: dict[str, dict[CellKey, VariantResult]]  # variant -> cell -> result
    failed: dict[str, ServerFailure]  # variant -> why its server did not start


def best(measured: dict[str, VariantResult]) -> str:
    """The configuration that answered the most images per second; one without errors first."""
    return max(measured, key=lambda label: (measured[label].errors == 0, measured[label].throughput or 0.0,
                                            -(measured[label].p50_ms or math.inf)))


class Bench:
    def __init__(self, options: Options, log: Callable[[str], None] = print):
        self.o = options
        self.began = time.monotonic()
        self._log = log
        self.payloads = {w: workload_images(w, options.images[w]) for w in options.workloads}
        self.failures: list[str] = []
        self.weights: dict[str, str] = {}  # model -> where its weights came from
        self.openvino_runtimes: dict[str, str] = {}  # model -> what openvino_direct ran

    def log(self, message: str) -> None:
        self._log(f"[{time.monotonic() - self.began:6.0f}s] {message}")

    def cells(self) -> list[CellKey]:
        return [(w, c) for w in self.o.workloads for c in self.o.concurrency]

    def run(self) -> Results:
        keep_freed_memory()  # direct and openvino_direct run here: with the allocator our workers set
        results = {}
        with tempfile.TemporaryDirectory(prefix="objdetect-bench-") as workdir:
            for name in self.o.models:
                store = Path(workdir) / name
                store.mkdir()
                self.log(f"{name}: preparing weights and archives")
                model = prepare_model(name, store)
                self.weights[name] = model.weights_note
                self.openvino_runtimes[name] = model.openvino_runtime
                results[name] = self.run_model(model, store)
        return results

    def run_model(self, model: BenchModel, store: Path) -> dict[str, dict[int, Cell]]:
        cells = {key: Cell() for key in self.cells()}
        archives: dict[tuple[str, ServerConfig], Archive] = {}
        self._search_configs(model, store, archives, cells)
        if self.o.variants:
            self._extra_variants(model, store, archives, cells)
        for cell in cells.values():
            cell.ratios = ratios(cell.variants, self.o.variants)
        return {w: {c: cells[(w, c)] for c in self.o.concurrency} for w in self.o.workloads}

    def _search_configs(self, model: BenchModel, store: Path, archives: dict, cells: dict[CellKey, Cell]) -> None:
        """stock and ours: every candidate configuration, side by side; the best per cell. direct and
        openvino_direct (the model in this process, eager and with ours' OpenVINO parts) take their
        turns with them wherever a cell is first measured."""
        o = self.o
        serial = o.direct_mode == "serial"
        local_variants = {"direct": (partial(direct_sender, model.module, serial, o.cores), o.cores)}
        if model.openvino is not None:  # as our workers run it: OpenVINO on the cores, torch on one thread
            local_variants["openvino_direct"] = (partial(direct_sender, model.openvino, serial, 1), 1)
        per_config: dict[ServerConfig, Served] = {}
        unmeasured = set(cells)
        for config in o.configs:
            mine = [(w, c) for w, c in cells if config in candidates(o.configs, c)]
            if not mine:
                continue
            local = {v: make for v, (make, _) in local_variants.items()} if unmeasured & set(mine) else {}
            per_config[config] = served = self.serve_and_measure(
                model, config, store, archives, mine, {kind: (kind, {}) for kind in SERVER_KINDS}, local)
            for key in (unmeasured & set(mine)) if local else ():
                for variant, (_, threads) in local_variants.items():
                    cells[key].variants[variant] = served.measured[variant][key]
                    cells[key].configs[variant] = DirectSetup(o.direct_mode, threads)
            unmeasured -= set(mine)
        for kind in SERVER_KINDS:
            failed = {cfg.label: s.failed[kind] for cfg, s in per_config.items() if kind in s.failed}
            for key, cell in cells.items():
                tried = {cfg.label: s.measured[kind][key] for cfg, s in per_config.items()
                         if key in s.measured.get(kind, {})}
                chosen = None
                if tried:
                    label = best(tried)
                    chosen = next(self._deployment(cfg) for cfg in o.configs if cfg.label == label)
                    cell.variants[kind] = tried[label]
                cell.configs[kind] = ConfigSearch({label: r.as_candidate() for label, r in tried.items()},
                                                  failed, chosen)

    def _extra_variants(self, model: BenchModel, store: Path, archives: dict, cells: dict[CellKey, Cell]) -> None:
        """Our handler with switches off, at the configuration `ours` chose per cell, taking turns
        with ours once more (REFERENCE), which their ratios divide by."""
        by_config: dict[ServerConfig, list[CellKey]] = {}
        for key, cell in cells.items():
            chosen = cell.configs["ours"].chosen
            if chosen:
                by_config.setdefault(chosen.config, []).append(key)
        servers = {variant: ("ours", EXTRA_VARIANTS.get(variant, {})) for variant in (REFERENCE, *self.o.variants)}
        for config, keys in by_config.items():
            served = self.serve_and_measure(model, config, store, archives, keys, servers, {})
            for variant, (_, env) in servers.items():
                for key in keys:
                    if variant in served.measured:
                        cells[key].variants[variant] = served.measured[variant][key]
                    cells[key].configs[variant] = ExtraSetup(self._deployment(config), env, served.failed.get(variant))

    def _deployment(self, config: ServerConfig) -> Deployment:
        return Deployment(config, config.threads(self.o.cores))

    def serve_and_measure(self, model: BenchModel, config: ServerConfig, store: Path,
                          archives: dict[tuple[str, ServerConfig], Archive], cells: list[CellKey],
                          servers: dict[str, tuple[str, dict[str, str]]], local: dict[str, MakeSender]) -> Served:
        """One TorchServe per server variant ({variant: (kind, extra environment)}), all with their
        archive at `config` and up at once, measured in turn with the `local` variants."""
        threads = str(config.threads(self.o.cores))
        makers, what, failed = dict(local), {v: f"{model.name} {v}" for v in local}, {}
        with contextlib.ExitStack() as running:
            for variant, (kind, extra_env) in servers.items():
                if (kind, config) not in archives:
                    archives[(kind, config)] = (build_stock if kind == "stock" else build_ours)(model, config, store)
                archive = archives[(kind, config)]
                env = {"OMP_NUM_THREADS": threads,
                       **({f"{ENV_PREFIX}TORCH_THREADS": threads} if kind == "ours" else {}), **extra_env}
                server = TorchServe(store, {archive.name: archive.file}, Ports.free(), env=env)
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
                    failed[variant] = ServerFailure(str(error).splitlines()[0])
                    continue
                makers[variant] = partial(http_sender, f"{server.url()}/predictions/{archive.name}",
                                          ANSWER_CHECKS[kind])
            measured = self.measure(makers, what, cells, max(max(c for _, c in cells), config.workers))
        return Served(measured, failed)

    def measure(self, makers: dict[str, MakeSender], what: dict[str, str], cells: list[CellKey],
                warmup_clients: int) -> dict[str, dict[CellKey, VariantResult]]:
        """Warm-up, then --repeats rounds over `cells`, each cell run by every variant in turn (in an
        order rotated each round), so the drift of a shared machine touches all of them alike."""
        for make in makers.values():
            warmup = make(Answers())
            for workload in dict.fromkeys(w for w, _ in cells):
                closed_loop(warmup, self.payloads[workload], warmup_clients, 0, self.o.warmup)
        answers = {(variant, key): Answers() for variant in makers for key in cells}
        senders = {(variant, key): makers[variant](got) for (variant, key), got in answers.items()}
        runs: dict[tuple[str, CellKey], list[RunSummary]] = {pair: [] for pair in senders}
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
                    self.log(f"{what[variant]} {workload} c{c} run {repeat + 1}/{self.o.repeats}: {run}")
        out: dict[str, dict[CellKey, VariantResult]] = {variant: {} for variant in makers}
        for (variant, key), cell_runs in runs.items():
            out[variant][key] = median_of_runs(cell_runs, answers[(variant, key)])
        return out
