"""`python scripts/bench_batch.py`: the batch job beside the online path, on this machine, in one run.

    python scripts/bench_batch.py                     # 200 small and 200 phone images, 3 rounds (~10 min)
    python scripts/bench_batch.py --images 20 --repeats 1 --workloads small    # a smoke run

Both answer the same images with the same archive (the model's seeded weights, as `make bench`
makes them, at the configuration `make bench` found fastest on a CPU under concurrency: 2 workers,
no batching):
- `client`: `objdetect-client detect FOLDER --concurrency 4` against a local TorchServe serving the
  archive; its time is the client's own (`N images in S s`), the server already up and warm;
- `batch`: `scripts/batch.py local FOLDER OUT --processes 2`, two children with one shard each;
  its time runs from the first child's first answer to the last child's end, so model loading is
  excluded as the server's start is.
They take turns, round by round, so that a shared machine's drift touches both alike; the median
of the rounds is reported. Prints a Markdown table; --out keeps the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from objdetect_serving.archive import archive_path, build_mar
from objdetect_serving.paths import MODEL_CONFIG, ROOT
from objdetect_serving.torchserve import Ports, TorchServe

from .bench.load import workload_images
from .bench.machine import machine_info
from .bench.models import write_weights

CLIENT_SUMMARY = re.compile(r"(\d+) images in ([\d.]+) s")


def build_archive(model: str, store: Path) -> Path:
    """The archive both paths run: the model's bench weights, 2 workers, no batching."""
    weights, _ = write_weights(model, store)
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config.update({"minWorkers": 2, "maxWorkers": 2, "batchSize": 1, "maxBatchDelay": 1})
    path = store / "bench-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    build_mar(model, store, "detector", "1.0", weights=weights, config=path)
    return archive_path(store, "detector", "1.0")


def client_rate(folder: Path, endpoint: str) -> float:
    run = subprocess.run([str(Path(sys.executable).with_name("objdetect-client")), "detect", str(folder),
                          "--concurrency", "4", "--endpoint", endpoint, "--out", str(folder.parent / "client.jsonl")],
                         capture_output=True, text=True, timeout=3600)
    (folder.parent / "client.jsonl").unlink(missing_ok=True)
    found = CLIENT_SUMMARY.search(run.stderr)
    if run.returncode != 0 or not found:
        raise RuntimeError(f"objdetect-client failed ({run.returncode}): {run.stderr[-500:]}")
    return int(found[1]) / float(found[2])


def batch_rate(folder: Path, archive: Path, output: Path) -> float:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "batch.py"), "local", str(folder), str(output),
                          "--processes", "2", "--archive", str(archive)], capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"the batch job failed ({run.returncode}): {run.stderr[-500:]}")
    report = json.loads(run.stdout)
    if report["failures"]:
        raise RuntimeError(f"the batch job answered {report['failures']} images with an error")
    return report["answer_images_per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--images", type=int, default=200, help="images per workload (default 200)")
    parser.add_argument("--workloads", nargs="+", choices=["small", "phone"], default=["small", "phone"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each path once a round (default 3)")
    parser.add_argument("--out", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args(argv)

    rows = {}
    with tempfile.TemporaryDirectory(prefix="objdetect-bench-batch-") as workdir:
        workdir = Path(workdir)
        store = workdir / "store"
        store.mkdir()
        archive = build_archive(args.model, store)
        folders = {}
        for workload in args.workloads:
            folders[workload] = workdir / workload / "images"
            folders[workload].mkdir(parents=True)
            for i, payload in enumerate(workload_images(workload, args.images)):
                (folders[workload] / f"{i:04d}.jpg").write_bytes(payload.data)
        with TorchServe(store, {"detector": archive.name}, Ports.free()) as server:
            for workload, folder in folders.items():
                client_rate(folder, server.url())  # a warm-up round for the server, not counted
                rates = {"client": [], "batch": []}
                for round_ in range(args.repeats):
                    rates["client"].append(client_rate(folder, server.url()))
                    rates["batch"].append(batch_rate(folder, archive, workdir / workload / f"job-{round_}"))
                    print(f"bench_batch: {workload} round {round_ + 1}: client {rates['client'][-1]:.2f} img/s, "
                          f"batch {rates['batch'][-1]:.2f} img/s", file=sys.stderr, flush=True)
                rows[workload] = {path: statistics.median(values) for path, values in rates.items()} | {"runs": rates}

    lines = [f"Model {args.model} (seeded weights), {args.images} images a workload, median of {args.repeats} "
             f"rounds; {machine_info()['cpu']}.", "",
             "| workload | client c4 img/s | batch job img/s | batch / client |", "|---|---:|---:|---:|"]
    lines += [f"| {w} | {r['client']:.2f} | {r['batch']:.2f} | {r['batch'] / r['client']:.2f}x |" for w, r in rows.items()]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "images": args.images, "workloads": rows,
                                        "machine": machine_info()}, indent=2))
    return 0
