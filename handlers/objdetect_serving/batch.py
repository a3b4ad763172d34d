"""Detection over many images as a job: the service's request path in-process, without TorchServe or HTTP.

A job lives under one output location (a folder or an `s3://bucket/prefix`):

    job.json                      what was planned: input, shards, images, part size, model
    shards/00003.txt              shard 3's images, one source per line (a path or s3:// URI)
    results/00003/part-00000.jsonl  its answers, PART_SIZE images a part, in the shard's order

`plan` lists the input once and writes the shards. Each child (an AWS Batch array child, by
AWS_BATCH_JOB_ARRAY_INDEX, or a local process) runs one shard: it answers PART_SIZE images at a
time and writes each part whole, once, under a name fixed by its place in the shard. A child killed
mid-shard and started again finds the parts already written and skips them, so every image ends up
in exactly one line. An image that cannot be read or answered is a line with its error, as the
client writes it (`objdetect_client.result`), never a failed job.

Images are batched as the service batches them (the archive's batchSize) and the next batch is read
and decoded while the current one is in its forward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

from .release import ReleaseError, fetch, parse_s3_uri, s3_client

PART_SIZE = 100
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # what the API decodes
ARRAY_INDEX_ENV = "AWS_BATCH_JOB_ARRAY_INDEX"


class JobError(RuntimeError):
    """A job that cannot run at all (its input, output or model), said in one line."""


# --- where images come from and results go: a folder or an S3 prefix ---------------------------

class Location:
    """A folder or an s3://bucket/prefix, with the few operations a job needs."""

    def __init__(self, uri: str, s3=None):
        self.uri = uri.rstrip("/")
        self.is_s3 = uri.startswith("s3://")
        self._s3 = s3
        if self.is_s3:
            self.bucket, self.prefix = parse_s3_uri(self.uri + "/")
        else:
            self.root = Path(uri)

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = s3_client()
        return self._s3

    def child(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def read(self, name: str) -> bytes:
        return read_source(self.child(name), self.s3 if self.is_s3 else None)

    def write(self, name: str, data: bytes) -> None:
        """Whole or not at all: S3 puts are atomic; a file is written beside and renamed."""
        if self.is_s3:
            self.s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)
            return
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)

    def exists(self, name: str) -> bool:
        if self.is_s3:
            found = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + name, MaxKeys=1)
            return any(item["Key"] == self.prefix + name for item in found.get("Contents", []))
        return (self.root / name).is_file()

    def modified(self, name: str) -> float:
        """When `name` was written, in seconds since the epoch."""
        if self.is_s3:
            return self.s3.head_object(Bucket=self.bucket, Key=self.prefix + name)["LastModified"].timestamp()
        return (self.root / name).stat().st_mtime

    def names(self, under: str = "") -> list[str]:
        """Every object or file below `under`, relative to this location, sorted."""
        if self.is_s3:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + under)
            return sorted(item["Key"][len(self.prefix):] for page in pages for item in page.get("Contents", []))
        base = self.root / under
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


def read_source(source: str, s3=None) -> bytes:
    if source.startswith("s3://"):
        bucket, key = parse_s3_uri(source)
        return (s3 or s3_client()).get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(source).read_bytes()


def list_images(input_uri: str, s3=None) -> list[str]:
    """The images of a folder (recursively) or an S3 prefix, by extension, as sources; or, for a
    `.txt` manifest, the sources it lists (one a line, `#` comments)."""
    if input_uri.endswith(".txt"):
        lines = read_source(input_uri, s3).decode("utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    location = Location(input_uri, s3)
    if not location.is_s3 and not location.root.is_dir():
        raise JobError(f"input {input_uri} is not a folder, an s3:// prefix or a .txt manifest")
    return [location.child(name) for name in location.names() if name.lower().endswith(IMAGE_SUFFIXES)]


# --- planning ------------------------------------------------------------------------------------

def shard_name(index: int) -> str:
    return f"shards/{index:05d}.txt"


def part_name(index: int, part: int) -> str:
    return f"results/{index:05d}/part-{part:05d}.jsonl"


def plan(input_uri: str, output_uri: str, shards: int, model: str = "", part_size: int = PART_SIZE, s3=None) -> dict:
    """Lists the input once and writes each shard's sources, then job.json, under the output.
    Refuses, with nothing run, an input it cannot list or that holds no images, an output it
    cannot write, and an output that already holds a job."""
    try:
        sources = list_images(input_uri, s3)
    except JobError:
        raise
    except Exception as error:  # noqa: BLE001 - botocore's and the file system's, in one line
        raise JobError(f"cannot list the input {input_uri}: {_reason(error)}") from None
    if not sources:
        raise JobError(f"the input {input_uri} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    output = Location(output_uri, s3)
    shards = max(1, min(shards, len(sources)))
    size, extra = divmod(len(sources), shards)
    try:
        if output.exists("job.json"):
            raise JobError(f"the output {output_uri} already holds a job (job.json): run it, or choose another output")
        start = 0
        for index in range(shards):
            end = start + size + (index < extra)
            output.write(shard_name(index), "".join(f"{s}\n" for s in sources[start:end]).encode("utf-8"))
            start = end
        job = {"input": input_uri, "output": output.uri, "shards": shards, "images": len(sources),
               "part_size": part_size, "model": model, "planned_at": time.time()}
        output.write("job.json", json.dumps(job, indent=2).encode("utf-8"))
    except JobError:
        raise
    except Exception as error:  # noqa: BLE001
        raise JobError(f"cannot write to the output {output_uri}: {_reason(error)}") from None
    return job


# --- a child: one shard --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ShardReport:
    index: int
    images: int  # answered by this run (parts skipped are not counted)
    parts_skipped: int
    failures: int
    started_at: float  # when it began answering (the model loaded), and when it ended: epoch seconds
    ended_at: float


def run_shard(detector, output_uri: str, index: int, batch_size: int, s3=None,
              log=lambda line: print(line, file=sys.stderr, flush=True)) -> ShardReport:
    """Answers shard `index` of the job under `output_uri`, part by part, skipping parts written."""
    output = Location(output_uri, s3)
    job = json.loads(output.read("job.json"))
    if not 0 <= index < job["shards"]:
        raise JobError(f"shard {index} does not exist: the job has {job['shards']} (0 to {job['shards'] - 1})")
    sources = [line for line in output.read(shard_name(index)).decode("utf-8").splitlines() if line]
    if s3 is None and any(source.startswith("s3://") for source in sources):
        s3 = output.s3 if output.is_s3 else s3_client()  # one client (thread-safe) for every image
    part_size = job["part_size"]
    started, answered, skipped, failures = time.time(), 0, 0, 0
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="objdetect-fetch") as fetchers:
        for part, first in enumerate(range(0, len(sources), part_size)):
            name = part_name(index, part)
            if output.exists(name):
                skipped += 1
                continue
            lines = list(answer_all(detector, sources[first:first + part_size], batch_size, fetchers, s3))
            output.write(name, "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8"))
            answered += len(lines)
            failures += sum(1 for line in lines if line.get("error"))
            log(f"batch: shard {index} part {part}: {len(lines)} images written to {output.child(name)}")
    report = ShardReport(index, answered, skipped, failures, started, time.time())
    log(f"batch: shard {index} done: {answered} images in {report.ended_at - started:.1f} s, {failures} failed, "
        f"{skipped} parts already written")
    return report


def answer_all(detector, sources: list[str], batch_size: int, fetchers: ThreadPoolExecutor, s3=None) -> Iterator[dict]:
    """Each source's result line, in order. The bytes come from `fetchers` ahead of need (at most a
    part's images are held), and the next batch is read and decoded in a thread while this one is
    answered."""
    from objdetect.messages import Request  # the archive's objdetect, put on sys.path by load_detector

    fetched = [fetchers.submit(read_source, source, s3) for source in sources]
    batches = [list(range(i, min(i + batch_size, len(sources)))) for i in range(0, len(sources), batch_size)]

    def read(batch: list[int]):
        requests, unreadable = [], {}
        for i in batch:
            try:
                requests.append((i, Request({"body": fetched[i].result()}, id=sources[i])))
            except Exception as error:  # noqa: BLE001 - a missing or unreadable image is its own line
                unreadable[i] = {"source": sources[i], "error": "unreadable", "status": None, "request_id": None,
                                 "message": f"cannot read {sources[i]}: {_reason(error)}"}
        return requests, unreadable, detector.read([request for _, request in requests])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="objdetect-decode") as reader:
        upcoming: Future | None = reader.submit(read, batches[0]) if batches else None
        for number in range(len(batches)):
            requests, unreadable, outcomes = upcoming.result()
            upcoming = reader.submit(read, batches[number + 1]) if number + 1 < len(batches) else None
            answers = dict(zip((i for i, _ in requests), detector.answer(outcomes)))
            for i in batches[number]:
                yield unreadable[i] if i in unreadable else result_line(sources[i], answers[i])


def result_line(source: str, response) -> dict:
    """A response as the client's JSON Lines keep it (objdetect_client.result.Result.to_json)."""
    body = json.loads(response.body)
    if response.status == 200:
        return {"source": source, "model": body["model"], "version": body["version"], "width": body["width"],
                "height": body["height"], "detections": body["detections"]}
    return {"source": source, "error": body.get("error"), "message": body.get("message"), "status": response.status,
            "request_id": body.get("request_id")}


def _reason(error: Exception) -> str:
    response = getattr(error, "response", None)  # botocore's ClientError names its code there
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code or f"{type(error).__name__}: {error}"


# --- the model: a release's archive, or a local one, loaded as a TorchServe worker would --------

def load_detector(archive: Path, scratch: Path, threads: int | None = None):
    """Unpacks `archive` and builds its Detector with its own objdetect and settings (environment
    overrides included, as in the service). Returns (detector, batch_size, model name, version)."""
    import yaml

    unpacked = scratch / "model"
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(unpacked)
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
    config = yaml.safe_load((unpacked / manifest.get("configFile", "model-config.yaml")).read_text()) or {}
    sys.path.insert(0, str(unpacked))  # the archive's objdetect, exactly as its workers import it
    import torch
    from objdetect.predict import choose_device
    from objdetect.settings import Settings

    settings = Settings.load(config.get("handler"), os.environ)
    threads = threads or settings.torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    batch_size = int(config.get("batchSize", 1))
    from objdetect.pipeline import Detector

    device = choose_device(0 if torch.cuda.is_available() else None, settings.require_cuda)
    detector = Detector.load(unpacked, settings, device, manifest["modelName"], manifest["modelVersion"],
                             readers=batch_size, cpu_threads=threads)
    if detector.openvino_precision:
        torch.set_num_threads(1)  # as in the worker: torch's spinning threads slow OpenVINO down
    detector.warm_up()
    return detector, batch_size, manifest["modelName"], manifest["modelVersion"]


def release_archive(release_uri: str, sha256: str, scratch: Path, model: str = "") -> Path:
    """The archive a release serves by default for `model` (the release's only model when not named)."""
    release, archives = fetch(release_uri, sha256, scratch / "release")
    names = sorted(release.models)
    name = model or (names[0] if len(names) == 1 else "")
    if name not in release.models:
        raise JobError(f"release {release.release_id} has models {', '.join(names)}: name one with --model")
    return archives[(name, release.models[name].default)]


# --- the child's command line ---------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m objdetect_serving.batch",
        description="Run one shard of a batch job (an AWS Batch array child, or a local process).")
    parser.add_argument("output", help="the job's output folder or s3://bucket/prefix (where plan wrote job.json)")
    parser.add_argument("--index", type=int, default=None,
                        help=f"the shard to run (default: ${ARRAY_INDEX_ENV}, or 0 for a job of one shard)")
    parser.add_argument("--archive", type=Path, help="a model archive (.mar); default: the release")
    parser.add_argument("--release", default=os.environ.get("OBJDETECT_RELEASE"),
                        help="the release's manifest, s3://... (default: $OBJDETECT_RELEASE)")
    parser.add_argument("--release-sha256", default=os.environ.get("OBJDETECT_RELEASE_SHA256"),
                        help="its SHA-256 (default: $OBJDETECT_RELEASE_SHA256)")
    parser.add_argument("--model", default="", help="the release's model to run (default: its only one)")
    parser.add_argument("--scratch", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "objdetect-batch",
                        help="where the archive is downloaded and unpacked")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every core)")
    args = parser.parse_args(argv)
    index = args.index if args.index is not None else int(os.environ.get(ARRAY_INDEX_ENV, "0"))
    try:
        if args.archive:
            archive = args.archive
        elif args.release:
            archive = release_archive(args.release, args.release_sha256 or "", args.scratch, args.model)
        else:
            raise JobError("no model: give --archive, or --release (or OBJDETECT_RELEASE) with its SHA-256")
        detector, batch_size, name, version = load_detector(archive, args.scratch / f"shard-{index}", args.threads)
        print(f"batch: shard {index} of {args.output}: {name} {version} on {detector.device}, "
              f"runtime {detector.runtime}, batches of {batch_size}", file=sys.stderr, flush=True)
        report = run_shard(detector, args.output, index, batch_size)
        print(json.dumps(dataclasses.asdict(report)), flush=True)  # for whoever started it (a local job)
    except (JobError, ReleaseError) as error:
        print(f"batch: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
