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

A release of models (objdetect_tools.releases) goes through the same steps: `deploy` takes the
change to make to the container as a function, so an image and a release are rolled out, watched
and rolled back by one piece of code.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from typing import Callable

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

DEPLOYED, UNCHANGED, ROLLED_BACK, ROLLBACK_UNSTABLE = 0, 1, 2, 3
ECR_IMAGE = re.compile(r"^(?P<registry>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com[^/]*/(?P<repository>[^:@]+)")


class DeployError(RuntimeError):
    pass


# Edits one container definition (the new revision's) in place, and says what it changed, for the log.
ContainerChange = Callable[[dict], str]
# On every revision registered here: the revision the service ran before it. ECS keeps no history of
# what a service ran; this is it, and what a release's rollback follows (objdetect_tools.releases).
PREVIOUS_TAG = "objdetect:previous"
# How long a rollout may take to become stable, each way: a GPU instance to start (about 12 minutes
# from a warm pool), then a canary's bake and the deployment's bake (10 minutes each by default).
DEFAULT_TIMEOUT_S = 3600


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


def new_revision_request(ecs, task_definition: str, change: ContainerChange, container: str | None = None,
                         tags: dict[str, str] | None = None) -> tuple[dict, str]:
    """RegisterTaskDefinition arguments equal to `task_definition`'s (its tags included), with
    `change` applied to the container and `tags` added or replaced. Returns (arguments, what changed)."""
    described = ecs.describe_task_definition(taskDefinition=task_definition, include=["TAGS"])
    current = described["taskDefinition"]
    # Exactly what RegisterTaskDefinition accepts, from the API model: describe also returns
    # read-only fields (arn, revision, status, registeredAt ...), which register would refuse.
    accepted = ecs.meta.service_model.operation_model("RegisterTaskDefinition").input_shape.members
    request = {key: value for key, value in current.items() if key in accepted}
    kept = [tag for tag in described.get("tags") or [] if tag["key"] not in (tags or {})]
    if kept or tags:
        request["tags"] = kept + [{"key": key, "value": value} for key, value in (tags or {}).items()]

    what = change(pick_container(request["containerDefinitions"], container))
    return request, what


def image_change(image: str | None, image_tag: str | None, ecr_client_for) -> ContainerChange:
    """The container's image replaced by `image`, or its tag by `image_tag`; an ECR tag must exist."""
    def change(definition: dict) -> str:
        new_image = image or with_tag(definition["image"], image_tag)
        check_image_exists(ecr_client_for, new_image)
        definition["image"] = new_image
        return f"with {new_image}"

    return change


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
    print_(f"service {service}: revision {short(state['taskDefinition'])}, "
           f"running {state['runningCount']}/{state['desiredCount']} (pending {state['pendingCount']}), "
           f"rollout {primary.get('rolloutState', 'unknown')}")
    for event in state.get("events", [])[:events]:
        print_(f"  {event['createdAt']:%Y-%m-%d %H:%M:%S} {event['message']}")


def report_safely(ecs, cluster: str, service: str, print_=print) -> None:
    """The report, or why there is none: once the service has changed, a failed report must not hide the outcome."""
    try:
        report(ecs, cluster, service, print_)
    except (BotoCoreError, ClientError, DeployError) as error:
        print_(f"could not describe the service: {error}")


def short(task_definition_arn: str) -> str:
    """family:revision from a task definition ARN."""
    return task_definition_arn.rsplit("/", 1)[-1]


def deploy(ecs, change: ContainerChange, *, cluster: str, service: str, container: str | None = None,
           base_task_definition: str | None = None, tags: dict[str, str] | None = None,
           timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 15, print_=print) -> int:
    """Registers the service's task definition (or `base_task_definition`) again with `change` made
    to its container, and rolls the service out to it (`roll_out_or_back`). Raises DeployError or
    botocore's errors only before anything changed."""
    previous = describe_service(ecs, cluster, service)["taskDefinition"]
    request, what = new_revision_request(ecs, base_task_definition or previous, change, container, tags)
    return register_and_roll_out(ecs, request, what, cluster=cluster, service=service, previous=previous,
                                 timeout_s=timeout_s, poll_s=poll_s, print_=print_)


def register_and_roll_out(ecs, request: dict, what: str, *, cluster: str, service: str, previous: str,
                          timeout_s: float, poll_s: float, print_=print) -> int:
    """Registers the revision, tagged with the one the service ran (PREVIOUS_TAG), and rolls out to it."""
    tags = [tag for tag in request.get("tags", []) if tag["key"] != PREVIOUS_TAG]
    request = {**request, "tags": tags + [{"key": PREVIOUS_TAG, "value": short(previous)}]}
    registered = ecs.register_task_definition(**request)["taskDefinition"]["taskDefinitionArn"]
    print_(f"registered {short(registered)} {what} (service ran {short(previous)})")
    return roll_out_or_back(ecs, cluster, service, registered, previous, timeout_s, poll_s, print_)


def roll_out_or_back(ecs, cluster: str, service: str, target: str, previous: str, timeout_s: float, poll_s: float,
                     print_=print) -> int:
    """Rolls the service out to `target`; when that does not become stable, back to `previous`.
    Returns DEPLOYED, ROLLED_BACK or ROLLBACK_UNSTABLE."""
    outcome = roll_out(ecs, cluster, service, target, timeout_s, poll_s)
    report_safely(ecs, cluster, service, print_)
    if outcome.stable:
        print_(f"{service} runs {short(target)}: deployed")
        return DEPLOYED

    print_(f"{short(target)} {outcome.reason}; rolling back to {short(previous)}")
    rollback = roll_out(ecs, cluster, service, previous, timeout_s, poll_s)
    report_safely(ecs, cluster, service, print_)
    if rollback.stable:
        print_(f"rolled back: {service} runs {short(previous)} again")
        return ROLLED_BACK
    print_(f"rollback to {short(previous)} {rollback.reason}: the service needs attention")
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
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds to wait for stability, each way (default {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--poll", type=float, default=15, help="seconds between checks (default 15)")
    parser.add_argument("--region", help="AWS region (default: from the environment or profile)")
    args = parser.parse_args(argv)

    try:
        ecs = boto3.client("ecs", region_name=args.region)
        change = image_change(args.image, args.image_tag, lambda region: boto3.client("ecr", region_name=region))
        return deploy(ecs, change, cluster=args.cluster, service=args.service, container=args.container,
                      base_task_definition=args.base_task_definition, timeout_s=args.timeout, poll_s=args.poll,
                      print_=lambda line: print(f"deploy: {line}"))
    # Errors that reach here happened before the service was changed (roll_out catches its own).
    except DeployError as error:
        print(f"deploy: error: {error}", file=sys.stderr)
        return UNCHANGED
    except (BotoCoreError, ClientError) as error:
        print(f"deploy: AWS error, nothing changed: {error}", file=sys.stderr)
        return UNCHANGED
