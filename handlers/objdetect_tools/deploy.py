"""Roll out an image to the ECS service, and roll back when it does not become stable (scripts/deploy.py).

    python scripts/deploy.py --cluster objdetect --service objdetect --image-tag 0123abc

1. the service's current task definition (or --base-task-definition) is registered again as a new
   revision, identical except the container's image (the GPU requirement, secrets, health check,
   roles and everything else are kept);
2. the service is updated to it and watched until stable (boto3's services_stable waiter, at most
   --timeout seconds: GPU instances may have to be added and the model loaded);
3. the outcome is reported: revision, running/desired tasks, the service's latest events;
4. when the service did not become stable on the new revision (timeout, a failed rollout, or ECS's
   deployment circuit breaker rolling it back), the service is updated back to the previous
   revision and watched again.

Exit status: 0 deployed; 1 nothing changed (bad arguments, no such service or image);
2 rolled back to the previous revision, which is stable; 3 rolled back, but that is not stable
either (look at the service now). boto3 honours AWS_ENDPOINT_URL and the usual credential chain.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

DEPLOYED, UNCHANGED, ROLLED_BACK, ROLLBACK_UNSTABLE = 0, 1, 2, 3
ECR_IMAGE = re.compile(r"^(?P<registry>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com[^/]*/(?P<repository>[^:@]+)")


class DeployError(RuntimeError):
    pass


@dataclass
class Outcome:
    stable: bool
    reason: str


# --- task definitions ------------------------------------------------------------------------

def describe_service(ecs, cluster: str, service: str) -> dict:
    described = ecs.describe_services(cluster=cluster, services=[service])
    services = [s for s in described["services"] if s.get("status") == "ACTIVE"]
    if not services:
        raise DeployError(f"service {service!r} not found (or not active) in cluster {cluster!r}")
    return services[0]


def new_revision_request(ecs, task_definition: str, image: str | None, image_tag: str | None,
                         container: str | None) -> tuple[dict, str]:
    """RegisterTaskDefinition arguments equal to `task_definition`'s, with the container's image
    replaced. Returns (arguments, the new image)."""
    described = ecs.describe_task_definition(taskDefinition=task_definition, include=["TAGS"])
    current = described["taskDefinition"]
    # Exactly what RegisterTaskDefinition accepts, from the API model: describe also returns
    # read-only fields (arn, revision, status, registeredAt ...), which register would refuse.
    accepted = ecs.meta.service_model.operation_model("RegisterTaskDefinition").input_shape.members
    request = {key: value for key, value in current.items() if key in accepted}
    if described.get("tags"):
        request["tags"] = described["tags"]

    target = pick_container(request["containerDefinitions"], container)
    new_image = image or with_tag(target["image"], image_tag)
    target["image"] = new_image
    return request, new_image


def pick_container(definitions: list[dict], name: str | None) -> dict:
    if name:
        for definition in definitions:
            if definition["name"] == name:
                return definition
        raise DeployError(f"the task definition has no container {name!r} "
                          f"(it has {', '.join(d['name'] for d in definitions)})")
    if len(definitions) != 1:
        raise DeployError("the task definition has several containers: name one with --container")
    return definitions[0]


def with_tag(image: str, tag: str) -> str:
    """`image` (repository[:tag][@digest]) with its tag replaced by `tag`."""
    repository = image.split("@", 1)[0]
    if repository.rfind(":") > repository.rfind("/"):
        repository = repository[: repository.rfind(":")]
    return f"{repository}:{tag}"


def check_image_exists(ecr_client_for, image: str) -> None:
    """For an ECR image, the tag must exist (push first): refused before anything changes."""
    match = ECR_IMAGE.match(image)
    if not match or ":" not in image.rsplit("/", 1)[-1]:
        return  # not an ECR tag reference: nothing we can check
    tag = image.rsplit(":", 1)[1]
    ecr = ecr_client_for(match["region"])
    try:
        ecr.describe_images(registryId=match["registry"], repositoryName=match["repository"], imageIds=[{"imageTag": tag}])
    except ClientError as error:
        if error.response["Error"]["Code"] in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise DeployError(f"{image} is not in ECR: push it first (scripts/push.py)") from None
        raise


# --- rollout ---------------------------------------------------------------------------------

def wait_stable(ecs, cluster: str, service: str, timeout_s: float, poll_s: float) -> None:
    """boto3's services_stable waiter (one deployment, running == desired), bounded by timeout_s.
    Raises WaiterError when the service is not stable in time."""
    ecs.get_waiter("services_stable").wait(
        cluster=cluster, services=[service],
        WaiterConfig={"Delay": max(1, int(poll_s)), "MaxAttempts": max(1, math.ceil(timeout_s / max(1, int(poll_s))))})


def roll_out(ecs, cluster: str, service: str, task_definition: str, timeout_s: float, poll_s: float) -> Outcome:
    """Updates the service to `task_definition` and waits. Stable means: the waiter succeeded, the
    service still runs this revision (ECS's circuit breaker did not roll it back), and no
    deployment of it failed."""
    try:
        ecs.update_service(cluster=cluster, service=service, taskDefinition=task_definition)
        wait_stable(ecs, cluster, service, timeout_s, poll_s)
        state = describe_service(ecs, cluster, service)
    except WaiterError as error:
        return Outcome(False, f"not stable within {timeout_s:.0f} s ({error})")
    except (BotoCoreError, ClientError, DeployError) as error:
        return Outcome(False, f"could not be rolled out: {error}")
    if state["taskDefinition"] != task_definition:
        return Outcome(False, f"ECS rolled the deployment back: the service runs {short(state['taskDefinition'])}")
    failed = [d for d in state.get("deployments", []) if d.get("rolloutState") == "FAILED"]
    if failed:
        return Outcome(False, f"deployment failed: {failed[0].get('rolloutStateReason', 'no reason given')}")
    return Outcome(True, "stable")


def report(ecs, cluster: str, service: str, print_=print, events: int = 5) -> None:
    state = describe_service(ecs, cluster, service)
    primary = next((d for d in state.get("deployments", []) if d.get("status") == "PRIMARY"), {})
    print_(f"deploy: service {service}: revision {short(state['taskDefinition'])}, "
           f"running {state['runningCount']}/{state['desiredCount']} (pending {state['pendingCount']}), "
           f"rollout {primary.get('rolloutState', 'unknown')}")
    for event in state.get("events", [])[:events]:
        print_(f"deploy:   {event['createdAt']:%Y-%m-%d %H:%M:%S} {event['message']}")


def report_safely(ecs, cluster: str, service: str, print_=print) -> None:
    """The report, or why there is none: once the service has changed, a failed report must not hide the outcome."""
    try:
        report(ecs, cluster, service, print_)
    except (BotoCoreError, ClientError, DeployError) as error:
        print_(f"deploy: could not describe the service: {error}")


def short(task_definition_arn: str) -> str:
    """family:revision from a task definition ARN."""
    return task_definition_arn.rsplit("/", 1)[-1]


def deploy(ecs, ecr_client_for, *, cluster: str, service: str, image: str | None = None, image_tag: str | None = None,
           container: str | None = None, base_task_definition: str | None = None,
           timeout_s: float = 1800, poll_s: float = 15, print_=print) -> int:
    current = describe_service(ecs, cluster, service)
    previous = current["taskDefinition"]
    request, new_image = new_revision_request(ecs, base_task_definition or previous, image, image_tag, container)
    check_image_exists(ecr_client_for, new_image)

    registered = ecs.register_task_definition(**request)["taskDefinition"]["taskDefinitionArn"]
    print_(f"deploy: registered {short(registered)} with {new_image} (service ran {short(previous)})")
    outcome = roll_out(ecs, cluster, service, registered, timeout_s, poll_s)
    report_safely(ecs, cluster, service, print_)
    if outcome.stable:
        print_(f"deploy: {service} runs {short(registered)}: deployed")
        return DEPLOYED

    print_(f"deploy: {short(registered)} {outcome.reason}; rolling back to {short(previous)}")
    rollback = roll_out(ecs, cluster, service, previous, timeout_s, poll_s)
    report_safely(ecs, cluster, service, print_)
    if rollback.stable:
        print_(f"deploy: rolled back: {service} runs {short(previous)} again")
        return ROLLED_BACK
    print_(f"deploy: rollback to {short(previous)} {rollback.reason}: the service needs attention")
    return ROLLBACK_UNSTABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", required=True, help="ECS cluster (terraform output cluster_name)")
    parser.add_argument("--service", required=True, help="ECS service (terraform output service_name)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--image-tag", help="new tag for the container's current image repository (e.g. the commit push.py printed)")
    which.add_argument("--image", help="full new image reference")
    parser.add_argument("--container", help="container whose image changes (default: the only one)")
    parser.add_argument("--base-task-definition",
                        help="revision to copy instead of the service's current one (e.g. terraform output task_definition_arn)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for stability, each way (default 1800)")
    parser.add_argument("--poll", type=float, default=15, help="seconds between checks (default 15)")
    parser.add_argument("--region", help="AWS region (default: from the environment or profile)")
    args = parser.parse_args(argv)

    try:
        ecs = boto3.client("ecs", region_name=args.region)
        return deploy(ecs, lambda region: boto3.client("ecr", region_name=region),
                      cluster=args.cluster, service=args.service, image=args.image, image_tag=args.image_tag,
                      container=args.container, base_task_definition=args.base_task_definition,
                      timeout_s=args.timeout, poll_s=args.poll)
    # Errors that reach here happened before the service was changed (roll_out catches its own).
    except DeployError as error:
        print(f"deploy: error: {error}", file=sys.stderr)
        return UNCHANGED
    except (BotoCoreError, ClientError) as error:
        print(f"deploy: AWS error, nothing changed: {error}", file=sys.stderr)
        return UNCHANGED
