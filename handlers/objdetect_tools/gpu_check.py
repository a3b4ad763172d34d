"""`make gpu-check`: the GPU path, checked and timed in-process, in one command (scripts/gpu_check.py).

    python scripts/gpu_check.py [--out DIR] [--quick] [--require-cuda]

Written for a borrowed GPU machine (docs/gpu.md) that has torch but no TorchServe, no Java and
no network, and 15 minutes, so this runs the request path itself
(`objdetect.pipeline.Detector`, bytes in, our JSON out) and nothing around it. It writes
gpu-check.json and gpu-check.md to DIR (default reports/gpu-check-<timestamp>). On a machine
without CUDA it runs the checks that need no GPU and reports the others as skipped, saying why;
with --require-cuda (the GPU machine's command) no usable CUDA is an error, before any check runs.
Exit status 1 when a check fails, 2 when --require-cuda finds no usable CUDA.

    exact_path          the exact path on CUDA equals the CPU's, on the same weights (the embedded
                        model, and mobilenet 320 with seeded random weights)
    speed_switches_map  every speed switch on: the embedded model's mAP@0.5 within 0.01 of the exact path
    jpeg_decode         nvJPEG against Pillow on the same JPEGs; what nvJPEG declines, Pillow decodes
    timings             fasterrcnn_resnet50_fpn_v2 (800 px) and mobilenet 320: eager fp32 batch 1 against
                        ours (fp16, channels_last, folding, nvJPEG) in batches of 1, 4 and 8 mixed sizes
    lazy_libraries      which CUDA libraries the image still carries were loaded while all that ran
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import itertools
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from objdetect import registry, synthetic
from objdetect.decode import DecodedImage, decode_image, decode_jpeg_on_gpu
from objdetect.pipeline import Detector, Request
from objdetect.settings import EXACT_PATH, Settings
from objdetect_serving.paths import MODEL_STORE, ROOT
from objdetect_tools.equivalence import calibrated_architecture, unmatched
from objdetect_tools.training import map_at_50
from objdetect_tools.workloads import photo

MOBILENET, RESNET = "fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn_v2"
# The exact path's tolerances, CUDA against CPU: the OpenVINO fp32 test's (float rounding only).
BOX_PX, SCORE = 0.5, 1e-3
MAP_MARGIN = 0.01
# Mean absolute difference, in 0-255 levels, nvJPEG may have from Pillow: both are IDCTs of the same
# coefficients, but libjpeg's "fancy" chroma upsampling and nvJPEG's differ at colour edges.
DECODE_MEAN_LEVELS = 2.0
# Seeds never drawn by training (0 up), its evaluation (1e9 up) or the accuracy tests (2e9 up).
SEED = 4_000_000_000
# Libraries the cuda image still carries that load lazily, only for operations detection may not
# use (docs/image.md): each one not loaded here is a candidate to prune from the image. (cuSOLVER
# itself is not one: `import torch` loads it, CPU or not; tests/test_gpu_check.py.)
LAZY_LIBRARIES = ("libcudnn_adv", "libcudnn_ext", "libcudnn_engines_tensor_ir", "libtorch_cuda_linalg")
# Mixed sizes, as clients send them (phone photos both ways up, screenshots, thumbnails).
SIZES = [(640, 480), (4032, 3024), (1280, 960), (3024, 4032), (1920, 1080), (800, 600), (480, 640), (1024, 768)]


@dataclasses.dataclass
class Check:
    status: str  # "passed", "failed" or "skipped"
    summary: str
    details: dict = dataclasses.field(default_factory=dict)


def skipped(why: str) -> Check:
    return Check("skipped", why)


def verdict(ok: bool, summary: str, **details) -> Check:
    return Check("passed" if ok else "failed", summary, details)


# --- the request path, in-process ------------------------------------------------------------

def detector(model: torch.nn.Module, labels: list[str], settings: Settings, device: torch.device) -> Detector:
    """A Detector of its own copy of `model` (moving a model to a device is in place), warmed up,
    as a worker is (cuDNN autotunes each new shape, as the handler sets it to)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    found = Detector(copy.deepcopy(model), labels, settings, device, readers=8)
    found.warm_up()
    return found


def detect(found: Detector, jpegs: list[bytes], threshold: float = 0.0) -> list[dict[str, torch.Tensor]]:
    """One batch of requests through the request path; each answer as torchvision's output dict."""
    requests = [Request({"data": data, "threshold": str(threshold).encode()}) for data in jpegs]
    answers = []
    for response in found(requests):
        if response.status != 200:
            raise RuntimeError(f"the request path answered {response.status}: {response.body[:200]!r}")
        detections = json.loads(response.body)["detections"]
        answers.append({"boxes": torch.tensor([d["box"] for d in detections]).reshape(-1, 4),
                        "scores": torch.tensor([d["score"] for d in detections]),
                        "labels": torch.tensor([d["class_id"] for d in detections], dtype=torch.int64)})
    return answers


def embedded_model() -> tuple[torch.nn.Module, list[str]]:
    arch = registry.architecture(registry.EMBEDDED)
    labels = list(arch.labels)
    weights = registry.load_state_dict(MODEL_STORE / arch.embedded_weights)
    return registry.build_model(arch.name, labels, weights), labels


def random_model(name: str) -> tuple[torch.nn.Module, list[str]]:
    return calibrated_architecture(name), list(registry.architecture(name).labels)


def jpeg_photos(count: int, first_seed: int = SEED) -> list[tuple[tuple[int, int], bytes]]:
    return [(size, photo(*size, first_seed + i).data) for i, size in zip(range(count), itertools.cycle(SIZES))]


@contextlib.contextmanager
def cudnn_tf32(enabled: bool):
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


# --- the checks --------------------------------------------------------------------------------

def exact_path(device: torch.device, images: int, reference: torch.device = torch.device("cpu")) -> Check:
    """The exact path on `device` against `reference`, image by image, with cuDNN's TF32 off (so
    float32 means float32) and, for the record, on (cuDNN's default, which serving runs with)."""
    exact = dataclasses.replace(Settings.load({}, {}), **EXACT_PATH)
    photos = jpeg_photos(images)
    models, failures, compared, tf32_differs = {}, 0, 0, 0
    for name, (model, labels) in (("shapes (embedded)", embedded_model()), (MOBILENET, random_model(MOBILENET))):
        expected_path, tested_path = detector(model, labels, exact, reference), detector(model, labels, exact, device)
        problems, detections = {}, 0
        for size, data in photos:
            expected = detect(expected_path, [data])[0]
            detections += len(expected["scores"])
            with cudnn_tf32(False):
                if missing := unmatched(detect(tested_path, [data])[0], expected, model, BOX_PX, SCORE):
                    problems[f"{size[0]}x{size[1]}"] = missing[:3]
            with cudnn_tf32(True):
                tf32_differs += bool(unmatched(detect(tested_path, [data])[0], expected, model, BOX_PX, SCORE))
        models[name] = {"images": len(photos), "detections": detections, "problems": problems}
        failures += len(problems)
        compared += detections
    return verdict(failures == 0 and compared > 0,
                   f"{compared} detections over {len(photos)} images x 2 models; {failures} images differ beyond "
                   f"{BOX_PX} px / {SCORE} score (TF32 off); with cuDNN's TF32 on, {tf32_differs} of "
                   f"{2 * len(photos)} images do",
                   tolerances={"box_px": BOX_PX, "score": SCORE}, models=models, tf32_images_differing=tf32_differs)


def speed_switches_map(device: torch.device, images: int) -> Check:
    """The embedded model's mAP@0.5 through the request path with every switch on (fp16, nvJPEG,
    channels_last, folding on a GPU; OpenVINO too on a CPU) against the exact path, in batches of
    4 of mixed sizes as a busy worker sees them."""
    model, labels = embedded_model()
    samples = [synthetic.generate(SEED + i) for i in range(images)]
    jpegs = [synthetic.encode(sample.image, "JPEG", quality=95) for sample in samples]
    defaults = Settings.load({}, {})
    scores = {}
    for path, settings in (("all switches on", defaults), ("exact", dataclasses.replace(defaults, **EXACT_PATH))):
        found = detector(model, labels, settings, device)
        answers = [answer for i in range(0, len(jpegs), 4) for answer in detect(found, jpegs[i:i + 4], 0.01)]
        scores[path] = {"map_at_50": round(map_at_50(answers, samples), 4), "runtime": found.runtime}
    gap = abs(scores["all switches on"]["map_at_50"] - scores["exact"]["map_at_50"])
    fast, exact = scores["all switches on"], scores["exact"]
    return verdict(gap <= MAP_MARGIN, f"mAP@0.5 {fast['map_at_50']:.3f} with every switch on ({fast['runtime']}), "
                   f"{exact['map_at_50']:.3f} exact, on {device.type}: gap {gap:.4f} (at most {MAP_MARGIN})",
                   images=images, paths=scores)


def jpeg_cases() -> dict[str, bytes]:
    """JPEGs as clients send them, and the kinds nvJPEG may decline."""
    image = synthetic.generate(SEED).image
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: turn 90 degrees clockwise to view
    image.save(rotated, "JPEG", quality=90, exif=exif.tobytes())
    return {
        "baseline 4:2:0": photo(640, 480, SEED).data,
        "phone photo 4032x3024": photo(4032, 3024, SEED + 1).data,
        "4:4:4": synthetic.encode(image, "JPEG", quality=90, subsampling=0),
        "grayscale": synthetic.encode(image.convert("L"), "JPEG", quality=90),
        "progressive": synthetic.encode(image, "JPEG", quality=90, progressive=True),
        "CMYK": synthetic.encode(image.convert("CMYK"), "JPEG", quality=90),
        "EXIF orientation 6": rotated.getvalue(),
    }


def jpeg_decode(device: torch.device,
                gpu_decode: Callable[[bytes, int, torch.device], DecodedImage] = decode_jpeg_on_gpu) -> Check:
    """Each case decoded by nvJPEG (`gpu_decode`) and by Pillow: the same upright size, pixels within
    DECODE_MEAN_LEVELS; and the request path's decode step answers every case, by nvJPEG or Pillow."""
    model, labels = embedded_model()
    found = detector(model, labels, Settings.load({}, {}), device)
    max_pixels, cases, ok = Settings.load({}, {}).max_pixels, {}, True
    for name, data in jpeg_cases().items():
        reference = decode_image(data, max_pixels)
        case = {"size": [reference.width, reference.height]}
        try:
            decoded = gpu_decode(data, max_pixels, device)
        except Exception as error:  # noqa: BLE001 - recorded: nvJPEG declining is what this looks for
            case["nvjpeg"] = f"declined: {type(error).__name__}: {str(error)[:120]}"
        else:
            difference = (decoded.pixels.cpu().int() - reference.pixels.int()).abs()
            same_size = decoded.pixels.shape == reference.pixels.shape
            case["nvjpeg"] = {"same_size": same_size,
                              "mean_levels": round(difference.float().mean().item(), 3) if same_size else None,
                              "max_levels": int(difference.max()) if same_size else None}
            case["nvjpeg"]["within"] = same_size and case["nvjpeg"]["mean_levels"] <= DECODE_MEAN_LEVELS
            ok &= case["nvjpeg"]["within"]
        served = found._decode(data)  # the decode step itself: nvJPEG, or Pillow for what it declines
        case["request_path"] = {"size": [served.width, served.height], "on": served.pixels.device.type}
        ok &= (served.width, served.height) == (reference.width, reference.height)
        cases[name] = case
    declined = [name for name, case in cases.items() if isinstance(case["nvjpeg"], str)]
    within = sum(not isinstance(case["nvjpeg"], str) and case["nvjpeg"]["within"] for case in cases.values())
    return verdict(ok, f"{len(cases) - len(declined)} of {len(cases)} kinds decoded by nvJPEG, {within} of them within "
                   f"{DECODE_MEAN_LEVELS} mean levels of Pillow; declined (Pillow took them): "
                   f"{', '.join(declined) or 'none'}", cases=cases)


def _latencies(call: Callable[[], object], seconds: float, at_least: int = 3) -> list[float]:
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < at_least or time.perf_counter() < deadline:
        clock = time.perf_counter()
        call()
        times.append((time.perf_counter() - clock) * 1000)
    return times


def _cell(times_ms: list[float], images_per_call: int) -> dict:
    ordered = sorted(times_ms)
    return {"images_per_s": round(images_per_call * len(times_ms) * 1000 / sum(times_ms), 2),
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2), "calls": len(times_ms)}


def timings(device: torch.device, model_names: list[str], batches: list[int], seconds: float) -> Check:
    """Images per second and p50/p99 per call, from JPEG bytes to detections: the plain way (Pillow,
    `model([image])` in fp32, one at a time) against ours at each batch size, on mixed sizes."""
    photos = [data for _, data in jpeg_photos(max(batches) * 2, SEED + 100)]
    results = {}
    for name in model_names:
        results[name] = _time_model(name, device, photos, batches, seconds)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the last model's cached blocks are not the next one's to use
    best = {name: max(r["cells"].values(), key=lambda c: c["images_per_s"])["vs_eager"] for name, r in results.items()}
    return verdict(all(r["cells"] for r in results.values()),
                   "best of ours over eager fp32: " + ", ".join(f"{name} {ratio}x" for name, ratio in best.items()),
                   device=str(device), seconds_per_cell=seconds, models=results)


def _time_model(name: str, device: torch.device, photos: list[bytes], batches: list[int], seconds: float) -> dict:
    model, labels = random_model(name)
    eager = copy.deepcopy(model).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    feed = itertools.cycle(photos)

    def plain():
        image = torch.from_numpy(np.array(Image.open(io.BytesIO(next(feed))).convert("RGB")))
        with torch.inference_mode():
            output = eager([image.permute(2, 0, 1).to(device).float().div(255)])[0]
        sync()
        return {k: v.cpu() for k, v in output.items()}

    for _ in range(3):
        plain()  # CUDA's lazy loading and cuDNN's first choices are not what is measured
    cells = {"eager fp32, batch 1": _cell(_latencies(plain, seconds), 1)}
    ours = detector(model, labels, Settings.load({}, {}), device)
    for batch in batches:
        def serve(batch=batch):
            return detect(ours, [next(feed) for _ in range(batch)], 0.5)

        for _ in range(2):
            serve()
        cells[f"ours, batch {batch}"] = _cell(_latencies(serve, seconds), batch)
    for cell in cells.values():
        cell["vs_eager"] = round(cell["images_per_s"] / cells["eager fp32, batch 1"]["images_per_s"], 2)
    return {"runtime": ours.runtime, "cells": cells}


def loaded_libraries() -> list[str]:
    """The shared libraries this process has mapped: what the dynamic loader actually loaded."""
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if ".so" in line and "/" in line})


def lazy_libraries() -> Check:
    """Run last: which LAZY_LIBRARIES the checks above, all of the CUDA path, made the loader load."""
    loaded = loaded_libraries()
    found = {name: [path for path in loaded if Path(path).name.startswith(name)] for name in LAZY_LIBRARIES}
    unused = [name for name, paths in found.items() if not paths]
    return verdict(True, f"not loaded while serving (candidates to prune): {', '.join(unused) or 'none'}; "
                   f"loaded: {', '.join(n for n in LAZY_LIBRARIES if n not in unused) or 'none'}",
                   loaded={name: paths for name, paths in found.items() if paths}, unused=unused,
                   all_loaded=[path for path in loaded if "nvidia" in path or "torch/lib" in path])


# --- the report --------------------------------------------------------------------------------

def machine(device: torch.device) -> dict:
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cpu_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version()}
    return info


def markdown(report: dict) -> str:
    on = ", ".join(f"{key} {value}" for key, value in report["machine"].items())
    lines = [f"# GPU check, {report['started']}", "", f"`{report['command']}` ({on}): {report['wall_s']} s.", "",
             "| check | status | result |", "|---|---|---|"]
    lines += [f"| {name} | {check['status']} | {check['summary']} |" for name, check in report["checks"].items()]
    timed = report["checks"].get("timings", {}).get("details", {}).get("models", {})
    for name, result in timed.items():
        lines += ["", f"## {name} ({result['runtime']})", "",
                  "| path | images/s | p50 ms / call | p99 ms / call | vs eager |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {cell} | {c['images_per_s']} | {c['p50_ms']} | {c['p99_ms']} | {c['vs_eager']}x |"
                  for cell, c in result["cells"].items()]
    return "\n".join(lines) + "\n"


# What a check that needs CUDA compares or reads, for the report when there is none.
NEEDS_CUDA = {"exact_path": "the CPU exact path has nothing to be compared with",
              "jpeg_decode": "nvJPEG is CUDA's", "lazy_libraries": "CUDA's libraries load only for CUDA work"}


def run(device: torch.device, quick: bool) -> dict:
    """Every check in order (lazy_libraries last: it reads what the others loaded)."""
    steps = {
        "exact_path": lambda: exact_path(device, 8 if quick else 24),
        "speed_switches_map": lambda: speed_switches_map(device, 100),  # fewer: mAP too coarse for 0.01
        "jpeg_decode": lambda: jpeg_decode(device),
        "timings": lambda: timings(device, [MOBILENET] if quick else [RESNET, MOBILENET],
                                   [1, 4] if quick else [1, 4, 8], 1.0 if quick else 8.0),
        "lazy_libraries": lazy_libraries,
    }
    checks = {}
    for name, step in steps.items():
        clock = time.perf_counter()
        try:
            check = skipped(f"no CUDA device: {NEEDS_CUDA[name]}") if name in NEEDS_CUDA and device.type != "cuda" \
                else step()
        except Exception as error:  # noqa: BLE001 - one broken check is a finding; the others still run
            check = Check("failed", f"raised {type(error).__name__}: {error}")
        check.details["seconds"] = round(time.perf_counter() - clock, 1)
        checks[name] = dataclasses.asdict(check)
        print(f"gpu-check: {name}: {check.status}: {check.summary}", flush=True)
    return checks


def cuda_problem() -> str | None:
    """Why CUDA cannot run work here, or None when a tensor can be made and computed on it."""
    if not torch.cuda.is_available():
        return (f"torch.cuda.is_available() is False (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda or 'none'}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    try:
        (torch.ones(1, device="cuda") + 1).item()
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        return f"CUDA is reported available but failed: {type(error).__name__}: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="report folder (default reports/gpu-check-<timestamp>)")
    parser.add_argument("--quick", action="store_true", help="fewer images, mobilenet only, 1 s per timing (tests)")
    parser.add_argument("--require-cuda", action="store_true",
                        help="no usable CUDA is an error (exit 2), not a run with the CUDA checks skipped")
    args = parser.parse_args(argv)
    if args.require_cuda and (problem := cuda_problem()):
        print(f"gpu-check: --require-cuda, but there is no usable CUDA: {problem}", file=sys.stderr, flush=True)
        return 2
    started = datetime.now(timezone.utc)
    out = args.out or ROOT / "reports" / f"gpu-check-{started:%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = time.perf_counter()
    checks = run(device, args.quick)
    command = " ".join(["python scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"started": f"{started:%Y-%m-%d %H:%M} UTC", "command": command,
              "machine": machine(device), "quick": args.quick, "wall_s": round(time.perf_counter() - clock, 1),
              "checks": checks}
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu-check.md").write_text(markdown(report))
    print(f"gpu-check: report in {out}")
    return int(any(check["status"] == "failed" for check in checks.values()))
