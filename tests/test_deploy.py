"""scripts/deploy.py against a real moto server on 127.0.0.1 (the moto_endpoint and aws fixtures).

moto serves the ECR, ECS and EC2 APIs: the script's checks, its ECR and ECS calls and boto3's
services_stable waiter are real. moto keeps each service's running count at MOTO_ECS_SERVICE_RUNNING
(1), so a service that desires 2 tasks never becomes stable: a real deploy that does not stabilize.
"""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.exceptions import WaiterError

from objdetect_tools import deploy

REGION = "us-east-1"
NAME = "objdetect"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:objdetect/api-keys-AbCdEf"


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
def service(aws, make_repository, put_image):
    """What terraform leaves: the repository with two pushed images, the cluster, revision 1 of
    the task definition running image `old`, and the service on it. Returns a function to create
    the service with a desired count."""
    ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
    repository = make_repository()
    put_image("old", "1")
    put_image("new", "2")
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


@pytest.mark.integration
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
    assert new["tags"] == old["tags"] + [{"key": deploy.PREVIOUS_TAG, "value": f"{NAME}:1"}]  # what it ran before
    out = capsys.readouterr().out
    assert f"registered {NAME}:2" in out
    assert f"revision {NAME}:2, running 1/1" in out
    assert "deployed" in out


@pytest.mark.integration
def test_deploy_refuses_an_image_that_was_never_pushed(service, capsys):
    service(desired=1)
    assert run_deploy("--image-tag", "never-pushed") == deploy.UNCHANGED
    assert "push it first" in capsys.readouterr().err
    assert current_revision() == f"{NAME}:1"
    assert boto3.client("ecs").list_task_definitions(familyPrefix=NAME)["taskDefinitionArns"] == [
        f"arn:aws:ecs:{REGION}:123456789012:task-definition/{NAME}:1"]


@pytest.mark.integration
def test_deploy_rolls_back_when_the_new_revision_never_stabilizes(service, monkeypatch, capsys):
    """The first wait fails as the real waiter does on a deployment that never settles; the rollback
    then goes through the real waiter against moto."""
    service(desired=1)
    real_wait = deploy.wait_stable
    waits = []

    def first_wait_times_out(ecs, cluster, name, timeout_s, poll_s):
        waits.append(current_revision())
        if len(waits) == 1:
            raise WaiterError(name="ServicesStable", reason="Max attempts exceeded", last_response={})
        real_wait(ecs, cluster, name, timeout_s, poll_s)

    monkeypatch.setattr(deploy, "wait_stable", first_wait_times_out)
    assert run_deploy("--image-tag", "new") == deploy.ROLLED_BACK
    assert waits == [f"{NAME}:2", f"{NAME}:1"]  # waited on the new revision, then on the rollback
    assert current_revision() == f"{NAME}:1"
    out = capsys.readouterr().out
    assert f"{NAME}:2 not stable within 2 s" in out
    assert f"rolled back: {NAME} runs {NAME}:1 again" in out


@pytest.mark.integration
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


@pytest.mark.integration
def test_deploy_reports_a_rollback_by_ecs_on_an_alarm_or_its_circuit_breaker(service, monkeypatch, capsys):
    """One of the alarms the service names (5xx rate, p99, model errors) fires during the canary's
    bake, or the circuit breaker trips: ECS puts the service back on the previous revision during
    the wait. The service is then stable, but not on what was deployed: reported as rolled back."""
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


@pytest.mark.integration
def test_deploy_fails_clearly_for_a_missing_service(aws, capsys):
    boto3.client("ecs").create_cluster(clusterName=NAME)
    assert run_deploy("--image-tag", "new") == deploy.UNCHANGED
    assert f"service '{NAME}' not found" in capsys.readouterr().err


@pytest.mark.unit
def test_with_tag_replaces_tag_or_digest():
    repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/objdetect"
    assert deploy.with_tag(f"{repo}:old", "new") == f"{repo}:new"
    assert deploy.with_tag(f"{repo}@sha256:{'a' * 64}", "new") == f"{repo}:new"
    assert deploy.with_tag("localhost:5000/objdetect", "new") == "localhost:5000/objdetect:new"
