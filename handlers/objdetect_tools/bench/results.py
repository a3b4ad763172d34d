"""What a benchmark run measured, and its bench.json form.

Typed within the bench (concurrency an int, a server that failed to start its own type);
to_json and from_json are the one place that knows the file's layout: results keyed model ->
workload -> "c<concurrency>" -> cell, a cell holding each variant's result, "config" (how each
variant ran) and "ratios", so that docs can be rendered again from a file (--markdown-only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SERVER_KINDS = ("stock", "ours")  # the variants whose configuration is searched; extras run at ours'
LOCAL_KINDS = ("direct", "openvino_direct")  # the model in the benchmark's process, no server
# Ours once more, measured in turn with the extra variants at ours' configuration: what their ratios
# divide by, so that each ratio compares servers that took turns, not runs minutes apart.
REFERENCE = "ours_reference"


@dataclass(frozen=True)
class RunSummary:
    """One closed-loop run of one variant in one cell."""

    throughput: float  # answered images per second of wall time
    p50_ms: float | None  # over the answered requests; None when none was answered
    p99_ms: float | None
    errors: int
    requests: int
    wall_s: float

    def __str__(self) -> str:
        return (f"{self.throughput:.2f} img/s, p50 {format_number(self.p50_ms)} ms, "
                f"p99 {format_number(self.p99_ms)} ms, {self.errors} errors of {self.requests}")


@dataclass(frozen=True)
class VariantResult:
    """A variant in a cell: the median of its runs (errors and requests summed), why requests
    failed, a sample answer and, for ours, the handler's own median timings per stage. As a
    configuration candidate it is kept without its runs and example."""

    throughput: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    requests: int
    error_statuses: dict[str, int]
    server_timings_ms: dict[str, float] | None = None
    runs: list[RunSummary] = field(default_factory=list)
    example: Any = None

    def as_candidate(self) -> VariantResult:
        return dataclasses.replace(self, runs=[], example=None)


@dataclass(frozen=True)
class ServerFailure:
    """A server that did not start: the first line of why."""

    reason: str


@dataclass(frozen=True)
class ServerConfig:
    """A TorchServe configuration tried: workers x batchSize ("WxB" on the command line)."""

    workers: int
    batch_size: int
    max_batch_delay_ms: int

    @classmethod
    def parse(cls, text: str, max_batch_delay_ms: int) -> ServerConfig:
        workers, batch = (int(v) for v in text.lower().split("x"))
        if workers < 1 or batch < 1:
            raise ValueError(f"config {text!r}: workers and batch size must be positive")
        return cls(workers, batch, max_batch_delay_ms)

    @property
    def label(self) -> str:
        return f"w{self.workers}b{self.batch_size}"

    def threads(self, cores: int) -> int:
        """Torch threads per worker: the cores shared among the workers."""
        return max(1, cores // self.workers)


@dataclass(frozen=True)
class Deployment:
    """A server configuration as it ran, with the torch threads each worker got."""

    config: ServerConfig
    threads_per_worker: int


@dataclass(frozen=True)
class DirectSetup:
    mode: str  # threads or serial
    torch_threads: int


@dataclass(frozen=True)
class ConfigSearch:
    """How a server variant's configuration was chosen in a cell: every candidate measured, the
    configurations whose server failed, and the winner (None when none answered)."""

    candidates: dict[str, VariantResult]  # by ServerConfig label
    failed: dict[str, ServerFailure] = field(default_factory=dict)
    chosen: Deployment | None = None


@dataclass(frozen=True)
class ExtraSetup:
    """An extra variant (our handler with switches off by `env`) or REFERENCE (`env` empty), at the
    deployment ours chose."""

    deployment: Deployment
    env: dict[str, str]
    failed: ServerFailure | None = None


Setup = DirectSetup | ConfigSearch | ExtraSetup


@dataclass
class Cell:
    """One model, workload and concurrency: each variant's result, how each ran, ours' ratios."""

    variants: dict[str, VariantResult] = field(default_factory=dict)
    configs: dict[str, Setup] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)


Results = dict[str, dict[str, dict[int, Cell]]]  # model -> workload -> concurrency -> cell


@dataclass(frozen=True)
class GoalResult:
    goal: str
    model: str
    met: bool | None  # None: not measured in this run
    detail: str


@dataclass
class Report:
    machine: dict[str, Any]  # machine.machine_info()
    settings: dict[str, Any]  # the options of the run
    results: Results
    goals: list[GoalResult]
    failures: list[str]  # servers that failed to start, with TorchServe's log tail
    runtime_s: float | None
    gpu: str | None = None  # a GPU measurement's summary, when one was made


def ratios(variants: dict[str, VariantResult], extra_variants: tuple[str, ...] | list[str] = ()) -> dict:
    """ours over stock, direct and openvino_direct for throughput (higher is better) and p50/p99
    (lower is better); for throughput and p50, ours over each extra variant, as REFERENCE measured
    ours beside them."""
    def ratio(ours_as: str, variant: str, metric: str) -> float | None:
        ours, other = variants.get(ours_as), variants.get(variant)
        if ours is None or other is None or getattr(ours, metric) is None or not getattr(other, metric):
            return None  # e.g. stock answered nothing
        return round(getattr(ours, metric) / getattr(other, metric), 3)

    out = {f"{metric}_ours_vs_{variant}": ratio("ours", variant, metric)
           for variant in ("stock", *LOCAL_KINDS) for metric in ("throughput", "p50_ms", "p99_ms")}
    for variant in extra_variants:
        out.update({f"{metric}_ours_vs_{variant}": ratio(REFERENCE, variant, metric)
                    for metric in ("throughput", "p50_ms")})
    return out


def format_number(value: float | None) -> str:
    """Three significant digits or so, as the report and the logs show numbers; "-" for none."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


# ---------------------------------------------------------------- bench.json

def to_json(report: Report) -> dict:
    out = {
        "machine": report.machine,
        "settings": report.settings,
        "results": {model: {workload: {f"c{c}": _cell_to_json(cell) for c, cell in cells.items()}
                            for workload, cells in workloads.items()}
                    for model, workloads in report.results.items()},
        "goals": [dataclasses.asdict(goal) for goal in report.goals],
        "failures": report.failures,
        "runtime_s": report.runtime_s,
    }
    if report.gpu is not None:
        out["gpu"] = report.gpu
    return out


def from_json(data: dict) -> Report:
    return Report(
        machine=data["machine"],
        settings=data.get("settings", {}),
        results={model: {workload: dict(sorted((int(key.removeprefix("c")), _cell_from_json(cell))
                                               for key, cell in cells.items()))
                         for workload, cells in workloads.items()}
                 for model, workloads in data["results"].items()},
        goals=[GoalResult(**goal) for goal in data.get("goals") or []],
        failures=data.get("failures", []),
        runtime_s=data.get("runtime_s"),
        gpu=data.get("gpu") if isinstance(data.get("gpu"), str) else None,
    )


def _cell_to_json(cell: Cell) -> dict:
    out: dict[str, Any] = {"config": {variant: _setup_to_json(setup) for variant, setup in cell.configs.items()}}
    out.update({variant: _result_to_json(result) for variant, result in cell.variants.items()})
    out["ratios"] = dict(cell.ratios)
    return out


def _cell_from_json(data: dict) -> Cell:
    configs = data.get("config", {})
    return Cell(variants={k: _result_from_json(v) for k, v in data.items() if k not in ("config", "ratios")},
                configs={variant: _setup_from_json(variant, entry) for variant, entry in configs.items()},
                ratios=dict(data.get("ratios", {})))


def _result_to_json(result: VariantResult, candidate: bool = False) -> dict:
    out: dict[str, Any] = {"throughput": result.throughput, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                           "errors": result.errors, "requests": result.requests}
    if not candidate:
        out["runs"] = [dataclasses.asdict(run) for run in result.runs]
    out["error_statuses"] = dict(result.error_statuses)
    if not candidate:
        out["example"] = result.example
    if result.server_timings_ms is not None:
        out["server_timings_ms"] = dict(result.server_timings_ms)
    return out


def _result_from_json(data: dict) -> VariantResult:
    return VariantResult(data["throughput"], data["p50_ms"], data["p99_ms"], data["errors"], data["requests"],
                         dict(data.get("error_statuses", {})), data.get("server_timings_ms"),
                         [RunSummary(**run) for run in data.get("runs", [])], data.get("example"))


def _deployment_to_json(deployment: Deployment) -> dict:
    config = deployment.config
    return {"chosen": config.label, "workers": config.workers, "batch_size": config.batch_size,
            "max_batch_delay_ms": config.max_batch_delay_ms, "threads_per_worker": deployment.threads_per_worker}


def _deployment_from_json(data: dict) -> Deployment:
    return Deployment(ServerConfig(data["workers"], data["batch_size"], data["max_batch_delay_ms"]),
                      data["threads_per_worker"])


def _setup_to_json(setup: Setup) -> dict:
    if isinstance(setup, DirectSetup):
        return dataclasses.asdict(setup)
    if isinstance(setup, ExtraSetup):
        out = {**_deployment_to_json(setup.deployment), "env": dict(setup.env)}
        return out if setup.failed is None else {**out, "failed": setup.failed.reason}
    out = {**(_deployment_to_json(setup.chosen) if setup.chosen else {}),
           "candidates": {label: _result_to_json(result, candidate=True) for label, result in setup.candidates.items()}}
    if setup.failed:
        out["failed"] = {label: failure.reason for label, failure in setup.failed.items()}
    return out


def _setup_from_json(variant: str, data: dict) -> Setup:
    if variant in LOCAL_KINDS:
        return DirectSetup(data["mode"], data["torch_threads"])
    if variant not in SERVER_KINDS:
        failed = data.get("failed")
        return ExtraSetup(_deployment_from_json(data), dict(data["env"]), ServerFailure(failed) if failed else None)
    return ConfigSearch({label: _result_from_json(result) for label, result in data.get("candidates", {}).items()},
                        {label: ServerFailure(reason) for label, reason in data.get("failed", {}).items()},
                        _deployment_from_json(data) if "chosen" in data else None)
