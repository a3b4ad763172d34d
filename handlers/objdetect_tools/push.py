"""Push the service image to the deployment's ECR repository, tagged with the git commit (scripts/push.py).

    python scripts/push.py                          # make image FLAVOR=cuda, then push objdetect:cuda as <repo>:<commit>
    python scripts/push.py --no-build --tag 1.2.0   # push what is already built, under an explicit tag

Terraform owns the repository (terraform/ecr.tf); this script creates nothing in AWS. It checks
everything it can before building or pushing: the repository exists, the tag is not taken (tags
are immutable: ECR would refuse the push too, but only after uploading gigabytes), and the local
image was built from the commit it is about to be named after. Then it logs the engine (the one
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
from .containers import engine_environment
from .revision import RevisionError, git_commit, working_tree_dirty

REVISION_LABEL = "org.opencontainers.image.revision"


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

def check_revision(engine: str, local_image: str, commit: str, run: Runner) -> None:
    """The local image must carry the commit's revision label (`make image` sets it), so that the tag tells the truth."""
    revision = run([engine, "image", "inspect", "--format", f'{{{{ index .Config.Labels "{REVISION_LABEL}" }}}}',
                    local_image], capture=True).strip()
    if not (revision and (revision.startswith(commit) or commit.startswith(revision))):
        raise PushError(f"{local_image} was built from revision {revision or '(unlabelled)'}, not {commit}: "
                        f"rebuild it (drop --no-build) or name the tag yourself with --tag")


def push(ecr, *, repository_name: str, tag: str, local_image: str, build_flavor: str | None,
         engine: str | None, verify_commit: str | None = None, run: Runner = run_command,
         log: Callable[[str], None] = print) -> str:
    """Checks, builds (unless build_flavor is None), tags, logs in, pushes. Returns `<repository uri>:<tag>`."""
    repository = find_repository(ecr, repository_name)
    remote = f"{repository['repositoryUri']}:{tag}"
    existing = image_digest(ecr, repository, tag)
    if existing:
        raise PushError(f"{remote} already exists ({existing}): tags are immutable, so nothing was built or pushed. "
                        f"Deploy it as it is, or push a new commit")
    if build_flavor is not None:
        log(f"push: building with `make image FLAVOR={build_flavor}`")
        run(["make", "-C", str(ROOT), "image", f"FLAVOR={build_flavor}"])
    engine = engine or containers.engine()
    if verify_commit:
        check_revision(engine, local_image, verify_commit, run)
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
    parser.add_argument("--local-image", help="local image to push (default: objdetect:<flavor>)")
    parser.add_argument("--engine", help="container engine command (default: docker if its engine runs, else podman)")
    parser.add_argument("--region", help="AWS region (default: from the environment or profile)")
    args = parser.parse_args(argv)

    try:
        commit = None if args.tag else default_tag()
        tag = args.tag or commit
        ecr = boto3.client("ecr", region_name=args.region)
        push(ecr, repository_name=args.repository, tag=tag, local_image=args.local_image or f"objdetect:{args.flavor}",
             build_flavor=None if args.no_build else args.flavor, engine=args.engine, verify_commit=commit, run=run)
    except PushError as error:
        print(f"push: error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        print(f"push: AWS error: {error}", file=sys.stderr)
        return 1
    return 0
