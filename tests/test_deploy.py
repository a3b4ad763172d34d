"""scripts/push.py and scripts/deploy.py against a real moto server on 127.0.0.1.

moto serves the ECR, ECS and EC2 APIs; it has no registry, so the container engine is faked: by a
recorder (in-process) or by a small script standing in for docker/podman (push.py as a subprocess),
whose `push` uploads the manifest through ECR's API as a registry would. Everything else is real:
boto3 clients honouring AWS_ENDPOINT_URL, the scripts' checks, their ECR and ECS calls, boto3's
services_stable waiter. moto keeps each service's running count at MOTO_ECS_SERVICE_RUNNING (1 here),
so a service that desires 2 tasks never becomes stable: a real deploy that does not stabilize.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import deploy  # noqa: E402
import push  # noqa: E402

REGION = "us-east-1"
NAME = "objdetect"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:objdetect/api-keys-AbCdEf"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """One moto server for this module, on a free loopback port; always stopped."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "MOTO_ECS_SERVICE_RUNNING": "1"}
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                pytest.fail(f"moto server exited with {server.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto server did not listen on {port} within 30 s:\n{log.read_text()}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture()
def aws(moto_endpoint, monkeypatch, tmp_path):
    """A clean moto, and an environment where boto3 can only reach it, with fake credentials."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10).close()
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return moto_endpoint


def put_image(ecr, tag: str, seed: str = "0") -> str:
    """What a registry push leaves behind: a manifest under a tag. Returns the digest."""
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                           "digest": "sha256:" + seed * 64},
                "layers": []}
    return ecr.put_image(repositoryName=NAME, imageManifest=json.dumps(manifest), imageTag=tag)["image"]["imageId"]["imageDigest"]


def make_repository(ecr) -> dict:
    """The repository as terraform creates it."""
    return ecr.create_repository(repositoryName=NAME, imageTagMutability="IMMUTABLE",
                                 imageScanningConfiguration={"scanOnPush": True})["repository"]


class Recorder:
    """Stands in for subprocess: records each command (and its stdin) and answers image inspect."""

    def __init__(self, revision: str = ""):
        self.commands: list[list[str]] = []
        self.inputs: list[str | None] = []
        self.revision = revision

    def __call__(self, command, *, input=None, capture=False):
        self.commands.append(command)
        self.inputs.append(input)
        if command[1:3] == ["image", "inspect"]:
            return self.revision + "\n"
        return ""


# --- push.py ---------------------------------------------------------------------------------

def test_push_finds_the_repository_and_pushes_with_a_login_on_stdin(aws):
    ecr = boto3.client("ecr")
    repository = make_repository(ecr)
    remote = f"{repository['repositoryUri']}:abc1234"
    recorder = Recorder()

    def run(command, *, input=None, capture=False):
        recorder(command, input=input, capture=capture)
        if command[1] == "push":  # what the registry would record
            put_image(ecr, "abc1234")
        return ""

    result = push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda",
                       build_flavor="cuda", engine="podman", run=run, log=lambda _: None)

    assert result == remote
    registry = repository["repositoryUri"].split("/")[0]
    assert recorder.commands == [
        ["make", "-C", str(ROOT), "image", "FLAVOR=cuda"],
        ["podman", "tag", "objdetect:cuda", remote],
        ["podman", "login", "--username", "AWS", "--password-stdin", registry],
        ["podman", "push", remote],
    ]
    login = recorder.commands.index(["podman", "login", "--username", "AWS", "--password-stdin", registry])
    password = recorder.inputs[login]
    assert password and all(password not in part for command in recorder.commands for part in command)


def test_push_fails_clearly_when_the_repository_is_missing(aws):
    recorder = Recorder()
    with pytest.raises(push.PushError, match=r"repository 'objdetect' does not exist.*terraform"):
        push.push(boto3.client("ecr"), repository_name=NAME, tag="abc1234", local_image="objdetect:cuda",
                  build_flavor="cuda", engine="podman", run=recorder, log=lambda _: None)
    assert recorder.commands == []  # nothing built, nothing created
    assert boto3.client("ecr").describe_repositories()["repositories"] == []


def test_push_refuses_an_existing_tag_before_building_or_pushing(aws):
    ecr = boto3.client("ecr")
    make_repository(ecr)
    digest = put_image(ecr, "abc1234")
    recorder = Recorder()
    with pytest.raises(push.PushError, match=rf"already exists \({digest}\): tags are immutable"):
        push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda",
                  build_flavor="cuda", engine="podman", run=recorder, log=lambda _: None)
    assert recorder.commands == []


def test_push_refuses_a_local_image_built_from_another_commit(aws):
    ecr = boto3.client("ecr")
    make_repository(ecr)
    recorder = Recorder(revision="1111111")
    with pytest.raises(push.PushError, match="built from revision 1111111, not abc1234"):
        push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda", build_flavor=None,
                  engine="podman", verify_commit="abc1234", run=recorder, log=lambda _: None)
    assert [c[1] for c in recorder.commands] == ["image"]  # inspected; never tagged or pushed


def test_default_tag_is_the_commit_and_needs_a_clean_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "c")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert push.default_tag(tmp_path) == commit
    (tmp_path / "f").write_text("2")
    with pytest.raises(push.PushError, match="uncommitted changes"):
        push.default_tag(tmp_path)


FAKE_ENGINE = textwrap.dedent("""\
    #!{python}
    # Stands in for docker/podman: logs its arguments and stdin; `push` stores the manifest in ECR
    # through the API (moto has no registry), as a real registry push would.
    import json, sys
    import boto3
    args = sys.argv[1:]
    stdin = sys.stdin.read() if "--password-stdin" in args else ""
    with open({log!r}, "a") as log:
        log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
    if args[0] == "push":
        repository, tag = args[1].rsplit("/", 1)[1].split(":")
        manifest = {{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {{"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                               "digest": "sha256:" + "e" * 64}}, "layers": []}}
        boto3.client("ecr").put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    """)


def test_push_script_end_to_end_then_refuses_the_same_tag(aws, tmp_path):
    ecr = boto3.client("ecr")
    repository = make_repository(ecr)
    log = tmp_path / "engine.log"
    engine = tmp_path / "fake-engine"
    engine.write_text(FAKE_ENGINE.format(python=sys.executable, log=str(log)))
    engine.chmod(0o755)
    command = [sys.executable, str(ROOT / "scripts" / "push.py"), "--no-build", "--tag", "0123abc",
               "--engine", str(engine)]

    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    remote = f"{repository['repositoryUri']}:0123abc"
    assert f"pushed {remote} (sha256:" in first.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["args"] for c in calls] == [
        ["tag", "objdetect:cuda", remote],
        ["login", "--username", "AWS", "--password-stdin", repository["repositoryUri"].split("/")[0]],
        ["push", remote],
    ]
    assert calls[1]["stdin"]  # the token's password, on stdin only

    second = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert "already exists" in second.stderr and "tags are immutable" in second.stderr
    assert len(log.read_text().splitlines()) == 3  # the engine was not called again


# --- deploy.py -------------------------------------------------------------------------------

def container_definition(image: str) -> dict:
    """The container as terraform/task.tf defines it."""
    return {
        "name": "objdetect", "image": image, "essential": True, "user": "10001:10001",
        "cpu": 3584, "memory": 14336,
        "resourceRequirements": [{"type": "GPU", "value": "1"}],
        "portMappings": [{"containerPort": 8080, "hostPort": 8080, "protocol": "tcp"}],
        "secrets": [{"name": "OBJDETECT_API_KEYS", "valueFrom": SECRET_ARN}],
        "readonlyRootFilesystem": False,
        "linuxParameters": {"initProcessEnabled": True,
                            "tmpfs": [{"containerPath": "/tmp", "size": 2048, "mountOptions": ["rw", "exec"]}]},
        "healthCheck": {"command": ["CMD", "python", "/opt/objdetect/scripts/server.py", "--check", "detector"],
                        "interval": 15, "timeout": 5, "retries": 3, "startPeriod": 120},
        "stopTimeout": 30,
        "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/objdetect",
                                                                  "awslogs-region": REGION, "awslogs-stream-prefix": NAME}},
    }


@pytest.fixture()
def service(aws):
    """What terraform leaves: the repository with two pushed images, the cluster, revision 1 of
    the task definition running image `old`, and the service on it. Returns a function to create
    the service with a desired count."""
    ecr, ecs, ec2 = boto3.client("ecr"), boto3.client("ecs"), boto3.client("ec2")
    repository = make_repository(ecr)
    put_image(ecr, "old", "1")
    put_image(ecr, "new", "2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="task", Description="task", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName=NAME)
    ecs.register_task_definition(
        family=NAME, networkMode="awsvpc", requiresCompatibilities=["EC2"], cpu="3584", memory="14336",
        executionRoleArn="arn:aws:iam::123456789012:role/objdetect-execution",
        taskRoleArn="arn:aws:iam::123456789012:role/objdetect-task",
        containerDefinitions=[container_definition(f"{repository['repositoryUri']}:old")],
        tags=[{"key": "Project", "value": NAME}])

    def create(desired: int = 1) -> dict:
        ecs.create_service(
            cluster=NAME, serviceName=NAME, taskDefinition=f"{NAME}:1", desiredCount=desired, launchType="EC2",
            networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
            deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True},
                                     "maximumPercent": 200, "minimumHealthyPercent": 100})
        return repository

    return create


def run_deploy(*extra: str) -> int:
    return deploy.main(["--cluster", NAME, "--service", NAME, "--timeout", "2", "--poll", "1", *extra])


def described(revision: int) -> dict:
    return boto3.client("ecs").describe_task_definition(taskDefinition=f"{NAME}:{revision}", include=["TAGS"])


def current_revision() -> str:
    state = boto3.client("ecs").describe_services(cluster=NAME, services=[NAME])["services"][0]
    return deploy.short(state["taskDefinition"])


def test_deploy_registers_a_gpu_revision_with_the_new_image_and_waits_until_stable(service, capsys):
    repository = service(desired=1)
    assert run_deploy("--image-tag", "new") == deploy.DEPLOYED

    assert current_revision() == f"{NAME}:2"
    old, new = described(1), described(2)
    (container,) = new["taskDefinition"]["containerDefinitions"]
    assert container["image"] == f"{repository['repositoryUri']}:new"
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    # Identical apart from the image (and the revision's own bookkeeping).
    bookkeeping = {"taskDefinitionArn", "revision", "registeredAt", "registeredBy", "status"}
    strip = lambda td: {k: v for k, v in td.items() if k not in bookkeeping}  # noqa: E731
    old_td, new_td = strip(old["taskDefinition"]), strip(new["taskDefinition"])
    old_td["containerDefinitions"][0]["image"] = container["image"]
    assert new_td == old_td
    assert new["tags"] == old["tags"]
    out = capsys.readouterr().out
    assert f"registered {NAME}:2" in out
    assert f"revision {NAME}:2, running 1/1" in out
    assert "deployed" in out


def test_deploy_refuses_an_image_that_was_never_pushed(service, capsys):
    service(desired=1)
    assert run_deploy("--image-tag", "never-pushed") == deploy.UNCHANGED
    assert "push it first" in capsys.readouterr().err
    assert current_revision() == f"{NAME}:1"
    assert boto3.client("ecs").list_task_definitions(familyPrefix=NAME)["taskDefinitionArns"] == [
        f"arn:aws:ecs:{REGION}:123456789012:task-definition/{NAME}:1"]


def test_deploy_rolls_back_when_the_new_revision_never_stabilizes(service, monkeypatch, capsys):
    """The first wait fails as the real waiter does on a deployment that never settles; the rollback
    then goes through the real waiter against moto."""
    service(desired=1)
    real_wait = deploy.wait_stable
    waits = []

    def first_wait_times_out(ecs, cluster, name, timeout_s, poll_s):
        waits.append(current_revision())
        if len(waits) == 1:
            from botocore.exceptions import WaiterError
            raise WaiterError(name="ServicesStable", reason="Max attempts exceeded", last_response={})
        real_wait(ecs, cluster, name, timeout_s, poll_s)

    monkeypatch.setattr(deploy, "wait_stable", first_wait_times_out)
    assert run_deploy("--image-tag", "new") == deploy.ROLLED_BACK
    assert waits == [f"{NAME}:2", f"{NAME}:1"]  # waited on the new revision, then on the rollback
    assert current_revision() == f"{NAME}:1"
    out = capsys.readouterr().out
    assert f"{NAME}:2 not stable within 2 s" in out
    assert f"rolled back: {NAME} runs {NAME}:1 again" in out


def test_deploy_reports_an_unstable_rollback_when_nothing_stabilizes(service, capsys):
    """A service moto keeps below its desired count (1 of 2 running): every real wait times out."""
    service(desired=2)
    started = time.monotonic()
    assert run_deploy("--image-tag", "new") == deploy.ROLLBACK_UNSTABLE
    assert time.monotonic() - started < 20  # bounded by --timeout, each way
    assert current_revision() == f"{NAME}:1"
    out = capsys.readouterr().out
    assert "running 1/2" in out
    assert "rolling back" in out and "needs attention" in out


def test_deploy_detects_a_circuit_breaker_rollback(service, monkeypatch, capsys):
    """ECS's circuit breaker puts the service back on the previous revision during the wait; the
    service is then stable, but not on what was deployed."""
    service(desired=1)
    real_wait = deploy.wait_stable
    calls = []

    def circuit_breaker_rolls_back(ecs, cluster, name, timeout_s, poll_s):
        calls.append(1)
        if len(calls) == 1:
            ecs.update_service(cluster=cluster, service=name, taskDefinition=f"{NAME}:1")
        real_wait(ecs, cluster, name, timeout_s, poll_s)

    monkeypatch.setattr(deploy, "wait_stable", circuit_breaker_rolls_back)
    assert run_deploy("--image-tag", "new") == deploy.ROLLED_BACK
    assert current_revision() == f"{NAME}:1"
    assert "ECS rolled the deployment back" in capsys.readouterr().out


def test_deploy_fails_clearly_for_a_missing_service(aws, capsys):
    boto3.client("ecs").create_cluster(clusterName=NAME)
    assert run_deploy("--image-tag", "new") == deploy.UNCHANGED
    assert f"service '{NAME}' not found" in capsys.readouterr().err


def test_with_tag_replaces_tag_or_digest():
    repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/objdetect"
    assert deploy.with_tag(f"{repo}:old", "new") == f"{repo}:new"
    assert deploy.with_tag(f"{repo}@sha256:{'a' * 64}", "new") == f"{repo}:new"
    assert deploy.with_tag("localhost:5000/objdetect", "new") == "localhost:5000/objdetect:new"
