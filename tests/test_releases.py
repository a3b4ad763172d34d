"""scripts/models.py's publish, release, status and rollback (objdetect_tools.releases) against a real
moto server on 127.0.0.1 (the moto_endpoint and aws fixtures).

moto serves S3 (the model store) and ECS (the cluster, task definitions and service as terraform
leaves them): every S3 and ECS call and boto3's services_stable waiter are real. moto keeps each
service's running count at MOTO_ECS_SERVICE_RUNNING (1), so a service that desires 2 never becomes
stable, and it starts no tasks for a service: a test that needs a service's task runs one in the
service's group. Archives are built for real; only the COCO weights' download is replaced (no
network here) by randomly initialised weights of the same architecture.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request

import boto3
import pytest
import torch
from torchvision.models import detection

from objdetect import registry
from objdetect_serving import archive
from objdetect_serving.paths import ROOT
from objdetect_serving.release import RELEASE_ENV, RELEASE_SHA256_ENV, Release, fetch
from objdetect_tools import deploy, releases

pytestmark = pytest.mark.integration

REGION = "us-east-1"
NAME = "objdetect"
BUCKET = "objdetect-models"
PREFIX = "store"
STORE = f"s3://{BUCKET}/{PREFIX}"
BOOKKEEPING = {"taskDefinitionArn", "revision", "registeredAt", "registeredBy", "status"}


def models(*args: str) -> int:
    return releases.main(list(args))


def service_args(*extra: str) -> list[str]:
    return ["--cluster", NAME, "--service", NAME, "--timeout", "2", "--poll", "1", *extra]


@pytest.fixture()
def store(aws):
    """The model store's bucket (terraform/models.tf); returns the S3 client."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    return s3


def objects(s3, under: str = "") -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{under}").get("Contents", [])
    return {item["Key"]: s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}


@pytest.fixture()
def service(aws, make_repository, put_image):
    """What terraform leaves: the cluster, revision 1 of the task definition (one environment
    variable of its own, no release: the image's models) and the service on it. Returns a
    function to create the service with a desired count, which returns its network configuration."""
    ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
    make_repository()
    put_image("1")  # the image every revision here runs (rollback checks it is still in ECR)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto names a task's ENI only then
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="task", Description="task", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName=NAME)
    ecs.register_task_definition(
        family=NAME, networkMode="awsvpc", requiresCompatibilities=["EC2"], cpu="3584", memory="14336",
        executionRoleArn="arn:aws:iam::123456789012:role/objdetect-execution",
        taskRoleArn="arn:aws:iam::123456789012:role/objdetect-task",
        containerDefinitions=[{
            "name": "objdetect", "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/objdetect:1",
            "essential": True, "cpu": 3584, "memory": 14336, "resourceRequirements": [{"type": "GPU", "value": "1"}],
            "portMappings": [{"containerPort": 8080, "hostPort": 8080, "protocol": "tcp"}],
            "environment": [{"name": "OBJDETECT_MAX_PIXELS", "value": "60000000"}],
            "secrets": [{"name": "OBJDETECT_API_KEYS",
                         "valueFrom": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:objdetect/api-keys"}],
            "healthCheck": {"command": ["CMD", "python", "/opt/objdetect/scripts/server.py", "--check", "detector"],
                            "interval": 15, "timeout": 5, "retries": 3, "startPeriod": 120},
            "stopTimeout": 30}],
        tags=[{"key": "Project", "value": NAME}])

    network = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}}

    def create(desired: int = 1) -> dict:
        ecs.create_service(
            cluster=NAME, serviceName=NAME, taskDefinition=f"{NAME}:1", desiredCount=desired, launchType="EC2",
            networkConfiguration=network,
            deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True},
                                     "maximumPercent": 200, "minimumHealthyPercent": 100})
        return network

    return create


def described(revision: int) -> dict:
    return boto3.client("ecs").describe_task_definition(taskDefinition=f"{NAME}:{revision}", include=["TAGS"])


def environment(revision: int) -> dict[str, str]:
    (container,) = described(revision)["taskDefinition"]["containerDefinitions"]
    return {e["name"]: e["value"] for e in container.get("environment", [])}


def service_revision() -> str:
    return boto3.client("ecs").describe_services(cluster=NAME, services=[NAME])["services"][0]["taskDefinition"]


def revisions() -> list[str]:
    return [deploy.short(arn) for arn in
            boto3.client("ecs").list_task_definitions(familyPrefix=NAME)["taskDefinitionArns"]]


def publish_shapes(version: str = "1.0", *extra: str) -> int:
    """The embedded model, as publish builds it by default (without OpenVINO parts: the fleet runs on GPUs)."""
    return models("publish", "--store", STORE, "--model", "shapes", "--version", version, *extra)


@pytest.fixture()
def tasks_keep_running(aws):
    """moto moves a task one step towards STOPPED each time it is described, unless told otherwise."""
    def state_manager(action: str, body: dict) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"{aws}/moto-api/state-manager/{action}", data=json.dumps(body).encode(), method="POST"), timeout=10).close()

    state_manager("set-transition", {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**6}})
    yield
    state_manager("unset-transition", {"model_name": "ecs::task"})


def run_service_task(revision: int, network: dict) -> str:
    """A task of the service on `revision`, as ECS would start it (moto starts none for a service)."""
    task = boto3.client("ecs").run_task(cluster=NAME, taskDefinition=f"{NAME}:{revision}", launchType="FARGATE",
                                        group=f"service:{NAME}", count=1, networkConfiguration=network)["tasks"][0]
    return task["taskArn"].rsplit("/", 1)[-1]


def test_publish_is_idempotent_on_its_inputs_and_refuses_other_inputs_for_a_version(store, monkeypatch, capsys,
                                                                                    tmp_path):
    assert publish_shapes() == 0
    out = capsys.readouterr().out
    assert "uploaded" in out and "published detector 1.0" in out
    first = objects(store)
    (archive_key,) = [key for key in first if key.startswith(f"{PREFIX}/archives/")]
    (record_key,) = [key for key in first if key.startswith(f"{PREFIX}/versions/")]
    assert record_key == f"{PREFIX}/versions/detector/1.0.json" and len(first) == 2
    record = json.loads(first[record_key])
    assert archive_key == f"{PREFIX}/archives/{record['archive']}.mar"
    assert hashlib.sha256(first[archive_key]).hexdigest() == record["archive"] and record["size"] == len(first[archive_key])
    assert record["architecture"] == "shapes" and record["labels"] == list(registry.architecture("shapes").labels)
    assert record["labels"][0] == registry.BACKGROUND
    # From the repository's model-config.yaml (batchSize 4, maxBatchDelay 5, minWorkers 1).
    assert (record["batch_size"], record["max_batch_delay_ms"], record["workers"]) == (4, 5, 1)
    weights, _ = archive.default_weights(registry.architecture("shapes"))
    assert record["inputs"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["published_at"].endswith("Z") and record["source"].startswith("embedded")

    # Decided before building (archives are not byte-reproducible): a build now would fail.
    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(archive, "build_mar", no_build)
    assert publish_shapes() == 0
    assert "detector 1.0 already published with these inputs" in capsys.readouterr().out
    assert objects(store) == first

    assert publish_shapes("1.0", "--batch-size", "8") == 1
    err = capsys.readouterr().err
    assert "detector 1.0 was published with other inputs (batch_size 4, not 8)" in err
    assert "a version names one archive forever" in err and len(err.strip().splitlines()) == 1
    labels = tmp_path / "labels.txt"
    labels.write_text("circle\nsquare\nhexagon\n")
    assert publish_shapes("1.0", "--labels", str(labels)) == 1
    assert "published with other inputs (labels" in capsys.readouterr().err
    assert objects(store) == first


def test_the_guide_with_no_model_chosen_releases_coco_fasterrcnn_resnet50_fpn_v2(store, service, monkeypatch, capsys,
                                                                                tmp_path):
    """terraform/README.md's publish and release, with no --model. Only the download of the
    published weights is replaced: by randomly initialised weights of the architecture (there is
    no internet here)."""
    service(desired=1)
    weights = tmp_path / "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"
    torch.save(detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91).state_dict(),
               weights)
    asked = []
    monkeypatch.setattr(registry, "published_weights",
                        lambda arch, download=True: asked.append(arch.name) or weights)
    assert models("publish", "--store", STORE, "--version", "1.0") == 0
    assert set(asked) == {"fasterrcnn_resnet50_fpn_v2"}
    stored = objects(store)
    record = json.loads(stored[f"{PREFIX}/versions/detector/1.0.json"])
    coco = detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1
    assert record["architecture"] == "fasterrcnn_resnet50_fpn_v2"
    assert record["labels"] == list(coco.meta["categories"]) and record["labels"][0] == registry.BACKGROUND
    assert len(record["labels"]) == 91 and "person" in record["labels"]
    assert record["source"] == coco.url
    assert record["inputs"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert hashlib.sha256(stored[f"{PREFIX}/archives/{record['archive']}.mar"]).hexdigest() == record["archive"]
    assert "published detector 1.0" in capsys.readouterr().out

    assert models("release", "--store", STORE, *service_args(), "detector=1.0") == deploy.DEPLOYED  # no --allow-shapes
    uri = environment(2)[RELEASE_ENV]
    manifest = Release.from_json(store.get_object(Bucket=BUCKET, Key=uri.split(f"{BUCKET}/", 1)[1])["Body"].read())
    served = manifest.models["detector"]
    assert served.default == "1.0" and served.versions["1.0"].architecture == "fasterrcnn_resnet50_fpn_v2"
    assert served.versions["1.0"].labels == tuple(coco.meta["categories"])


def test_release_changes_only_the_release_variables_and_writes_the_manifest_they_name(store, service, capsys,
                                                                                      tmp_path):
    service(desired=1)
    assert publish_shapes("1.0") == 0 and publish_shapes("2.0") == 0
    capsys.readouterr()
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes",
                  "detector=2.0", "detector=1.0", "--default", "detector=1.0") == deploy.DEPLOYED
    out = capsys.readouterr().out
    assert f"registered {NAME}:2 with release" in out and f"{NAME} runs {NAME}:2: deployed" in out
    assert service_revision().endswith(f"{NAME}:2")

    # The new revision is the old one with the two variables added, and the release's tag.
    old, new = described(1), described(2)
    env = environment(2)
    uri, digest = env[RELEASE_ENV], env[RELEASE_SHA256_ENV]
    strip = lambda td: {k: v for k, v in td.items() if k not in BOOKKEEPING}  # noqa: E731
    expected = strip(old["taskDefinition"])
    expected["containerDefinitions"][0]["environment"] += [{"name": RELEASE_ENV, "value": uri},
                                                           {"name": RELEASE_SHA256_ENV, "value": digest}]
    assert strip(new["taskDefinition"]) == expected
    release_id = uri.rsplit("/", 1)[-1].removesuffix(".json")
    assert new["tags"] == old["tags"] + [{"key": releases.RELEASE_TAG, "value": release_id},
                                         {"key": deploy.PREVIOUS_TAG, "value": f"{NAME}:1"}]

    # The manifest has the SHA-256 the task definition names, and lists what was asked for.
    assert uri == f"{STORE}/releases/{release_id}.json"
    data = store.get_object(Bucket=BUCKET, Key=f"{PREFIX}/releases/{release_id}.json")["Body"].read()
    assert hashlib.sha256(data).hexdigest() == digest
    manifest = Release.from_json(data)
    assert manifest.release_id == release_id and set(manifest.models) == {"detector"}
    assert manifest.models["detector"].default == "1.0" and set(manifest.models["detector"].versions) == {"1.0", "2.0"}
    for version, entry in manifest.models["detector"].versions.items():
        record = json.loads(objects(store, "versions/")[f"{PREFIX}/versions/detector/{version}.json"])
        assert entry.archive == record["archive"] and entry.batch_size == record["batch_size"]
    # What a task does with it: every archive downloads and verifies.
    fetched, archives = fetch(uri, digest, tmp_path / "scratch", store)
    assert fetched == manifest and set(archives) == {("detector", "1.0"), ("detector", "2.0")}

    # Another release replaces the two variables; nothing else changes.
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=2.0") == deploy.DEPLOYED
    expected = strip(new["taskDefinition"])
    newer = environment(3)
    assert newer[RELEASE_ENV] != uri and newer[RELEASE_SHA256_ENV] != digest
    expected["containerDefinitions"][0]["environment"][-2:] = [
        {"name": RELEASE_ENV, "value": newer[RELEASE_ENV]}, {"name": RELEASE_SHA256_ENV, "value": newer[RELEASE_SHA256_ENV]}]
    assert strip(described(3)["taskDefinition"]) == expected
    assert len(described(3)["tags"]) == len(new["tags"])


def test_a_release_of_shapes_or_of_an_unpublished_version_is_refused_with_nothing_changed(store, service, capsys):
    assert releases.EMBEDDED == registry.EMBEDDED
    service(desired=1)
    assert publish_shapes("1.0") == 0
    before = objects(store)
    capsys.readouterr()
    assert models("release", "--store", STORE, *service_args(), "detector=1.0") == 1
    err = capsys.readouterr().err
    assert "detector 1.0 is the embedded shapes model" in err and "--allow-shapes" in err
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=1.0", "detector=9.9") == 1
    assert "detector 9.9 is not published" in capsys.readouterr().err
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=1.0",
                  "--default", "detector=2.0") == 1
    assert "--default detector=2.0 is not one of the versions released" in capsys.readouterr().err
    assert revisions() == [f"{NAME}:1"] and service_revision().endswith(f"{NAME}:1")
    assert objects(store) == before  # no manifest


def test_status_names_the_current_and_previous_release_and_rollback_returns_to_the_previous_revision(
        store, service, tasks_keep_running, monkeypatch, capsys):
    network = service(desired=1)
    before = service_revision()
    assert publish_shapes("1.0") == 0
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=1.0") == 0
    release_id = environment(2)[RELEASE_ENV].rsplit("/", 1)[-1].removesuffix(".json")
    task = run_service_task(2, network)
    capsys.readouterr()

    monkeypatch.setenv("OBJDETECT_CLUSTER", NAME)
    monkeypatch.setenv("OBJDETECT_SERVICE", NAME)
    assert models("status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"current:  {NAME}:2 release {release_id}: detector 1.0 (default)" in lines
    assert f"          {environment(2)[RELEASE_ENV]} sha256 {environment(2)[RELEASE_SHA256_ENV]}" in lines
    assert f"previous: {NAME}:1 no release (the models built into its image); rollback goes here" in lines
    assert "no deployment in progress" in lines
    assert f"task {task} RUNNING: {NAME}:2 release {release_id}" in lines

    # An image deploy keeps the release: rollback skips its revision, to the release before.
    ecs = boto3.client("ecs")
    assert deploy.deploy(ecs, lambda container: container.update(stopTimeout=60) or "with stopTimeout 60",
                         cluster=NAME, service=NAME, timeout_s=2, poll_s=1) == deploy.DEPLOYED
    assert environment(3)[RELEASE_ENV] == environment(2)[RELEASE_ENV]
    capsys.readouterr()
    assert models("rollback", "--timeout", "2", "--poll", "1") == deploy.DEPLOYED
    out = capsys.readouterr().out
    assert f"rolling back {NAME}: {NAME}:3 release {release_id} -> {NAME}:1 no release" in out
    assert service_revision() == before
    assert revisions() == [f"{NAME}:1", f"{NAME}:2", f"{NAME}:3"]  # the rolled back revisions stay

    assert models("status") == 0
    assert f"current:  {NAME}:1 no release (the models built into its image)" in capsys.readouterr().out
    assert models("rollback") == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert service_revision() == before


def test_rollback_returns_to_the_release_the_service_ran_before_not_to_one_that_was_rolled_back(
        store, service, capsys):
    """1 (no release) -> 2 (release a) -> rolled back to 1 -> 3 (release b): rollback goes to 1,
    which the service ran before 3, never to 2."""
    service(desired=1)
    before = service_revision()
    assert publish_shapes("1.0") == 0 and publish_shapes("2.0") == 0
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=1.0") == 0
    assert models("rollback", *service_args()) == 0 and service_revision() == before
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=2.0") == 0
    assert service_revision().endswith(f"{NAME}:3")
    capsys.readouterr()
    assert models("status", "--cluster", NAME, "--service", NAME) == 0
    assert f"previous: {NAME}:1 no release (the models built into its image); rollback goes here" in capsys.readouterr().out
    assert models("rollback", *service_args()) == 0
    assert service_revision() == before


def test_a_release_that_never_stabilizes_is_rolled_back_to_the_previous_revision(store, service, monkeypatch, capsys):
    """The release's revision never runs its 2 desired tasks (moto runs 1): the real waiter times
    out. moto cannot make one revision healthy and another not, so the rollback's wait first
    brings the desired count back to what moto runs; that wait is the real waiter too."""
    service(desired=2)
    before = service_revision()
    assert publish_shapes("1.0") == 0
    real_wait = deploy.wait_stable
    waited = []

    def wait(ecs, cluster, name, timeout_s, poll_s):
        waited.append(deploy.short(service_revision()))
        if len(waited) > 1:
            ecs.update_service(cluster=cluster, service=name, desiredCount=1)
        real_wait(ecs, cluster, name, timeout_s, poll_s)

    monkeypatch.setattr(deploy, "wait_stable", wait)
    capsys.readouterr()
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=1.0") == deploy.ROLLED_BACK
    assert waited == [f"{NAME}:2", f"{NAME}:1"]
    assert service_revision() == before
    out = capsys.readouterr().out
    assert f"{NAME}:2 not stable within 2 s" in out and f"rolled back: {NAME} runs {NAME}:1 again" in out


def test_a_release_whose_rollback_is_unstable_too_says_so(store, service, capsys):
    service(desired=2)
    assert publish_shapes("1.0") == 0
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=1.0") \
        == deploy.ROLLBACK_UNSTABLE
    assert service_revision().endswith(f"{NAME}:1")
    assert "needs attention" in capsys.readouterr().out


def test_rollback_with_a_name_is_one_servers_and_refuses_service_flags(aws, capsys, tmp_path):
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    assert models("--url", closed, "--state", str(tmp_path / "defaults.json"), "rollback", "detector") == 1
    assert "cannot reach TorchServe's management API" in capsys.readouterr().err
    assert models("rollback", "detector", "--cluster", NAME) == 1
    assert "--cluster belong to the service's rollback" in capsys.readouterr().err
    assert models("rollback") == 1
    assert "rollback needs a model NAME" in capsys.readouterr().err


def test_the_cli_and_each_command_print_only_their_help():
    for command in ([], ["publish"], ["release"], ["status"], ["rollback"], ["list"], ["describe"], ["register"],
                    ["set-default"], ["scale"], ["unregister"]):
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "models.py"), *command, "--help"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stderr == "", (command, result.stderr)
        assert result.stdout.startswith("usage: models.py"), command


def test_publish_packs_openvino_parts_only_when_asked(store):
    """The fleet runs on GPUs, where the OpenVINO parts would double every task's download."""
    assert publish_shapes("1.0") == 0 and publish_shapes("2.0", "--openvino") == 0
    records = {key.rsplit("/", 1)[-1]: json.loads(body) for key, body in objects(store, "versions/").items()}
    assert (records["1.0.json"]["openvino_ir"], records["2.0.json"]["openvino_ir"]) == (False, True)


def test_rollback_to_a_revision_whose_image_expired_is_refused_before_anything_changes(store, service, capsys):
    service(desired=1)
    assert publish_shapes("1.0") == 0
    assert models("release", "--store", STORE, *service_args(), "--allow-shapes", "detector=1.0") == 0
    # The ECR lifecycle policy (or a person) removed the image that revision 1 runs.
    boto3.client("ecr").batch_delete_image(repositoryName=NAME, imageIds=[{"imageTag": "1"}])
    capsys.readouterr()
    assert models("rollback", *service_args()) == 1
    assert "its image 123456789012.dkr.ecr.us-east-1.amazonaws.com/objdetect:1 is no longer in ECR" in capsys.readouterr().err
    assert service_revision().endswith(f"{NAME}:2")
