"""The batch job (objdetect_serving.batch, scripts/batch.py): the request path in-process over a
folder or S3, shard by shard, with each image answered exactly once, errors as lines, a killed
child's shard finished by its restart, and the same detections as the service."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests

from objdetect import synthetic
from objdetect_client.results_file import load
from objdetect_serving import batch
from objdetect_serving.paths import ROOT

BATCH = [sys.executable, str(ROOT / "scripts" / "batch.py")]
CHILD = [sys.executable, "-m", "objdetect_serving.batch"]


def write_images(folder: Path, count: int, first_seed: int = 500) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        fmt = "JPEG" if i % 2 else "PNG"
        path = folder / f"img{i:03d}.{fmt.lower()}"
        path.write_bytes(synthetic.encode(synthetic.generate(first_seed + i).image, fmt))
        paths.append(path)
    return paths


def lines_of(output: Path) -> list[dict]:
    return [json.loads(line) for part in sorted(output.glob("results/*/part-*.jsonl"))
            for line in part.read_text().splitlines()]


@pytest.mark.unit
def test_plan_splits_the_input_into_shards_in_order(tmp_path):
    write_images(tmp_path / "in" / "a", 3)
    write_images(tmp_path / "in" / "b", 4, first_seed=600)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    job = batch.plan(str(tmp_path / "in"), str(tmp_path / "out"), shards=3)
    shards = [(tmp_path / "out" / batch.shard_name(i)).read_text().split() for i in range(3)]
    assert job["shards"] == 3 and job["images"] == 7
    assert [len(shard) for shard in shards] == [3, 2, 2]
    assert sum(shards, []) == sorted(str(p) for p in (tmp_path / "in").rglob("img*"))


@pytest.mark.unit
def test_plan_refuses_an_output_that_holds_a_job_and_an_input_without_images(tmp_path):
    write_images(tmp_path / "in", 2)
    batch.plan(str(tmp_path / "in"), str(tmp_path / "out"), shards=1)
    with pytest.raises(batch.JobError, match="already holds a job"):
        batch.plan(str(tmp_path / "in"), str(tmp_path / "out"), shards=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(batch.JobError, match="holds no images"):
        batch.plan(str(tmp_path / "empty"), str(tmp_path / "out2"), shards=1)


@pytest.mark.integration
def test_a_local_job_answers_every_image_once_and_each_failure_is_a_line(tmp_path, model_store):
    images = write_images(tmp_path / "in", 10)
    (tmp_path / "in" / "corrupt.jpg").write_bytes(images[1].read_bytes()[:300])
    (tmp_path / "in" / "text.png").write_bytes(b"this is not an image")
    manifest = tmp_path / "manifest.txt"
    missing = tmp_path / "in" / "gone.jpg"
    manifest.write_text("".join(f"{p}\n" for p in sorted((tmp_path / "in").iterdir())) + f"{missing}\n")
    run = subprocess.run([*BATCH, "local", str(manifest), str(tmp_path / "out"), "--processes", "2",
                          "--archive", str(model_store / "detector-v1.0.mar")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["images_done"] == 13 and summary["failures"] == 3 and summary["shards_done"] == 2

    lines = lines_of(tmp_path / "out")
    assert sorted(line["source"] for line in lines) == sorted(manifest.read_text().split())
    errors = {Path(line["source"]).name: line["error"] for line in lines if line.get("error")}
    assert errors == {"corrupt.jpg": "corrupt_image", "text.png": "not_an_image", "gone.jpg": "unreadable"}
    good = [line for line in lines if not line.get("error")]
    assert all(line["model"] == "detector" and line["version"] == "1.0" for line in good)
    assert sum(len(line["detections"]) for line in good) > 0

    collected = tmp_path / "all.jsonl"
    assert subprocess.run([*BATCH, "collect", str(tmp_path / "out"), "--out", str(collected)],
                          timeout=60, cwd=ROOT).returncode == 0
    results = load(collected)  # the client's reader reads the batch job's lines
    assert len(results) == 13 and results[str(missing)].error == "unreadable"

    # With a ground truth, COCO detection results by its image and category ids.
    truth = tmp_path / "instances.json"
    truth.write_text(json.dumps({"images": [{"id": 7, "file_name": images[0].name}],
                                 "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                                                {"id": 3, "name": "triangle"}], "annotations": []}))
    coco = tmp_path / "coco.json"
    assert subprocess.run([*BATCH, "collect", str(tmp_path / "out"), "--out", str(collected), "--annotations",
                           str(truth), "--coco", str(coco)], timeout=60, cwd=ROOT).returncode == 0
    found = json.loads(coco.read_text())
    assert len(found) == len(results[str(images[0])].detections) > 0
    assert {d["image_id"] for d in found} == {7} and all(len(d["bbox"]) == 4 for d in found)


@pytest.mark.integration
def test_a_child_killed_mid_shard_finishes_its_shard_with_each_image_exactly_once(tmp_path, model_store):
    write_images(tmp_path / "in", 48)
    output = tmp_path / "out"
    batch.plan(str(tmp_path / "in"), str(output), shards=1, part_size=4)
    archive = ["--archive", str(model_store / "detector-v1.0.mar"), "--threads", "1"]
    child = subprocess.Popen([*CHILD, str(output), *archive], cwd=ROOT, stderr=subprocess.DEVNULL)
    first = output / batch.part_name(0, 0)
    deadline = time.monotonic() + 120
    while not first.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)  # what a Spot reclaim does to a container, at worst
    child.wait()
    written = {p.name: p.stat().st_mtime_ns for p in output.glob("results/*/part-*.jsonl")}
    assert first.name in written and len(written) < 12, "the child was not killed mid-shard"

    again = subprocess.run([*CHILD, str(output), *archive], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{len(written)} parts already written" in again.stderr
    sources = [line["source"] for line in lines_of(output)]
    assert sorted(sources) == sorted(str(p) for p in (tmp_path / "in").iterdir())  # each exactly once
    assert all(p.stat().st_mtime_ns == written[p.name] for p in output.glob("results/*/part-*.jsonl")
               if p.name in written), "a part the first child wrote was written again"


@pytest.mark.integration
def test_the_batch_job_answers_as_the_service_does(tmp_path, model_store, server):
    """The exact path's archive, in TorchServe and in the batch job: the same detections within the
    exact path's tolerances (boxes 0.5 px, scores 1e-4)."""
    images = write_images(tmp_path / "in", 6, first_seed=900)
    batch.plan(str(tmp_path / "in"), str(tmp_path / "out"), shards=1)
    run = subprocess.run([*CHILD, str(tmp_path / "out"), "--archive", str(model_store / "exact-v1.0.mar")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    offline = {line["source"]: line for line in lines_of(tmp_path / "out")}
    for image in images:
        online = requests.post(f"{server.url()}/predictions/exact", data=image.read_bytes(), timeout=60).json()
        ours = offline[str(image)]
        assert (ours["width"], ours["height"]) == (online["width"], online["height"])
        assert [d["label"] for d in ours["detections"]] == [d["label"] for d in online["detections"]]
        for mine, theirs in zip(ours["detections"], online["detections"]):
            assert abs(mine["score"] - theirs["score"]) <= 1e-4
            assert max(abs(a - b) for a, b in zip(mine["box"], theirs["box"])) <= 0.5


@pytest.mark.integration
def test_a_job_over_s3_reads_the_prefix_and_writes_only_the_output(tmp_path, model_store, aws):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="results")
    for path in write_images(tmp_path / "in", 5):
        s3.put_object(Bucket="photos", Key=f"2026/12/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket="photos", Key="2026/12/readme.md", Body=b"not an image")
    run = subprocess.run([*BATCH, "local", "s3://photos/2026/12/", "s3://results/job-1", "--processes", "2",
                          "--archive", str(model_store / "detector-v1.0.mar")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["images_done"] == 5
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="results")["Contents"]]
    assert "job-1/job.json" in keys and sum(key.startswith("job-1/results/") for key in keys) == 2
    assert [item["Key"] for item in s3.list_objects_v2(Bucket="photos")["Contents"]] == \
        sorted(f"2026/12/{name}" for name in [*(p.name for p in (tmp_path / "in").iterdir()), "readme.md"])

    # A manifest in S3 naming a key that is not there: that image is a line with its error.
    s3.put_object(Bucket="photos", Key="lists/two.txt", Body=b"s3://photos/2026/12/img000.png\ns3://photos/2026/12/gone.jpg\n")
    run = subprocess.run([*BATCH, "local", "s3://photos/lists/two.txt", "s3://results/job-2", "--processes", "1",
                          "--archive", str(model_store / "detector-v1.0.mar")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ)
    assert run.returncode == 0, run.stderr
    part = s3.get_object(Bucket="results", Key=f"job-2/{batch.part_name(0, 0)}")["Body"].read().decode()
    lines = {line["source"]: line for line in map(json.loads, part.splitlines())}
    assert lines["s3://photos/2026/12/img000.png"]["detections"] is not None
    assert lines["s3://photos/2026/12/gone.jpg"]["error"] == "unreadable"
    assert "NoSuchKey" in lines["s3://photos/2026/12/gone.jpg"]["message"]


@pytest.mark.integration
def test_an_unreadable_input_or_unwritable_output_fails_before_anything_runs(tmp_path, aws):
    boto3.client("s3").create_bucket(Bucket="photos")
    boto3.client("s3").put_object(Bucket="photos", Key="a/1.jpg", Body=b"x")
    with pytest.raises(batch.JobError, match="cannot list the input s3://nowhere/a/: NoSuchBucket"):
        batch.plan("s3://nowhere/a/", str(tmp_path / "out"), shards=1)
    with pytest.raises(batch.JobError, match="cannot write to the output s3://missing-bucket/out: NoSuchBucket"):
        batch.plan("s3://photos/a/", "s3://missing-bucket/out", shards=1)


def batch_queue_in_moto(moto_endpoint: str) -> tuple[str, str]:
    """A job queue and job definition in moto's AWS Batch, which records submissions without
    running them (its docker backend off)."""
    requests.post(f"{moto_endpoint}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10)
    ec2, iam, client = boto3.client("ec2"), boto3.client("iam"), boto3.client("batch")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="batch", Description="batch", VpcId=vpc)["GroupId"]
    role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="batch")["InstanceProfile"]["Arn"]
    environment = client.create_compute_environment(
        computeEnvironmentName="gpu", type="MANAGED", serviceRole=role,
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 16, "instanceTypes": ["g4dn.xlarge"],
                          "subnets": [subnet], "securityGroupIds": [group], "instanceRole": profile})
    queue = client.create_job_queue(jobQueueName="objdetect-detect", state="ENABLED", priority=1, computeEnvironmentOrder=[
        {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}])["jobQueueName"]
    definition = client.register_job_definition(jobDefinitionName="objdetect-detect", type="container", containerProperties={
        "image": "objdetect:cuda", "command": ["batch"], "resourceRequirements": [
            {"type": "GPU", "value": "1"}, {"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "14336"}]}
    )["jobDefinitionName"]
    return queue, definition


@pytest.mark.integration
def test_submit_plans_the_shards_and_submits_one_array_job_whose_children_take_them(tmp_path, aws):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="results")
    for i in range(7):
        s3.put_object(Bucket="photos", Key=f"day/{i}.jpg", Body=b"an image")
    queue, definition = batch_queue_in_moto(aws)
    run = subprocess.run([*BATCH, "submit", "s3://photos/day/", "s3://results/job-7", "--shards", "3",
                          "--queue", queue, "--job-definition", definition], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=os.environ)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["shards"] == 3 and job["images"] == 7
    described = boto3.client("batch").describe_jobs(jobs=[job["batch_job_id"]])["jobs"][0]
    assert described["arrayProperties"]["size"] == 3
    assert described["container"]["command"] == ["batch", "s3://results/job-7"]
    shards = [s3.get_object(Bucket="results", Key=f"job-7/{batch.shard_name(i)}")["Body"].read().decode().split()
              for i in range(3)]
    assert sorted(sum(shards, [])) == [f"s3://photos/day/{i}.jpg" for i in range(7)]
    state = json.loads(subprocess.run([*BATCH, "status", "s3://results/job-7"], capture_output=True, text=True,
                                      timeout=60, cwd=ROOT, env=os.environ).stdout)
    assert state["batch_job"]["id"] == job["batch_job_id"] and state["images_done"] == 0


@pytest.mark.integration
def test_submit_refuses_an_unreadable_input_before_anything_is_submitted(tmp_path, aws):
    boto3.client("s3").create_bucket(Bucket="results")
    queue, definition = batch_queue_in_moto(aws)
    run = subprocess.run([*BATCH, "submit", "s3://no-such-photos/day/", "s3://results/job-8", "--shards", "2",
                          "--queue", queue, "--job-definition", definition], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=os.environ)
    assert run.returncode == 2 and "cannot list the input s3://no-such-photos/day/: NoSuchBucket" in run.stderr
    assert boto3.client("batch").list_jobs(jobQueue=queue)["jobSummaryList"] == []


@pytest.mark.integration
def test_an_array_child_started_as_the_image_starts_it_takes_the_shard_of_its_array_index(tmp_path, model_store):
    """The job definition's command: the image's ENTRYPOINT (server.py) with `batch` first, and the
    shard from AWS_BATCH_JOB_ARRAY_INDEX, as AWS Batch sets it in each child."""
    write_images(tmp_path / "in", 4)
    batch.plan(str(tmp_path / "in"), str(tmp_path / "out"), shards=2)
    child = subprocess.run([sys.executable, str(ROOT / "scripts" / "server.py"), "batch", str(tmp_path / "out"),
                            "--archive", str(model_store / "detector-v1.0.mar")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**os.environ, batch.ARRAY_INDEX_ENV: "1"})
    assert child.returncode == 0, child.stderr
    assert [p.parent.name for p in (tmp_path / "out").glob("results/*/part-*.jsonl")] == ["00001"]
    assert json.loads(child.stdout)["index"] == 1
