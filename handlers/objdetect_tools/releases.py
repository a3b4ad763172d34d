"""Model versions: published to the S3 model store and released to the ECS service, or registered on
one TorchServe through its management API (scripts/models.py).

The model store and the service (the store's layout: objdetect_serving/release.py):
    publish  --store s3://BUCKET[/prefix] --version 2.0 [--model ARCH] [--weights CKPT] [--labels FILE]
             [--name detector] [--batch-size N] [--max-batch-delay MS] [--workers N]
    release  --store s3://BUCKET[/prefix] --cluster C --service S detector=2.0 [detector=1.0 ...]
             [--default detector=2.0] [--allow-shapes]
    status   --cluster C --service S
    rollback --cluster C --service S          the service back to the release before its current one

One TorchServe, through its management API (objdetect_serving/versions.py; the image has only these):
    list | describe NAME [VERSION] | register ARCHIVE ... | set-default NAME VERSION
    rollback NAME | scale NAME [VERSION] ... | unregister NAME VERSION

--store, --cluster and --service default to $OBJDETECT_MODEL_STORE, $OBJDETECT_CLUSTER and
$OBJDETECT_SERVICE. `publish` builds the archive (default: fasterrcnn_resnet50_fpn_v2 with its COCO
weights) and records the version; publishing the same inputs again changes nothing, other inputs
under a published version are refused: a version names one archive forever. `release` writes a
manifest of the versions given and rolls out a task definition revision that differs from the
service's only in OBJDETECT_RELEASE and OBJDETECT_RELEASE_SHA256, watched and rolled back as
scripts/deploy.py does for images. Exit status: 0 done; 1 nothing changed (one line on stderr says
why); release and rollback: 2 rolled back to the revision the service ran, which is stable; 3 rolled
back, but that is not stable either (look at the service now).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import boto3
import yaml
from botocore.exceptions import BotoCoreError, ClientError

from objdetect_serving import versions
from objdetect_serving.paths import MODEL_CONFIG
from objdetect_serving.release import (NAME, RELEASE_ENV, RELEASE_SHA256_ENV, VERSION, Model, Release, ReleaseError,
                                       Store, Version, archive_stamp, parse_s3_uri, sha256_of)
from objdetect_tools import deploy

DEFAULT_MODEL = "fasterrcnn_resnet50_fpn_v2"
EMBEDDED = "shapes"  # objdetect.registry.EMBEDDED, spelled here so that release and status never import torch
RECORD_FORMAT = 1
RELEASE_TAG = "objdetect:release"  # the task definition tag that names a revision's release


class Refused(RuntimeError):
    """A command that changed nothing: one line that says why."""


# --- the model store -------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """What went into a version's archive. Archives are not byte-reproducible (zip times, OpenVINO
    conversion), so a version's identity is this, not its archive's hash."""

    architecture: str
    weights_sha256: str
    labels: tuple[str, ...]
    batch_size: int
    max_batch_delay_ms: int
    workers: int

    def as_json(self) -> dict:
        return {**asdict(self), "labels": list(self.labels)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()


def read_json(s3, store: Store, key: str) -> dict | None:
    """The JSON document at `key`, or None when there is none."""
    try:
        return json.loads(s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def exists(s3, store: Store, key: str) -> bool:
    try:
        s3.head_object(Bucket=store.bucket, Key=key)
        return True
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def put_new(s3, store: Store, key: str, body: bytes) -> bool:
    """Writes `key` only if nothing is there (S3's conditional write): False when something is."""
    try:
        s3.put_object(Bucket=store.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
        return True
    except ClientError as error:
        if error.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise


def batch_settings(config_text: str, batch_size: int | None, max_batch_delay: int | None,
                   workers: int | None) -> tuple[int, int, int]:
    """(batch size, max batch delay in ms, workers): the flags, else the model config's."""
    config = yaml.safe_load(config_text) or {}
    settings = (batch_size if batch_size is not None else int(config.get("batchSize", 1)),
                max_batch_delay if max_batch_delay is not None else int(config.get("maxBatchDelay", 100)),
                workers if workers is not None else int(config.get("minWorkers", 1)))
    if min(settings[0], settings[2]) < 1 or settings[1] < 0:
        raise Refused("--batch-size and --workers must be 1 or more, --max-batch-delay 0 or more")
    return settings


def with_settings(config_text: str, batch_size: int, max_batch_delay: int, workers: int) -> str:
    """The model config with these settings, so that the archive's own config says what the
    version record says (the handler sizes its reader threads by the archive's batchSize)."""
    for key, value in (("batchSize", batch_size), ("maxBatchDelay", max_batch_delay),
                       ("minWorkers", workers), ("maxWorkers", workers)):
        config_text, replaced = re.subn(rf"(?m)^{key}:.*$", f"{key}: {value}", config_text)
        if not replaced:
            config_text = config_text.rstrip("\n") + f"\n{key}: {value}\n"
    return config_text


def publish(s3, store: Store, *, name: str, version: str, model: str = DEFAULT_MODEL, weights: Path | None = None,
            labels: Path | None = None, batch_size: int | None = None, max_batch_delay: int | None = None,
            workers: int | None = None, openvino: bool = False, print_=print) -> str:
    """Builds, uploads and records `name` `version`; returns "published" or "already published"."""
    if not NAME.match(name):
        raise Refused(f"{name!r} is not a model name TorchServe accepts (letters, digits, _ and -)")
    if not VERSION.match(version):
        raise Refused(f"{version!r} is not a version TorchServe accepts (e.g. 2.0)")
    # torch, only for what builds archives: release, status and rollback never import it.
    from objdetect import registry
    from objdetect_serving import archive

    try:
        arch = registry.architecture(model)
        class_names = registry.read_labels(labels) if labels else list(arch.labels)
        if weights is not None and not Path(weights).is_file():
            raise Refused(f"--weights {weights}: no such file")
        weights_file = Path(weights) if weights is not None else archive.default_weights(arch)[0]
    except (ValueError, OSError, RuntimeError) as error:  # an unknown model, a bad labels file, a failed download
        raise Refused(f"cannot publish {name} {version}: {error}") from None
    settings = batch_settings(MODEL_CONFIG.read_text(), batch_size, max_batch_delay, workers)
    inputs = Inputs(model, sha256_of(weights_file), tuple(class_names), *settings)
    record_key = store.version_key(name, version)

    # Decided before building: the same inputs again change nothing, other inputs are refused.
    if (done := already_published(read_json(s3, store, record_key), inputs, name, version, store, record_key)):
        print_(done)
        return "already published"
    print_(f"building {name} {version}: {model}, weights sha256 {inputs.weights_sha256[:12]}, "
           f"{len(class_names) - 1} classes, batch {inputs.batch_size} within {inputs.max_batch_delay_ms} ms, "
           f"{inputs.workers} worker(s)")
    with tempfile.TemporaryDirectory(prefix="objdetect-publish-") as staging:
        staging = Path(staging)
        config = staging / MODEL_CONFIG.name
        config.write_text(with_settings(MODEL_CONFIG.read_text(), *settings))
        try:
            built = archive.build_mar(model, staging / "out", name, version, weights=weights, labels=labels,
                                      config=config, openvino=openvino)
        except (ValueError, RuntimeError, OSError) as error:
            raise Refused(f"cannot build {name} {version}: {type(error).__name__}: {error}") from None
        record = version_record(built, name, version, inputs)
        key = store.archive_key(record["archive"])
        if exists(s3, store, key):
            print_(f"{store.uri(key)} is already in the store")
        else:
            s3.upload_file(str(built), store.bucket, key)
            print_(f"uploaded {store.uri(key)} ({record['size'] / 1e6:.1f} MB)")
    # Only now, with its archive in the store: a version record always names an archive that is there.
    if not put_new(s3, store, record_key, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()):
        done = already_published(read_json(s3, store, record_key), inputs, name, version, store, record_key)
        if done is None:
            raise Refused(f"cannot write {store.uri(record_key)}: the store refused the conditional write")
        print_(f"{done} (published by another publisher meanwhile)")
        return "already published"
    print_(f"published {name} {version}: {store.uri(record_key)}")
    return "published"


def already_published(record: dict | None, inputs: Inputs, name: str, version: str, store: Store,
                      key: str) -> str | None:
    """None when `name` `version` is not published yet; the line to print when it is, with these
    inputs. Refuses a published version with other inputs."""
    if record is None:
        return None
    if record.get("fingerprint") == inputs.fingerprint():
        return f"{name} {version} already published with these inputs: {store.uri(key)} (archive {record['archive']})"
    theirs, ours = record.get("inputs", {}), inputs.as_json()
    differences = "; ".join(f"{field} {_brief(theirs.get(field))}, not {_brief(ours[field])}"
                            for field in ours if theirs.get(field) != ours[field])
    raise Refused(f"{name} {version} was published with other inputs ({differences or 'another format'}): "
                  f"a version names one archive forever; publish these inputs as a new --version")


def _brief(value) -> str:
    if isinstance(value, list):
        return f"[{', '.join(map(str, value[:4]))}{', ...' if len(value) > 4 else ''}] ({len(value)} labels)"
    return str(value)


def version_record(built: Path, name: str, version: str, inputs: Inputs) -> dict:
    """The version record of a built archive: what the archive says it holds and how it runs."""
    if archive_stamp(built) != (name, version):
        raise Refused(f"{built} was stamped {archive_stamp(built)}, not ({name}, {version})")
    with zipfile.ZipFile(built) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        info = json.loads(mar.read("model.json"))
        config = yaml.safe_load(mar.read(manifest["configFile"]))
        has_ir = any(item.startswith("openvino/") for item in mar.namelist())
    if info["architecture"] != inputs.architecture or tuple(info["labels"]) != inputs.labels:
        raise Refused(f"the archive built for {name} {version} holds {info['architecture']} with other labels "
                      "than were asked for")
    return {
        "format": RECORD_FORMAT, "name": name, "version": version,
        "archive": sha256_of(built), "size": built.stat().st_size,
        "architecture": info["architecture"], "labels": info["labels"],
        "batch_size": int(config["batchSize"]), "max_batch_delay_ms": int(config["maxBatchDelay"]),
        "workers": int(config["minWorkers"]),
        "inputs": inputs.as_json(), "fingerprint": inputs.fingerprint(),
        "weights": info["weights"], "source": info["source"], "openvino_ir": has_ir,
        "published_at": _now().isoformat().replace("+00:00", "Z"),
    }


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# --- releases --------------------------------------------------------------------------------

def parse_pins(pins: list[str], what: str = "NAME=VERSION") -> list[tuple[str, str]]:
    parsed = []
    for pin in pins:
        name, sep, version = pin.partition("=")
        if not sep or not name or not version:
            raise Refused(f"{pin!r} is not {what} (e.g. detector=2.0)")
        parsed.append((name, version))
    return parsed


def plan_release(s3, store: Store, pins: list[str], defaults: list[str] = (), allow_shapes: bool = False) -> Release:
    """The release of the published versions `pins` names (NAME=VERSION), checked against the store.
    Each name's default: its --default, else the first version listed for it."""
    chosen: dict[str, dict[str, Version]] = {}
    for name, version in parse_pins(pins):
        if version in chosen.get(name, {}):
            raise Refused(f"{name}={version} is listed twice")
        record = read_json(s3, store, store.version_key(name, version))
        if record is None:
            raise Refused(f"{name} {version} is not published in {store.uri()} "
                          f"(no {store.version_key(name, version)}): publish it first")
        if record.get("architecture") == EMBEDDED and not allow_shapes:
            raise Refused(f"{name} {version} is the embedded shapes model (a toy that finds circles, squares "
                          "and triangles): pass --allow-shapes to release it")
        if not exists(s3, store, store.archive_key(record["archive"])):
            raise Refused(f"{name} {version}'s archive {store.uri(store.archive_key(record['archive']))} "
                          "is missing from the store")
        chosen.setdefault(name, {})[version] = Version(
            archive=record["archive"], size=record["size"], architecture=record["architecture"],
            labels=record["labels"], batch_size=record["batch_size"],
            max_batch_delay_ms=record["max_batch_delay_ms"], workers=record["workers"])
    default_of = {name: next(iter(listed)) for name, listed in chosen.items()}
    for name, version in parse_pins(list(defaults)):
        if version not in chosen.get(name, {}):
            raise Refused(f"--default {name}={version} is not one of the versions released "
                          f"({', '.join(f'{n}={v}' for n, vs in chosen.items() for v in vs)})")
        default_of[name] = version
    now = _now()
    release = Release(f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}", now.isoformat().replace("+00:00", "Z"),
                      {name: Model(default_of[name], listed) for name, listed in chosen.items()})
    release.check(f"release {release.release_id}")
    return release


def release_change(uri: str, sha256: str, release_id: str) -> deploy.ContainerChange:
    """The container's release variables set to this release (added, or replaced where they are)."""
    def change(definition: dict) -> str:
        environment = definition.setdefault("environment", [])
        for name, value in ((RELEASE_ENV, uri), (RELEASE_SHA256_ENV, sha256)):
            entry = next((e for e in environment if e["name"] == name), None)
            if entry is None:
                environment.append({"name": name, "value": value})
            else:
                entry["value"] = value
        return f"with release {release_id}"

    return change


def release(s3, ecs, store: Store, *, cluster: str, service: str, pins: list[str], defaults: list[str] = (),
            allow_shapes: bool = False, container: str | None = None, timeout_s: float = deploy.DEFAULT_TIMEOUT_S,
            poll_s: float = 15, print_=print) -> int:
    """Writes the release's manifest and rolls the service out to it. Returns deploy's exit status."""
    planned = plan_release(s3, store, pins, defaults, allow_shapes)
    manifest = planned.to_json()
    digest = hashlib.sha256(manifest).hexdigest()
    key = store.release_key(planned.release_id)
    # The new revision is prepared before the manifest is written: a missing service or container
    # is refused with nothing changed.
    previous = deploy.describe_service(ecs, cluster, service)["taskDefinition"]
    request, what = deploy.new_revision_request(ecs, previous, release_change(store.uri(key), digest, planned.release_id),
                                                container, tags={RELEASE_TAG: planned.release_id})
    if not put_new(s3, store, key, manifest):
        raise Refused(f"{store.uri(key)} already exists: a release is never overwritten (run release again)")
    print_(f"release {planned.release_id}: {planned.summary()}")
    print_(f"wrote {store.uri(key)} (sha256 {digest})")
    outcome = deploy.register_and_roll_out(ecs, request, what, cluster=cluster, service=service, previous=previous,
                                           timeout_s=timeout_s, poll_s=poll_s, print_=print_)
    show_tasks(ecs, cluster, service, container, print_)
    return outcome


# --- what the service serves -----------------------------------------------------------------

class TaskDefinitions:
    """Task definitions, each described once (with its tags)."""

    def __init__(self, ecs, container: str | None = None):
        self.ecs, self.container, self._described = ecs, container, {}

    def _describe(self, revision: str) -> dict:
        """describe_task_definition of an ARN or family:revision, cached under its ARN."""
        if revision not in self._described:
            described = self.ecs.describe_task_definition(taskDefinition=revision, include=["TAGS"])
            self._described[revision] = self._described[described["taskDefinition"]["taskDefinitionArn"]] = described
        return self._described[revision]

    def arn(self, revision: str) -> str:
        return self._describe(revision)["taskDefinition"]["taskDefinitionArn"]

    def environment(self, arn: str) -> dict[str, str]:
        definition = deploy.pick_container(self._describe(arn)["taskDefinition"]["containerDefinitions"], self.container)
        return {e["name"]: e["value"] for e in definition.get("environment", [])}

    def image(self, arn: str) -> str:
        definition = deploy.pick_container(self._describe(arn)["taskDefinition"]["containerDefinitions"], self.container)
        return definition["image"]

    def release(self, arn: str) -> str | None:
        """The release manifest's URI the revision serves; None: the archives built into its image."""
        return self.environment(arn).get(RELEASE_ENV)

    def describe(self, arn: str) -> str:
        """`objdetect:3 release 20261207T053000Z-1a2b3c4d`, or what the revision serves without one."""
        uri = self.release(arn)
        if uri is None:
            return f"{deploy.short(arn)} no release (the models built into its image)"
        return f"{deploy.short(arn)} release {release_id_of(uri)}"

    def previous(self, current: str) -> str | None:
        """What rollback goes to: the release the service ran before its current one. Followed back
        through the revision each release, deploy or rollback recorded as the one the service ran
        before it (deploy.PREVIOUS_TAG), to the first that serves another release; from a revision
        registered elsewhere (terraform's), the most recent earlier revision of the family that does."""
        serving, seen, arn = self.release(current), set(), self.arn(current)
        while arn not in seen:
            seen.add(arn)
            tags = {t["key"]: t["value"] for t in self._describe(arn).get("tags") or []}
            if deploy.PREVIOUS_TAG not in tags:
                break
            arn = self.arn(tags[deploy.PREVIOUS_TAG])
            if self.release(arn) != serving:
                return arn
        family, revision = deploy.short(arn).rsplit(":", 1)
        arns = []
        for page in self.ecs.get_paginator("list_task_definitions").paginate(familyPrefix=family, status="ACTIVE"):
            arns += page["taskDefinitionArns"]
        earlier = sorted(((int(r), arn) for arn in arns
                          for f, r in [deploy.short(arn).rsplit(":", 1)] if f == family and int(r) < int(revision)),
                         reverse=True)
        return next((arn for _, arn in earlier if self.release(arn) != serving), None)


def release_id_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1].removesuffix(".json")


def running_tasks(ecs, cluster: str, service: str) -> list[dict]:
    arns = []
    for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, serviceName=service, desiredStatus="RUNNING"):
        arns += page["taskArns"]
    tasks = []
    for start in range(0, len(arns), 100):
        tasks += ecs.describe_tasks(cluster=cluster, tasks=arns[start:start + 100])["tasks"]
    # A service's tasks are in the group service:<name> (which also keeps out what a serviceName
    # filter an emulator ignores would let through).
    return [task for task in tasks if task.get("group") == f"service:{service}"]


def show_tasks(ecs, cluster: str, service: str, container: str | None, print_=print,
               definitions: TaskDefinitions | None = None) -> None:
    """One line per running task of the service: which revision, and so which release, it serves."""
    definitions = definitions or TaskDefinitions(ecs, container)
    try:
        tasks = running_tasks(ecs, cluster, service)
        if not tasks:
            print_(f"no running task of {service}")
        for task in tasks:
            print_(f"task {task['taskArn'].rsplit('/', 1)[-1]} {task.get('lastStatus', '?')}: "
                   f"{definitions.describe(task['taskDefinitionArn'])}")
    except (BotoCoreError, ClientError, deploy.DeployError) as error:
        print_(f"could not list the service's tasks: {error}")


def manifest_summary(s3, uri: str, sha256: str | None) -> str:
    """What the manifest at `uri` lists, and whether it still has the SHA-256 tasks verify."""
    try:
        bucket, key = parse_s3_uri(uri)
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        summary = Release.from_json(data, uri).summary()
    except (ReleaseError, ClientError, BotoCoreError) as error:
        return f"its manifest is unreadable: {error}"
    if hashlib.sha256(data).hexdigest() != sha256:
        return f"{summary} (the manifest's SHA-256 is not {RELEASE_SHA256_ENV}: tasks will refuse it)"
    return summary


def status(ecs, s3, *, cluster: str, service: str, container: str | None = None, print_=print) -> int:
    state = deploy.describe_service(ecs, cluster, service)
    definitions = TaskDefinitions(ecs, container)
    current = state["taskDefinition"]
    print_(f"service {service} in cluster {cluster}: running {state['runningCount']}/{state['desiredCount']} "
           f"(pending {state['pendingCount']})")
    current_env = definitions.environment(current)
    line = f"current:  {definitions.describe(current)}"
    if RELEASE_ENV in current_env:
        line += f": {manifest_summary(s3, current_env[RELEASE_ENV], current_env.get(RELEASE_SHA256_ENV))}"
    print_(line)
    if RELEASE_ENV in current_env:  # what terraform's model_release takes to name the same release
        print_(f"          {current_env[RELEASE_ENV]} sha256 {current_env.get(RELEASE_SHA256_ENV)}")
    previous = definitions.previous(current)
    print_(f"previous: {definitions.describe(previous)}; rollback goes here" if previous
           else "previous: none (no earlier revision serves another release)")
    moving = [d for d in state.get("deployments", [])
              if d.get("status") != "PRIMARY" or d.get("rolloutState") == "IN_PROGRESS"]
    for deployment in moving:
        print_(f"deployment {deployment.get('status')} {deployment.get('rolloutState', '')}: "
               f"{definitions.describe(deployment['taskDefinition'])}, running {deployment.get('runningCount', 0)}/"
               f"{deployment.get('desiredCount', 0)}")
    if not moving:
        print_("no deployment in progress")
    show_tasks(ecs, cluster, service, container, print_, definitions)
    return 0


def rollback(ecs, ecr_client_for, *, cluster: str, service: str, container: str | None = None,
             timeout_s: float = deploy.DEFAULT_TIMEOUT_S, poll_s: float = 15, print_=print) -> int:
    """The service back to its previous release's revision, watched (and undone when it does not
    become stable) as deploy does. Returns deploy's exit status. Refused, with nothing changed, when
    that revision's image is no longer in ECR: its tasks could not start."""
    current = deploy.describe_service(ecs, cluster, service)["taskDefinition"]
    definitions = TaskDefinitions(ecs, container)
    target = definitions.previous(current)
    if target is None:
        raise Refused(f"{service} runs {definitions.describe(current)}, and no earlier revision of its family "
                      "serves another release: nothing to roll back to")
    image = definitions.image(target)
    try:
        deploy.check_image_exists(ecr_client_for, image)
    except deploy.DeployError:
        raise Refused(f"cannot roll back to {definitions.describe(target)}: its image {image} is no longer in ECR "
                      "(expired or deleted), so its tasks could not start; release the versions you want on the "
                      "current image instead") from None
    print_(f"rolling back {service}: {definitions.describe(current)} -> {definitions.describe(target)}")
    outcome = deploy.roll_out_or_back(ecs, cluster, service, target, current, timeout_s, poll_s, print_)
    show_tasks(ecs, cluster, service, container, print_, definitions)
    return outcome


# --- the command line ------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 in one line: 2 means "rolled back" here."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="models.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    versions.add_server_options(top.add_argument_group(
        "one TorchServe (list, describe, register, set-default, rollback NAME, scale, unregister)"))
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store_help = "the model store, s3://BUCKET[/prefix] (default $OBJDETECT_MODEL_STORE)"
    publish_ = commands.add_parser("publish", help="build a version's archive and publish it to the model store",
                                   description="Builds the archive, uploads it to archives/<sha256>.mar and records "
                                   "versions/<name>/<version>.json. The same inputs again change nothing; other inputs "
                                   "under a published version are refused.")
    publish_.add_argument("--store", default=os.environ.get("OBJDETECT_MODEL_STORE"), help=store_help)
    publish_.add_argument("--model", default=DEFAULT_MODEL, metavar="ARCH",
                          help="registry architecture (default %(default)s, with its COCO weights)")
    publish_.add_argument("--weights", type=Path, metavar="CKPT", help="a fine-tuned checkpoint instead")
    publish_.add_argument("--labels", type=Path, metavar="FILE", help="its labels, one per line")
    publish_.add_argument("--name", default="detector", help="model name (default %(default)s)")
    publish_.add_argument("--version", required=True, help="the version to publish, e.g. 2.0")
    publish_.add_argument("--batch-size", type=int, metavar="N", help="default: model-config.yaml's batchSize")
    publish_.add_argument("--max-batch-delay", type=int, metavar="MS", help="default: its maxBatchDelay")
    publish_.add_argument("--workers", type=int, metavar="N", help="default: its minWorkers")
    publish_.add_argument("--openvino", action="store_true",
                          help="also pack the model's OpenVINO parts, for CPU workers (the ECS fleet runs on "
                               "GPUs, where they are dead weight; not one of the inputs that identify a version)")
    publish_.add_argument("--region", help="AWS region (default: from the environment or profile)")
    publish_.set_defaults(aws=_publish)

    release_ = commands.add_parser("release", help="release published versions to the ECS service",
                                   description="Writes releases/<id>.json listing the versions given and rolls the "
                                   "service out to a revision with that release; rolls back when it does not "
                                   "become stable. Exit 0 released, 1 nothing changed, 2 rolled back, 3 rolled back "
                                   "but unstable.")
    release_.add_argument("pins", nargs="+", metavar="NAME=VERSION", help="published versions to serve")
    release_.add_argument("--default", dest="defaults", action="append", default=[], metavar="NAME=VERSION",
                          help="a name's default version (default: the first listed for it)")
    release_.add_argument("--store", default=os.environ.get("OBJDETECT_MODEL_STORE"), help=store_help)
    release_.add_argument("--allow-shapes", action="store_true", help="allow the embedded toy shapes model")
    _service_arguments(release_, watch=True)
    release_.set_defaults(aws=_release)

    status_ = commands.add_parser("status", help="which release the service runs, which rollback goes to, and what each task serves")
    _service_arguments(status_, watch=False)
    status_.set_defaults(aws=_status)

    rollback_ = commands.add_parser(
        "rollback", usage="%(prog)s NAME\n       %(prog)s --cluster C --service S [--container C] [--timeout S] "
                          "[--poll S] [--region R]", help="NAME: one server's previous default; --cluster/--service: the service's previous release",
        description="rollback NAME: back to NAME's previous default version on one TorchServe (management API). "
                    "rollback --cluster C --service S (or $OBJDETECT_CLUSTER/$OBJDETECT_SERVICE): the service back "
                    "to the most recent earlier task definition revision that serves another release.")
    rollback_.add_argument("name", nargs="?", metavar="NAME", help="a model on one TorchServe")
    _service_arguments(rollback_, watch=True, from_environment=False)
    rollback_.set_defaults(run=versions.cmd_rollback, aws=_rollback)

    versions.add_server_commands(commands, rollback=False)
    return top


def _service_arguments(command: argparse.ArgumentParser, watch: bool, from_environment: bool = True) -> None:
    environ = os.environ.get if from_environment else (lambda _: None)
    command.add_argument("--cluster", default=environ("OBJDETECT_CLUSTER"),
                         help="ECS cluster (default $OBJDETECT_CLUSTER)")
    command.add_argument("--service", default=environ("OBJDETECT_SERVICE"),
                         help="ECS service (default $OBJDETECT_SERVICE)")
    command.add_argument("--container", help="the container that serves models (default: the only one)")
    if watch:
        command.add_argument("--timeout", type=float, help=f"seconds to wait for stability, each way (default {deploy.DEFAULT_TIMEOUT_S:g})")
        command.add_argument("--poll", type=float, help="seconds between checks (default 15)")
    command.add_argument("--region", help="AWS region (default: from the environment or profile)")


def _store(args) -> Store:
    if not args.store:
        raise Refused("give --store s3://BUCKET[/prefix] or set OBJDETECT_MODEL_STORE")
    return Store.parse(args.store)


def _where(args) -> tuple[str, str]:
    if not args.cluster or not args.service:
        raise Refused("give --cluster and --service, or set OBJDETECT_CLUSTER and OBJDETECT_SERVICE")
    return args.cluster, args.service


def _watch(args) -> dict:
    return {"timeout_s": deploy.DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout, "poll_s": 15 if args.poll is None else args.poll}


def _publish(args) -> int:
    publish(boto3.client("s3", region_name=args.region), _store(args), name=args.name, version=args.version,
            model=args.model, weights=args.weights, labels=args.labels, batch_size=args.batch_size,
            max_batch_delay=args.max_batch_delay, workers=args.workers, openvino=args.openvino)
    return 0


def _release(args) -> int:
    store = _store(args)
    cluster, service = _where(args)
    return release(boto3.client("s3", region_name=args.region), boto3.client("ecs", region_name=args.region), store,
                   cluster=cluster, service=service, pins=args.pins, defaults=args.defaults,
                   allow_shapes=args.allow_shapes, container=args.container, **_watch(args))


def _status(args) -> int:
    cluster, service = _where(args)
    return status(boto3.client("ecs", region_name=args.region), boto3.client("s3", region_name=args.region),
                  cluster=cluster, service=service, container=args.container)


def _rollback(args) -> int:
    cluster = args.cluster or os.environ.get("OBJDETECT_CLUSTER")
    service = args.service or os.environ.get("OBJDETECT_SERVICE")
    if not cluster or not service:
        raise Refused("rollback needs a model NAME (one TorchServe: its previous default) or --cluster and "
                      "--service, or OBJDETECT_CLUSTER and OBJDETECT_SERVICE (the ECS service: its previous release)")
    return rollback(boto3.client("ecs", region_name=args.region), lambda region: boto3.client("ecr", region_name=region),
                    cluster=cluster, service=service, container=args.container, **_watch(args))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "rollback" and args.name is not None:
        service_flags = [f"--{flag}" for flag in ("cluster", "service", "container", "timeout", "poll", "region")
                         if getattr(args, flag) is not None]
        if service_flags:
            print(f"models: rollback NAME rolls back one TorchServe; {', '.join(service_flags)} belong to the "
                  "service's rollback, which takes no NAME", file=sys.stderr)
            return 1
        args.aws = None
    if not getattr(args, "aws", None):
        return versions.run(args)
    try:
        return args.aws(args)
    # Errors that reach here left the service and every version record as they were (deploy.roll_out
    # catches its own); at most an archive or a manifest nothing names is left in the store.
    except (Refused, ReleaseError, deploy.DeployError) as error:
        print(f"models: {error}", file=sys.stderr)
    except (BotoCoreError, ClientError) as error:
        print(f"models: AWS error: {error}", file=sys.stderr)
    return 1
