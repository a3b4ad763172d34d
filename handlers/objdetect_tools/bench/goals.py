"""The goals the benchmark judges: each met, not met, or not measured in a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .results import Cell, GoalResult, Results
from .results import format_number as num

GOAL_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
NOT_MEASURED = (None, "not measured in this run")

Verdict = tuple[bool | None, str]  # met (None: not measured), and what was found


def _small_vs_stock_and_openvino_direct(workloads: dict[str, dict[int, Cell]]) -> Verdict:
    cell = workloads.get("small", {}).get(1)
    if cell is None or not {"ours", "stock", "openvino_direct"} <= set(cell.variants):
        return NOT_MEASURED
    throughput, p50 = cell.ratios["throughput_ours_vs_stock"], cell.ratios["p50_ms_ours_vs_openvino_direct"]
    met = throughput is not None and throughput >= 1.8 and p50 is not None and p50 <= 1.15
    return met, f"throughput x{num(throughput)} of stock, p50 x{num(p50)} of openvino_direct"


def _phone_vs_stock(workloads: dict[str, dict[int, Cell]]) -> Verdict:
    cell = workloads.get("phone", {}).get(4)
    if cell is None or "ours" not in cell.variants or "stock" not in cell.variants:
        return NOT_MEASURED
    if cell.variants["stock"].throughput == 0:  # stock answered nothing: any answer beats it
        return cell.variants["ours"].throughput > 0, "stock answered no request"
    throughput = cell.ratios["throughput_ours_vs_stock"]
    return throughput is not None and throughput >= 6.0, f"throughput x{num(throughput)} of stock"


def _never_slower_than_stock(workloads: dict[str, dict[int, Cell]]) -> Verdict:
    slower, measured = [], 0
    for workload, cells in workloads.items():
        for c, cell in cells.items():
            if "ours" in cell.variants and "stock" in cell.variants:
                measured += 1
                if (cell.variants["ours"].throughput or 0) < (cell.variants["stock"].throughput or 0):
                    slower.append(f"{workload} c{c} (x{num(cell.ratios['throughput_ours_vs_stock'])})")
    if slower:
        return False, "slower in " + ", ".join(slower)
    return (True, f"faster or equal in all {measured} cells") if measured else (None, "not measured")


@dataclass(frozen=True)
class Goal:
    text: str
    judge: Callable[[dict[str, dict[int, Cell]]], Verdict]  # one model's results
    model: str | None = None  # judged for this model only (reported even when not run); None: every model


GOALS = (
    Goal("small, c1, mobilenet 320: ours/stock throughput >= 1.8 and ours p50 <= 1.15 x openvino_direct p50",
         _small_vs_stock_and_openvino_direct, GOAL_MODEL),
    Goal("phone, c4, mobilenet 320: ours/stock throughput >= 6.0", _phone_vs_stock, GOAL_MODEL),
    Goal("no workload where ours is slower than stock (throughput)", _never_slower_than_stock),
)


def evaluate(results: Results) -> list[GoalResult]:
    verdicts = []
    for goal in GOALS:
        for model in [goal.model] if goal.model else list(results):
            met, detail = goal.judge(results.get(model, {}))
            verdicts.append(GoalResult(goal.text, model, met, detail))
    return verdicts
