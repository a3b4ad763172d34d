"""`make bench`: a quick real run of the harness (direct, stock TorchServe, ours), and its parts alone."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from ts.utils.util import list_classes_from_module

from objdetect import registry, shapes_net
from objdetect_serving.archive import default_weights
from objdetect_serving.paths import ROOT
from objdetect_tools.bench import goals, load, report, results, run, stock_model
from objdetect_tools.bench.results import Cell, VariantResult
from objdetect_tools.workloads import Payload

WORKLOADS, CONCURRENCY, VARIANTS = ("small", "mixed"), (1, 4), ("direct", "openvino_direct", "stock", "ours")
SHAPE_LABELS = registry.architecture("shapes").labels


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run on the embedded model: 2 requests per client, 1 run per cell, configurations
    1x1 and 1x4 (a 100 ms batch delay makes a batch of the 4 concurrent requests certain).
    TMPDIR puts its model store and TorchServe's temp dirs where the test can look for leftovers."""
    out = tmp_path_factory.mktemp("bench")
    tmp = out / "tmp"
    tmp.mkdir()
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--models", "shapes",
               "--workloads", *WORKLOADS, "--concurrency", *map(str, CONCURRENCY), "--configs", "1x1", "1x4",
               "--max-batch-delay", "100", "--out", str(out / "bench.json"), "--docs", str(out / "benchmarks.md")]
    try:
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True,
                              text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        yield {"report": json.loads((out / "bench.json").read_text()), "docs": (out / "benchmarks.md").read_text(),
               "tmp": tmp, "log": done.stdout}
    finally:
        # A run killed by its timeout leaves its TorchServes running: each leads its own session.
        for process in processes_under(tmp):
            with contextlib.suppress(psutil.Error):
                process.kill()


def processes_under(tmp) -> list[psutil.Process]:
    """The processes the run started that are still running: all name its TMPDIR on their command line."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(tmp) in arg for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


def cells(report_json):
    for workload in WORKLOADS:
        for c in CONCURRENCY:
            yield workload, c, report_json["results"]["shapes"][workload][f"c{c}"]


def real_run(test):
    """Marks a test of the quick real run: real TorchServe servers, through a subprocess, minutes."""
    return pytest.mark.integration(pytest.mark.slow(test))


# ---------------------------------------------------------------- the quick real run

@real_run
def test_every_cell_has_throughput_latencies_and_errors_for_every_variant(quick_run):
    for workload, c, cell in cells(quick_run["report"]):
        for variant in VARIANTS:
            result = cell[variant]
            assert result["throughput"] > 0, (workload, c, variant)
            assert 0 < result["p50_ms"] <= result["p99_ms"], (workload, c, variant)
            assert result["requests"] >= 2 * c  # 2 per client
            # same-size images answer without errors everywhere; stock may fail mixed-size batches
            if workload == "small" or variant != "stock":
                assert result["errors"] == 0, (workload, c, variant, result["error_statuses"])


@real_run
def test_ratios_are_ours_over_stock_and_both_directs(quick_run):
    for _, _, cell in cells(quick_run["report"]):
        ratios = cell["ratios"]
        for other in ("stock", "direct", "openvino_direct"):
            assert ratios[f"throughput_ours_vs_{other}"] == pytest.approx(
                cell["ours"]["throughput"] / cell[other]["throughput"], rel=1e-2)
            assert ratios[f"p50_ms_ours_vs_{other}"] == pytest.approx(
                cell["ours"]["p50_ms"] / cell[other]["p50_ms"], rel=1e-2)


@real_run
def test_the_stock_handler_really_answered_in_its_own_format(quick_run):
    cell = quick_run["report"]["results"]["shapes"]["small"]["c1"]
    assert cell["stock"]["errors"] == 0
    example = cell["stock"]["example"]
    assert example, "the stock handler found nothing in any image"
    for detection in example:  # [{"<label>": [x1, y1, x2, y2], "score": s}]
        (label,) = set(detection) - {"score"}
        assert label in SHAPE_LABELS and len(detection[label]) == 4 and 0.5 <= detection["score"] <= 1
    assert "detections" not in json.dumps(example)  # not our format
    assert cell["ours"]["example"] and {"label", "score", "box"} <= set(cell["ours"]["example"][0])


@real_run
def test_stock_fails_mixed_size_batches_and_the_errors_are_counted(quick_run):
    stock = {w: quick_run["report"]["results"]["shapes"][w]["c4"]["config"]["stock"] for w in WORKLOADS}
    batched_mixed = stock["mixed"]["candidates"]["w1b4"]
    assert batched_mixed["errors"] > 0 and "503" in batched_mixed["error_statuses"]
    assert stock["small"]["candidates"]["w1b4"]["errors"] == 0  # same-size batches stack fine
    # its best configuration for mixed sizes is one that answers: no batching
    assert stock["mixed"]["chosen"] == "w1b1" and stock["mixed"]["batch_size"] == 1
    ours = quick_run["report"]["results"]["shapes"]["mixed"]["c4"]["config"]["ours"]
    assert ours["candidates"]["w1b4"]["errors"] == 0  # ours batches mixed sizes


@real_run
def test_concurrency_1_tries_one_worker_without_batching_only(quick_run):
    for _, c, cell in cells(quick_run["report"]):
        for kind in ("stock", "ours"):
            tried = set(cell["config"][kind]["candidates"])
            assert tried == ({"w1b1"} if c == 1 else {"w1b1", "w1b4"})


@real_run
def test_machine_and_settings_are_recorded(quick_run):
    report_json = quick_run["report"]
    machine = report_json["machine"]
    assert machine["cores"] >= 1 and machine["memory_gb"] > 0 and machine["cpu"]
    assert machine["torch"] and machine["torchserve"] == "0.12.0" and machine["date"]
    assert report_json["settings"]["repeats"] == 1 and report_json["settings"]["configs"] == ["1x1", "1x4"]
    assert "embedded" in report_json["settings"]["weights"]["shapes"]


@real_run
def test_markdown_has_a_table_per_model_and_the_goals_and_regenerates_from_the_json(quick_run):
    docs = quick_run["docs"]
    assert "## shapes" in docs and "| workload | c | direct img/s" in docs
    assert "## Goals\n" in docs and "## Machine" in docs and "scripts/bench.py --quick" in docs
    assert "issue" not in docs.lower()
    assert docs.count("| small | 1 |") >= 1 and "| mixed | 4 |" in docs
    assert "not measured" in docs  # the mobilenet goal: that model was not in this run
    assert report.render_markdown(results.from_json(quick_run["report"])) == docs


@real_run
def test_no_server_outlives_the_run(quick_run):
    assert processes_under(quick_run["tmp"]) == []


# ---------------------------------------------------------------- the parts, without servers

@pytest.mark.unit
def test_stock_format_check():
    assert load.stock_answer_ok([{"dog": [1.0, 2.0, 3.0, 4.0], "score": 0.9}])
    assert load.stock_answer_ok([])
    assert not load.stock_answer_ok({"detections": []})
    assert not load.stock_answer_ok([{"dog": [1.0, 2.0, 3.0], "score": 0.9}])
    assert not load.stock_answer_ok([{"dog": [1, 2, 3, 4]}])


@pytest.mark.unit
def test_ours_format_check_wants_our_keys_and_the_image_size():
    payload = Payload(b"", "image/jpeg", (640, 480))
    answer = {"model": "detector", "version": "1.0", "width": 640, "height": 480, "detections": [], "timings_ms": {}}
    assert load.ANSWER_CHECKS["ours"](answer, payload)
    assert not load.ANSWER_CHECKS["ours"]({**answer, "width": 320}, payload)
    assert not load.ANSWER_CHECKS["ours"]([], payload)
    assert not load.ANSWER_CHECKS["stock"](answer, payload)


@pytest.mark.unit
def test_closed_loop_keeps_n_requests_in_flight_with_different_images():
    in_flight, seen, lock = set(), [], threading.Lock()

    def send(payload):
        with lock:
            in_flight.add(payload.name)
            seen.append(set(in_flight))
        time.sleep(0.02)
        with lock:
            in_flight.discard(payload.name)
        return payload.size[0] != 4  # the fourth image is never answered well

    payloads = [Payload(b"", "image/jpeg", (width, 1)) for width in (1, 2, 3, 4)]
    summary = load.closed_loop(send, payloads, concurrency=4, seconds=0, min_requests=3).summary()
    assert summary.requests == 12 and summary.errors == 3
    assert max(len(s) for s in seen) == 4  # four different images at once
    assert summary.throughput > 0 and summary.p50_ms <= summary.p99_ms


@pytest.mark.unit
def test_median_of_runs_and_the_best_configuration():
    runs = [results.RunSummary(t, p, 2 * p, e, 10, 1) for t, p, e in ((1.0, 30, 0), (3.0, 10, 1), (2.0, 20, 0))]
    median = load.median_of_runs(runs, load.Answers())
    assert (median.throughput, median.p50_ms, median.errors, median.requests) == (2.0, 20, 1, 30)

    def result(throughput, p50, errors):
        return VariantResult(throughput, p50, 2 * p50, errors, 10, {})

    measured = {"w1b1": result(2.0, 9, 0), "w1b4": result(9.0, 5, 4), "w2b1": result(3.0, 8, 0)}
    assert run.best(measured) == "w2b1"  # the fastest that answered everything


def _goal_cell(stock, ours, openvino_p50=100.0, ours_p50=105.0) -> Cell:
    variants = {"openvino_direct": VariantResult(10.0, openvino_p50, 200.0, 0, 10, {}),
                "stock": VariantResult(stock, 300.0, 900.0, 0, 10, {}),
                "ours": VariantResult(ours, ours_p50, 800.0, 0, 10, {})}
    return Cell(variants, {}, results.ratios(variants))


@pytest.mark.unit
def test_goals_met_not_met_and_not_measured():
    measured = {goals.GOAL_MODEL: {"small": {1: _goal_cell(5.0, 9.5)}, "phone": {4: _goal_cell(1.0, 6.5)}},
                "shapes": {"small": {1: _goal_cell(5.0, 4.0)}}}
    verdicts = {(g.goal[:5], g.model): g.met for g in goals.evaluate(measured)}
    assert verdicts[("small", goals.GOAL_MODEL)] is True and verdicts[("phone", goals.GOAL_MODEL)] is True
    assert verdicts[("no wo", goals.GOAL_MODEL)] is True and verdicts[("no wo", "shapes")] is False
    for small, met in ((_goal_cell(5.0, 8.5), False),  # 1.7x stock
                       (_goal_cell(5.0, 9.5, ours_p50=120.0), False),  # 1.2x openvino_direct's p50
                       (_goal_cell(5.0, 9.0, ours_p50=115.0), True)):  # both just met
        measured[goals.GOAL_MODEL]["small"][1] = small
        assert goals.evaluate(measured)[0].met is met
    measured[goals.GOAL_MODEL]["phone"][4] = _goal_cell(1.0, 5.5)
    assert goals.evaluate(measured)[1].met is False
    assert goals.evaluate({"shapes": {}})[0].met is None


@pytest.mark.unit
def test_results_round_trip_through_bench_json():
    config = results.ServerConfig(1, 4, 10)
    deployment = results.Deployment(config, 2)
    runs = [results.RunSummary(3.0, 10.0, 20.0, 1, 4, 1.5)]
    ours = VariantResult(3.0, 10.0, 20.0, 1, 4, {"503": 1}, {"decode": 1.5, "total": 9.0}, runs,
                         [{"label": "circle", "score": 0.9, "box": [1, 2, 3, 4]}])
    direct = VariantResult(2.0, 12.0, 25.0, 0, 4, {}, None, runs, {"detections": 3})
    cell = Cell(
        {"direct": direct, "ours": ours},
        {"direct": results.DirectSetup("threads", 2),
         "stock": results.ConfigSearch({}, {"w1b4": results.ServerFailure("TorchServe exited with 1:")}),
         "ours": results.ConfigSearch({"w1b4": ours.as_candidate()}, {}, deployment),
         "ours_exact": results.ExtraSetup(deployment, {"OBJDETECT_JPEG_DRAFT": "false"},
                                          results.ServerFailure("model had no READY worker")),
         results.REFERENCE: results.ExtraSetup(deployment, {})},
        results.ratios({"direct": direct, "ours": ours}, ["ours_exact"]))
    typed = results.Report({"cores": 2}, {"repeats": 1}, {"shapes": {"small": {1: Cell(), 4: cell}}},
                           goals.evaluate({"shapes": {"small": {4: cell}}}), ["a failure"], 12.5)
    written = results.to_json(typed)
    assert list(written["results"]["shapes"]["small"]) == ["c1", "c4"]
    entry = written["results"]["shapes"]["small"]["c4"]
    assert entry["config"]["ours"]["chosen"] == "w1b4" and entry["config"]["ours"]["threads_per_worker"] == 2
    assert set(entry["config"]["ours"]["candidates"]["w1b4"]) == {
        "throughput", "p50_ms", "p99_ms", "errors", "requests", "error_statuses", "server_timings_ms"}
    assert entry["config"]["stock"] == {"candidates": {}, "failed": {"w1b4": "TorchServe exited with 1:"}}
    assert entry["config"]["ours_exact"]["failed"] == "model had no READY worker"
    read = results.from_json(json.loads(json.dumps(written)))
    assert read == typed


@pytest.mark.unit
def test_extra_variants_take_turns_with_ours_once_more_and_their_ratios_divide_by_it(monkeypatch):
    """The control and the switches are compared with ours measured beside them, in the same
    rounds, not with the `ours` of the configuration search, minutes earlier."""
    config = results.ServerConfig(1, 1, 10)
    options = run.Options(models=["shapes"], workloads=["small"], concurrency=[1], repeats=1, seconds=0.0,
                          min_requests=1, warmup=0, configs=[config], variants=["ours_torch", "ours_again"],
                          direct_mode="threads", images={"small": 1}, cores=2)
    bench = run.Bench(options, log=lambda _: None)
    cell = Cell({"ours": VariantResult(8.0, 125.0, 150.0, 0, 10, {})},
                {"ours": results.ConfigSearch({}, {}, results.Deployment(config, 2))})
    calls = []

    def serve_and_measure(model, config, store, archives, keys, servers, local):
        calls.append((config, keys, servers, local))
        measured = {results.REFERENCE: 10.0, "ours_torch": 5.0, "ours_again": 12.5}  # img/s
        return run.Served({variant: {key: VariantResult(rate, 1000 / rate, 2000 / rate, 0, 10, {}) for key in keys}
                           for variant, rate in measured.items()}, {})

    monkeypatch.setattr(bench, "serve_and_measure", serve_and_measure)
    bench._extra_variants(None, None, {}, {("small", 1): cell})
    ((served_config, keys, servers, local),) = calls  # one set of servers, taking turns
    assert (served_config, keys, local) == (config, [("small", 1)], {})
    assert servers == {results.REFERENCE: ("ours", {}), "ours_torch": ("ours", {"OBJDETECT_RUNTIME": "torch"}),
                       "ours_again": ("ours", {})}
    assert cell.configs[results.REFERENCE] == results.ExtraSetup(results.Deployment(config, 2), {})
    cell.ratios = results.ratios(cell.variants, options.variants)
    # 10 / 5 and 10 / 12.5: the reference's rate, not the configuration search's 8
    assert cell.ratios["throughput_ours_vs_ours_torch"] == 2.0
    assert cell.ratios["throughput_ours_vs_ours_again"] == 0.8
    assert cell.ratios["p50_ms_ours_vs_ours_torch"] == 0.5
    page = report.render_markdown(results.Report({}, {"variants": options.variants},
                                                 {"shapes": {"small": {1: cell}}}, [], [], 1.0))
    (row,) = [line for line in page.splitlines() if line.startswith("| small | 1 | 10.0 |")]
    assert row.split(" | ")[2:] == ["10.0", "100 / 200", "5.00", "200 / 400", "2.00", "0.50",
                                    "12.5", "80.0 / 160", "0.80", "1.25 |"]


def _import_packed(folder, name, monkeypatch):
    """folder/<name>.py imported as the top-level module `name`, as a TorchServe worker imports the
    files of an unpacked archive; undone after the test."""
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
@pytest.mark.parametrize("architecture", ["shapes", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_the_stock_model_file_builds_what_its_json_names(architecture, tmp_path, monkeypatch):
    arch = registry.architecture(architecture)
    shutil.copy(stock_model.__file__, tmp_path / "stock_model.py")
    (tmp_path / stock_model.SPEC_FILE).write_text(
        json.dumps({"architecture": architecture, "num_classes": len(arch.labels)}))
    if arch.embedded_weights:
        shutil.copy(shapes_net.__file__, tmp_path / "shapes_net.py")
        _import_packed(tmp_path, "shapes_net", monkeypatch)
        weights, _ = default_weights(arch, download=False)
    else:
        torch.manual_seed(0)
        weights = tmp_path / "weights.pth"
        torch.save(arch.build(num_classes=len(arch.labels)).state_dict(), weights)
    module = _import_packed(tmp_path, "stock_model", monkeypatch)
    (detector_class,) = list_classes_from_module(module)  # what TorchServe's object_detector asks for
    detector = detector_class()
    detector.load_state_dict(torch.load(weights, map_location="cpu"))
    with torch.no_grad():
        (output,) = detector.eval()([torch.rand(3, 240, 320)])
    assert set(output) == {"boxes", "labels", "scores"} and output["boxes"].shape[1:] == (4,)
