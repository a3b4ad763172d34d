"""Push the service image to the deployment's ECR repository, tagged with the git commit (scripts/push.py).

    python scripts/push.py                          # make image FLAVOR=cuda MODEL=fasterrcnn_resnet50_fpn_v2, then
                                                    # push objdetect:cuda as <repo>:<commit>
    python scripts/push.py --model fasterrcnn_resnet50_fpn_v2 --weights ft.pt --labels labels.txt  # a fine-tuned one
    python scripts/push.py --no-build --tag 1.2.0   # push what is already built, under an explicit tag

The image bakes in a model, which serves wherever a task names no model release. It is COCO's
Faster R-CNN unless --model says otherwise: `make image` defaults to the embedded shapes model for
offline tests, and an image for real photos must not answer them with that toy, so pushing it
takes an explicit `--model shapes`.

Terraform owns the repository (terraform/ecr.tf); this script creates nothing in AWS. It checks
everything it can before building or pushing: the checkpoint and labels files exist, the
repository exists, the tag is not taken (tags are immutable: ECR would refuse the push too, but
only after uploading gigabytes), the local image was built from the commit it is about to be named
after, and it serves the model asked for (its label). Then it logs the engine (the one
`make image` builds with: objdetect_tools.containers) in to ECR with a short-lived token passed on stdin, tags and pushes. boto3 honours AWS_ENDPOINT_URL and the usual
credential chain (environment, profile, SSO, role); no credential is ever read or written here.
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
from pathlib import Path
from typing import Callable, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from objdetect_serving.paths import ROOT

from . import containers
from .containers import engine_environment, missing_model_files
from .revision import RevisionError, git_commit, working_tree_dirty

REVISION_LABEL = "org.opencontainers.image.revision"
MODEL_LABEL = "io.github.objdetect.model"  # the Dockerfile's label: the registry model the archive serves
DEFAULT_MODEL = "fasterrcnn_resnet50_fpn_v2"  # COCO: what an image for real photos serves by default


class PushError(RuntimeError):
    pass


class Runner(Protocol):
    def __call__(self, command: list[str], *, input: str | None = None, capture: bool = False) -> str: ...


def run_command(command: list[str], *, input: str | None = None, capture: bool = False) -> str:
    """Runs a command; its output goes to our console unless `capture`. Raises PushError on failure."""
    try:
        done = subprocess.run(command, input=input, text=True, check=False, env=engine_environment(),
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)
    except FileNotFoundError:
        raise PushError(f"{command[0]} not found on PATH") from None
    if done.returncode != 0:
        detail = f": {done.stderr.strip()}" if capture and done.stderr else ""
        raise PushError(f"`{' '.join(command[:3])} ...` exited with {done.returncode}{detail}")
    return done.stdout or ""


def default_tag(root: Path = ROOT) -> str:
    """The commit, which the tag then claims the image was built from: refused on a dirty tree."""
    try:
        if working_tree_dirty(root):
            raise PushError("the working tree has uncommitted changes, so an image built from it is not the commit "
                            "it would be tagged with: commit (or stash) them, or name the tag yourself with --tag")
        return git_commit(root)
    except RevisionError as error:
        raise PushError(str(error)) from None


# --- ECR -------------------------------------------------------------------------------------

def find_repository(ecr, name: str) -> dict:
    """The repository terraform created; a clear error if it is missing (this script creates none)."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ClientError as error:
        if error.response["Error"]["Code"] == "RepositoryNotFoundException":
            raise PushError(f"ECR repository {name!r} does not exist in {ecr.meta.region_name}: create it with "
                            f"terraform (terraform/README.md, 'Deploy to AWS'); push.py creates nothing") from None
        raise


def image_digest(ecr, repository: dict, tag: str) -> str | None:
    """The digest of `tag` in the repository, or None when no image has that tag."""
    try:
        images = ecr.describe_images(registryId=repository["registryId"], repositoryName=repository["repositoryName"],
                                     imageIds=[{"imageTag": tag}])["imageDetails"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "ImageNotFoundException":
            return None
        raise
    return images[0]["imageDigest"] if images else None


def registry_credentials(ecr, repository: dict) -> tuple[str, str, str]:
    """(registry host, user, password) from a 12-hour ECR authorization token."""
    data = ecr.get_authorization_token(registryIds=[repository["registryId"]])["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    host = data["proxyEndpoint"].removeprefix("https://").removeprefix("http://").rstrip("/")
    return host, user, password


# --- the push --------------------------------------------------------------------------------

def image_label(engine: str, local_image: str, label: str, run: Runner) -> str:
    return run([engine, "image", "inspect", "--format", f'{{{{ index .Config.Labels "{label}" }}}}', local_image],
               capture=True).strip()


def check_revision(engine: str, local_image: str, commit: str, run: Runner) -> None:
    """The local image must carry the commit's revision label (`make image` sets it), so that the tag tells the truth."""
    revision = image_label(engine, local_image, REVISION_LABEL, run)
    if not (revision and (revision.startswith(commit) or commit.startswith(revision))):
        raise PushError(f"{local_image} was built from revision {revision or '(unlabelled)'}, not {commit}: "
                        f"rebuild it (drop --no-build) or name the tag yourself with --tag")


def check_model(engine: str, local_image: str, model: str, run: Runner) -> None:
    """The local image must serve `model` (its label): with --no-build, what `make image` left behind
    may be the shapes model, which must never reach ECS unasked."""
    served = image_label(engine, local_image, MODEL_LABEL, run)
    if served != model:
        raise PushError(f"{local_image} serves model {served or '(unlabelled)'}, not {model}: rebuild it (drop "
                        "--no-build), or name the model it serves with --model")


def build_command(flavor: str, model: str, weights: Path | None, labels: Path | None) -> list[str]:
    """`make image` for this model. WEIGHTS and LABELS are always given, empty when unused, so that
    variables of the same names in the caller's environment do not reach the build."""
    return ["make", "-C", str(ROOT), "image", f"FLAVOR={flavor}", f"MODEL={model}",
            f"WEIGHTS={weights or ''}", f"LABELS={labels or ''}"]


def push(ecr, *, repository_name: str, tag: str, local_image: str, build_flavor: str | None,
         engine: str | None, model: str = DEFAULT_MODEL, weights: Path | None = None, labels: Path | None = None,
         verify_commit: str | None = None, run: Runner = run_command, log: Callable[[str], None] = print) -> str:
    """Checks, builds `model` (unless build_flavor is None; with the checkpoint `weights` and its
    `labels` when given), tags, logs in, pushes. Returns `<repository uri>:<tag>`."""
    if build_flavor is None and (weights or labels):
        raise PushError("--weights and --labels are baked in by the build: drop --no-build")
    problems = missing_model_files(weights, labels)
    if problems:
        raise PushError("; ".join(problems) + ": nothing was built or pushed")
    # Absolute: make runs in the checkout, not where they were named.
    weights, labels = (Path(path).absolute() if path else None for path in (weights, labels))
    repository = find_repository(ecr, repository_name)
    remote = f"{repository['repositoryUri']}:{tag}"
    existing = image_digest(ecr, repository, tag)
    if existing:
        raise PushError(f"{remote} already exists ({existing}): tags are immutable, so nothing was built or pushed. "
                        f"Deploy it as it is, or push a new commit")
    if build_flavor is not None:
        command = build_command(build_flavor, model, weights, labels)
        log(f"push: building with `make {' '.join(command[3:])}`")
        run(command)
    engine = engine or containers.engine()
    if verify_commit:
        check_revision(engine, local_image, verify_commit, run)
    check_model(engine, local_image, model, run)
    log(f"push: {local_image} -> {remote} with {engine}")
    run([engine, "tag", local_image, remote])
    host, user, password = registry_credentials(ecr, repository)
    run([engine, "login", "--username", user, "--password-stdin", host], input=password, capture=True)
    run([engine, "push", remote])
    digest = image_digest(ecr, repository, tag)
    if not digest:
        raise PushError(f"{engine} pushed {remote}, but ECR does not list the tag")
    log(f"push: pushed {remote} ({digest})")
    return remote


def main(argv: list[str] | None = None, run: Runner = run_command) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default="objdetect", help="ECR repository name (terraform's var.name)")
    parser.add_argument("--tag", help="image tag (default: the short git commit; needs a clean working tree)")
    parser.add_argument("--no-build", action="store_true", help="push the local image as it is")
    parser.add_argument("--flavor", default="cuda", help="image flavor to build and push (default: cuda)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"the registry model the image serves (default: {DEFAULT_MODEL}, COCO; the embedded "
                             "toy model only as --model shapes)")
    parser.add_argument("--weights", type=Path, help="a fine-tuned checkpoint of --model to bake in")
    parser.add_argument("--labels", type=Path, help="the checkpoint's labels file: one class per line")
    parser.add_argument("--local-image", help="local image to push (default: objdetect:<flavor>)")
    parser.add_argument("--engine", help="container engine command (default: docker if its engine runs, else podman)")
    parser.add_argument("--region", help="AWS region (default: from the environment or profile)")
    args = parser.parse_args(argv)

    try:
        commit = None if args.tag else default_tag()
        tag = args.tag or commit
        ecr = boto3.client("ecr", region_name=args.region)
        push(ecr, repository_name=args.repository, tag=tag, local_image=args.local_image or f"objdetect:{args.flavor}",
             build_flavor=None if args.no_build else args.flavor, engine=args.engine, model=args.model,
             weights=args.weights, labels=args.labels, verify_commit=commit, run=run)
    except PushError as error:
        print(f"push: error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        print(f"push: AWS error: {error}", file=sys.stderr)
        return 1
    return 0
