"""`scripts/batch.py`: detection over a folder or an S3 prefix as a job (objdetect_serving.batch).

    python scripts/batch.py submit INPUT OUTPUT --shards N --queue Q --job-definition D   # on AWS Batch
    python scripts/batch.py local INPUT OUTPUT [--processes N]   # plan, then N local children (make batch)
    python scripts/batch.py status OUTPUT                        # shards done, images/s, failures
    python scripts/batch.py collect OUTPUT --out results.jsonl [--annotations instances.json --coco coco.json]

INPUT is a folder, an s3://bucket/prefix, or a .txt manifest of sources (one a line); OUTPUT a
folder or an s3://bucket/prefix. Each child answers one shard with the request path in-process
(the same pipeline, settings and archive as the service) and writes JSON Lines in the client's
format, so `objdetect-client evaluate` and any reader of the client's output read them too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from objdetect_serving import batch
from objdetect_serving.paths import MODEL_STORE


def run_local(input_uri: str, output_uri: str, processes: int, archive: Path, threads: int | None = None) -> dict:
    """Plans the job and runs its shards in `processes` local children, as an array job's would run.
    Returns what they did: children failed, and the seconds from the first child's first answer to
    the last one's end (model loading excluded, as a server's start is from a client's timing)."""
    job = batch.plan(input_uri, output_uri, processes, model=str(archive))
    threads = threads or max(1, len(os.sched_getaffinity(0)) // job["shards"])
    print(f"batch: {job['images']} images in {job['shards']} shards under {job['output']}", file=sys.stderr)
    children = [subprocess.Popen([sys.executable, "-m", "objdetect_serving.batch", output_uri, "--index", str(index),
                                  "--archive", str(archive), "--threads", str(threads)], stdout=subprocess.PIPE, text=True)
                for index in range(job["shards"])]
    reports = []
    for child in children:
        output, _ = child.communicate()
        if child.returncode == 0:
            reports.append(json.loads(output.splitlines()[-1]))
    answering = max((r["ended_at"] for r in reports), default=0) - min((r["started_at"] for r in reports), default=0)
    return {"children_failed": len(children) - len(reports), "answer_seconds": round(answering, 2)}


def submit(input_uri: str, output_uri: str, shards: int, queue: str, definition: str, name: str = "",
           batch_client=None) -> dict:
    """Plans the job (listing the input once: an unreadable input or unwritable output fails here,
    before anything runs), then submits one array job of `shards` children to AWS Batch, each
    running `server.py batch OUTPUT` and taking its shard by AWS_BATCH_JOB_ARRAY_INDEX."""
    import boto3

    job = batch.plan(input_uri, output_uri, shards)
    request = {"jobName": name or f"objdetect-{int(job['planned_at'])}", "jobQueue": queue, "jobDefinition": definition,
               "containerOverrides": {"command": ["batch", job["output"]]}}
    if job["shards"] > 1:  # AWS Batch arrays have 2 to 10,000 children; one shard is a plain job (index 0)
        request["arrayProperties"] = {"size": job["shards"]}
    try:
        submitted = (batch_client or boto3.client("batch")).submit_job(**request)
    except Exception as error:  # noqa: BLE001 - botocore's, in one line
        raise batch.JobError(f"AWS Batch refused the job: {error}") from None
    job["batch_job_id"] = submitted["jobId"]
    batch.Location(output_uri).write("job.json", json.dumps(job, indent=2).encode("utf-8"))
    return job


def status(output_uri: str, batch_client=None) -> dict:
    """What a job has done so far, from what its children wrote."""
    output = batch.Location(output_uri)
    job = json.loads(output.read("job.json"))
    parts = output.names("results/")
    images = failures = 0
    for name in parts:
        lines = [json.loads(line) for line in output.read(name).decode("utf-8").splitlines() if line]
        images += len(lines)
        failures += sum(1 for line in lines if line.get("error"))
    done = [index for index in range(job["shards"]) if _shard_done(output, job, index, parts)]
    elapsed = max((output.modified(name) for name in parts), default=job["planned_at"]) - job["planned_at"]
    report = {"output": job["output"], "images": job["images"], "images_done": images, "failures": failures,
              "shards": job["shards"], "shards_done": len(done),
              "images_per_s": round(images / elapsed, 2) if elapsed > 0 else None}
    if "batch_job_id" in job:  # submitted to AWS Batch: its view too
        import boto3

        described = (batch_client or boto3.client("batch")).describe_jobs(jobs=[job["batch_job_id"]])["jobs"]
        if described:
            report["batch_job"] = {"id": job["batch_job_id"], "status": described[0]["status"],
                                   "children": described[0].get("arrayProperties", {}).get("statusSummary", {})}
    return report


def _shard_done(output: batch.Location, job: dict, index: int, parts: list[str]) -> bool:
    sources = output.read(batch.shard_name(index)).decode("utf-8").splitlines()
    expected = -(-len([s for s in sources if s]) // job["part_size"])
    return all(batch.part_name(index, part) in parts for part in range(expected))


def collect(output_uri: str, out: Path) -> int:
    """Every shard's lines, in the job's order, into one JSON Lines file. Returns the lines written."""
    output = batch.Location(output_uri)
    count = 0
    with open(out, "w", encoding="utf-8") as file:
        for name in output.names("results/"):
            data = output.read(name).decode("utf-8")
            file.write(data)
            count += data.count("\n")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    local = verbs.add_parser("local", help="plan a job and run its shards in local processes")
    local.add_argument("input", help="a folder, an s3://bucket/prefix, or a .txt manifest of sources")
    local.add_argument("output", help="a folder or s3://bucket/prefix for the job (must not hold one already)")
    local.add_argument("--processes", type=int, default=2, help="local children, one shard each (default 2)")
    local.add_argument("--archive", type=Path, default=MODEL_STORE / "detector-v1.0.mar",
                       help="the model archive (default: make mar's, model_store/detector-v1.0.mar)")
    local.add_argument("--threads", type=int, help="intra-op threads per child (default: the cores shared out)")
    send = verbs.add_parser("submit", help="plan a job and submit it to AWS Batch as an array job")
    send.add_argument("input", help="an s3://bucket/prefix, or a .txt manifest of s3:// sources")
    send.add_argument("output", help="the job's s3://bucket/prefix (terraform's var.batch.output, and a folder of yours)")
    send.add_argument("--shards", type=int, default=8, help="array children, one shard each (default 8; at most 10,000)")
    send.add_argument("--queue", default=os.environ.get("OBJDETECT_BATCH_QUEUE"),
                      help="the job queue (terraform output batch_job_queue; default $OBJDETECT_BATCH_QUEUE)")
    send.add_argument("--job-definition", default=os.environ.get("OBJDETECT_BATCH_JOB_DEFINITION"),
                      help="the job definition (terraform output batch_job_definition; default $OBJDETECT_BATCH_JOB_DEFINITION)")
    send.add_argument("--name", default="", help="the job's name (default objdetect-<time>)")
    state = verbs.add_parser("status", help="shards done, images answered, failures, images/s")
    state.add_argument("output")
    gather = verbs.add_parser("collect", help="one JSON Lines file of every shard's results (and COCO results)")
    gather.add_argument("output")
    gather.add_argument("--out", type=Path, required=True, help="the JSON Lines file to write")
    gather.add_argument("--annotations", help="a COCO instances file: also write COCO detection results")
    gather.add_argument("--coco", type=Path, help="where the COCO results go (with --annotations)")
    args = parser.parse_args(argv)
    if args.verb == "collect" and bool(args.annotations) != bool(args.coco):
        parser.error("--annotations and --coco go together")
    if args.verb == "submit":
        if not (args.queue and args.job_definition):
            parser.error("submit needs --queue and --job-definition (terraform's batch_job_queue and batch_job_definition)")
        if not 1 <= args.shards <= 10_000 or not args.output.startswith("s3://"):
            parser.error("submit needs 1 to 10,000 --shards and an s3:// output (the children run in AWS)")
    try:
        if args.verb == "local":
            if not args.archive.is_file():
                raise batch.JobError(f"{args.archive} does not exist: run make mar (or give --archive)")
            started = time.perf_counter()
            children = run_local(args.input, args.output, args.processes, args.archive, args.threads)
            report = {**status(args.output), **children, "seconds": round(time.perf_counter() - started, 1)}
            if children["answer_seconds"] > 0:
                report["answer_images_per_s"] = round(report["images_done"] / children["answer_seconds"], 2)
            print(json.dumps(report))
            return 1 if children["children_failed"] else 0
        if args.verb == "submit":
            job = submit(args.input, args.output, args.shards, args.queue, args.job_definition, args.name)
            print(json.dumps(job))
            return 0
        if args.verb == "status":
            print(json.dumps(status(args.output)))
            return 0
        lines = collect(args.output, args.out)
        print(f"batch: {lines} lines in {args.out}", file=sys.stderr)
        if args.annotations:
            from objdetect_client.coco import GroundTruth
            from objdetect_client.results_file import load

            args.coco.write_text(json.dumps(GroundTruth(args.annotations).detections(load(args.out).values())))
            print(f"batch: COCO results in {args.coco}", file=sys.stderr)
        return 0
    except batch.JobError as error:
        print(f"batch: {error}", file=sys.stderr)
        return 2
