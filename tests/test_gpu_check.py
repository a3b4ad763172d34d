"""make gpu-check with CUDA hidden: what needs none runs and is right, what needs CUDA is reported as
skipped (an error with --require-cuda), and the checks' own logic (comparing, declining, reading the
loader) is sound."""

import json
import os
import subprocess
import sys

import pytest
import torch

from objdetect import synthetic
from objdetect.decode import decode_image
from objdetect_serving.paths import ROOT
from objdetect_tools import gpu_check
from objdetect_tools.equivalence import unmatched

CPU = torch.device("cpu")
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, on hosts with a GPU too


@pytest.mark.integration
@pytest.mark.slow
def test_quick_run_on_a_cpu_checks_what_needs_no_gpu_and_says_what_it_skipped(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=NO_GPU)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    checks = report["checks"]
    assert report["machine"]["device"] == "cpu" and report["quick"] is True
    for name in gpu_check.NEEDS_CUDA:
        assert checks[name]["status"] == "skipped" and checks[name]["summary"].startswith("no CUDA device")
    mean_ap = checks["speed_switches_map"]["details"]["paths"]
    assert checks["speed_switches_map"]["status"] == "passed"
    assert mean_ap["all switches on"]["runtime"].startswith("openvino")
    assert mean_ap["exact"]["runtime"].startswith("torch")
    assert abs(mean_ap["all switches on"]["map_at_50"] - mean_ap["exact"]["map_at_50"]) <= gpu_check.MAP_MARGIN
    assert mean_ap["exact"]["map_at_50"] > 0.8  # the embedded model finds its shapes
    cells = checks["timings"]["details"]["models"][gpu_check.MOBILENET]["cells"]
    assert list(cells) == ["eager fp32, batch 1", "ours, batch 1", "ours, batch 4"]
    assert all(c["images_per_s"] > 0 and c["calls"] >= 3 and c["p99_ms"] >= c["p50_ms"] for c in cells.values())
    summary = (tmp_path / "gpu-check.md").read_text()
    assert all(f"| {name} | {check['status']} |" in summary for name, check in checks.items())
    assert "| ours, batch 4 |" in summary


@pytest.mark.integration
def test_with_require_cuda_no_usable_cuda_is_an_error_before_any_check(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--require-cuda", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=NO_GPU)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--require-cuda, but there is no usable CUDA" in result.stderr
    assert "CUDA_VISIBLE_DEVICES=''" in result.stderr
    assert "gpu-check: exact_path" not in result.stdout and not (tmp_path / "gpu-check.json").exists()


@pytest.mark.unit
@pytest.mark.slow
def test_the_exact_path_comparison_finds_a_device_equal_to_itself():
    check = gpu_check.exact_path(CPU, images=2, reference=CPU)
    assert check.status == "passed", check
    assert all(model["detections"] > 0 and not model["problems"] for model in check.details["models"].values())


def shifted_pillow(levels: int, declines: tuple[str, ...] = ()):
    """A stand-in for nvJPEG: Pillow's pixels `levels` brighter, declining CMYK and progressive JPEGs."""
    def decode(data, max_pixels, device):
        if b"Adobe" in data[:4096] and "CMYK" in declines:  # Pillow writes CMYK JPEGs with an Adobe marker
            raise RuntimeError("unsupported colour space")
        if b"\xff\xc2" in data and "progressive" in declines:  # SOF2: progressive
            raise RuntimeError("progressive JPEG")
        decoded = decode_image(data, max_pixels)
        brighter = (decoded.pixels.int() + levels).clamp(0, 255).to(torch.uint8)
        return type(decoded)(brighter, decoded.width, decoded.height)
    return decode


@pytest.mark.unit
@pytest.mark.parametrize("levels, status", [(1, "passed"), (3, "failed")])
def test_jpeg_decode_judges_pixels_and_names_what_was_declined(levels, status):
    check = gpu_check.jpeg_decode(CPU, shifted_pillow(levels, ("CMYK", "progressive")))
    assert check.status == status
    cases = check.details["cases"]
    assert cases["CMYK"]["nvjpeg"].startswith("declined") and cases["progressive"]["nvjpeg"].startswith("declined")
    assert cases["baseline 4:2:0"]["nvjpeg"]["mean_levels"] <= levels
    stored = synthetic.generate(gpu_check.SEED).image.size
    turned = cases["EXIF orientation 6"]
    assert turned["size"] == turned["request_path"]["size"] == [stored[1], stored[0]]
    assert check.summary.startswith(f"5 of 7 kinds decoded by nvJPEG, {5 if status == 'passed' else 0} of them within")
    assert check.summary.endswith("declined (Pillow took them): progressive, CMYK")


@pytest.mark.unit
def test_the_loader_trace_sees_what_import_torch_loads():
    check = gpu_check.lazy_libraries()
    assert any(path.endswith("libtorch_cpu.so") for path in check.details["all_loaded"])
    assert any("libcusolver.so" in path for path in check.details["all_loaded"])  # loaded eagerly: not prunable
    assert check.details["unused"] == list(gpu_check.LAZY_LIBRARIES)  # no CUDA work here: none loaded


@pytest.mark.unit
def test_unmatched_names_moved_missing_and_extra_detections_but_not_a_reordered_tie_or_a_split_pair():
    class Heads:
        detections_per_img, score_thresh = 100, 0.05

    model = type("Model", (), {"roi_heads": Heads})()
    expected = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "scores": torch.tensor([0.9, 0.9]),
                "labels": torch.tensor([1, 2])}
    reordered = {k: v.flip(0) for k, v in expected.items()}
    assert unmatched(reordered, expected, model) == []
    moved = {**expected, "boxes": expected["boxes"] + torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0]])}
    assert unmatched(moved, expected, model) == ["2 0.9000 [20.0, 20.0, 40.0, 40.0]",
                                                 "unexpected 2 0.9000 [21.0, 20.0, 40.0, 40.0]"]
    fewer = {k: v[:1] for k, v in expected.items()}
    assert unmatched(fewer, expected, model) == ["2 0.9000 [20.0, 20.0, 40.0, 40.0]"]
    assert unmatched(expected, fewer, model) == ["unexpected 2 0.9000 [20.0, 20.0, 40.0, 40.0]"]
    # Scores of one pair on either side of 0.05 + 1e-3, where the comparison starts: still a pair.
    split = {k: v[:1] for k, v in expected.items()}
    assert unmatched({**split, "scores": torch.tensor([0.05105])}, {**split, "scores": torch.tensor([0.05095])},
                     model) == []
