"""Model releases: exactly which model versions every task of a service serves, from the model store.

The model store is an S3 bucket (terraform/models.tf) laid out as

    s3://BUCKET/archives/<sha256>.mar              a model archive, stored once under its content's SHA-256
    s3://BUCKET/versions/<name>/<version>.json     what publish recorded about a version (its archive, inputs)
    s3://BUCKET/releases/<release id>.json         a release: per model name, its versions and its default

A release never changes once written; a new release is a new manifest. A task definition names its
release with two environment variables, RELEASE_ENV (the manifest's s3:// URI) and RELEASE_SHA256_ENV
(the manifest's SHA-256). The container's entrypoint (`objdetect_serving.torchserve.main`) then
downloads every archive the manifest lists into its scratch space, verifies every hash and every
archive's stamped name and version, registers each version through the management API and sets
each default, and only then reports healthy. Anything missing, corrupt or tampered with stops the
task with one line that says what: a task never serves part of a release. The operators' commands
that publish archives and roll releases out are `objdetect_tools.releases` (scripts/models.py).

This module runs in the image: it imports boto3 (for S3) only when a release is fetched, and
nothing of objdetect or torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .management import Management, ManagementError

RELEASE_ENV = "OBJDETECT_RELEASE"
RELEASE_SHA256_ENV = "OBJDETECT_RELEASE_SHA256"
FORMAT = 1  # the manifest's format; a task refuses a manifest of a format it does not know
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # TorchServe model names
VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$")


class ReleaseError(RuntimeError):
    """A release that cannot be served as it is: one line that says what and where."""


@dataclass(frozen=True)
class Store:
    """Where the model store is: a bucket and an optional key prefix."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> "Store":
        bucket, key = parse_s3_uri(uri)
        return cls(bucket, key.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def archive_key(self, sha256: str) -> str:
        return self.key("archives", f"{sha256}.mar")

    def version_key(self, name: str, version: str) -> str:
        return self.key("versions", name, f"{version}.json")

    def release_key(self, release_id: str) -> str:
        return self.key("releases", f"{release_id}.json")

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @classmethod
    def of_release(cls, release_uri: str) -> "Store":
        """The store a release's manifest lives in (the manifest is <store>/releases/<id>.json)."""
        bucket, key = parse_s3_uri(release_uri)
        folder = key.rsplit("/", 2)
        if len(folder) < 2 or folder[-2] != "releases":
            raise ReleaseError(f"{release_uri} is not a release manifest (<store>/releases/<id>.json)")
        return cls(bucket, folder[0] if len(folder) == 3 else "")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    match = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", uri or "")
    if not match:
        raise ReleaseError(f"{uri!r} is not an s3://bucket[/key] URI")
    return match[1], match[2] or ""


@dataclass(frozen=True)
class Version:
    """One version as a release serves it: its archive and how TorchServe runs it."""

    archive: str  # the archive's SHA-256: its key in the store, and what a task verifies
    size: int  # bytes
    architecture: str  # the registry's name for it (objdetect.registry)
    labels: tuple[str, ...]  # class names by id, background first: what the version answers
    batch_size: int = 4
    max_batch_delay_ms: int = 5
    workers: int = 1

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(self.labels))


@dataclass(frozen=True)
class Model:
    default: str
    versions: dict[str, Version] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    """A release's manifest. `release_id` and `created_at` name it; `models` is what it serves."""

    release_id: str
    created_at: str
    models: dict[str, Model]

    def to_json(self) -> bytes:
        """The manifest's bytes: canonical, so that its hash is its identity."""
        document = {"format": FORMAT, "release": self.release_id, "created_at": self.created_at,
                    "models": {name: {"default": model.default,
                                      "versions": {v: {**asdict(entry), "labels": list(entry.labels)}
                                                   for v, entry in sorted(model.versions.items())}}
                               for name, model in sorted(self.models.items())}}
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "the manifest") -> "Release":
        try:
            document = json.loads(data)
            if document.get("format") != FORMAT:
                raise ReleaseError(f"{where} has format {document.get('format')!r}; this image reads format {FORMAT}")
            models = {name: Model(model["default"], {v: Version(**entry) for v, entry in model["versions"].items()})
                      for name, model in document["models"].items()}
            release = cls(str(document["release"]), str(document["created_at"]), models)
        except ReleaseError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ReleaseError(f"{where} is not a release manifest: {type(error).__name__}: {error}") from None
        release.check(where)
        return release

    def check(self, where: str = "the release") -> None:
        """Refuses a release TorchServe could not serve exactly as written."""
        if not self.models:
            raise ReleaseError(f"{where} lists no models")
        for name, model in self.models.items():
            if not NAME.match(name):
                raise ReleaseError(f"{where}: {name!r} is not a model name TorchServe accepts")
            if model.default not in model.versions:
                raise ReleaseError(f"{where}: {name}'s default {model.default} is not one of its versions "
                                   f"({', '.join(model.versions) or 'none'})")
            for version, entry in model.versions.items():
                if not VERSION.match(version):
                    raise ReleaseError(f"{where}: {name} {version!r} is not a version TorchServe accepts")
                if not SHA256.match(entry.archive):
                    raise ReleaseError(f"{where}: {name} {version}'s archive {entry.archive!r} is not a SHA-256")
                if min(entry.batch_size, entry.workers, entry.size) < 1 or entry.max_batch_delay_ms < 0:
                    raise ReleaseError(f"{where}: {name} {version} has a size, batch size or worker count below 1")

    def summary(self) -> str:
        """One line: `detector 2.0 (default), 1.0; other 1.0 (default)`."""
        return "; ".join(name + " " + ", ".join(v + (" (default)" if v == model.default else "")
                                                for v in sorted(model.versions, key=version_key, reverse=True))
                         for name, model in sorted(self.models.items()))


def version_key(version: str) -> tuple:
    """Orders versions as people read them (1.10 after 1.9)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.-]", version))


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def archive_stamp(path: Path) -> tuple[str, str]:
    """(modelName, modelVersion) an archive was built with (TorchServe serves the stamped version)."""
    try:
        with zipfile.ZipFile(path) as archive:
            model = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
            return model["modelName"], model["modelVersion"]
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as error:
        raise ReleaseError(f"{path} is not a readable model archive: {error}") from None


# --- in the task: fetch, verify, register ------------------------------------------------------

def fetch(release_uri: str, expected_sha256: str, scratch: Path, s3=None) -> tuple[Release, dict[tuple[str, str], Path]]:
    """Downloads the release and every archive it lists into `scratch`, verifying each hash and
    stamp. Returns the release and each (name, version)'s archive file. Raises ReleaseError."""
    if not SHA256.match(expected_sha256 or ""):
        raise ReleaseError(f"{RELEASE_SHA256_ENV} must be the manifest's SHA-256 (64 hex digits), "
                           f"not {expected_sha256!r}: a task serves only a release it can verify")
    s3 = s3 or s3_client()
    store = Store.of_release(release_uri)
    bucket, key = parse_s3_uri(release_uri)
    data = _get(s3, bucket, key, f"release manifest {release_uri}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ReleaseError(f"release manifest {release_uri} has SHA-256 {actual}, not {expected_sha256}: "
                           f"changed after it was released; refusing to serve it")
    release = Release.from_json(data, f"release manifest {release_uri}")
    scratch.mkdir(parents=True, exist_ok=True)
    archives = {}
    for name, model in release.models.items():
        for version, entry in model.versions.items():
            what = f"release {release.release_id}: {name} {version}'s archive {store.uri(store.archive_key(entry.archive))}"
            path = scratch / f"{name}-v{version}.mar"
            partial = path.with_suffix(".part")
            _download(s3, bucket, store.archive_key(entry.archive), partial, what)
            digest = sha256_of(partial)
            if digest != entry.archive:
                partial.unlink()
                raise ReleaseError(f"{what} has SHA-256 {digest}: corrupt or tampered with; refusing to serve the release")
            stamp = archive_stamp(partial)
            if stamp != (name, version):
                partial.unlink()
                raise ReleaseError(f"{what} was built as {stamp[0]} {stamp[1]}, not {name} {version}")
            partial.rename(path)
            archives[(name, version)] = path
    return release, archives


def register(release: Release, archives: dict[tuple[str, str], Path], management: Management,
             log: Callable[[str], None] = print) -> None:
    """Registers every version of the release (its workers READY) and sets each default.
    Raises ReleaseError at the first version that does not load."""
    for name, model in sorted(release.models.items()):
        # The default first: TorchServe makes the first version registered under a name its default.
        for version in sorted(model.versions, key=lambda v: (v != model.default, version_key(v))):
            entry = model.versions[version]
            try:
                management.call("POST", "/models", url=archives[(name, version)].name, model_name=name,
                                initial_workers=entry.workers, batch_size=entry.batch_size,
                                max_batch_delay=entry.max_batch_delay_ms, synchronous="true")
                described = management.call("GET", f"/models/{name}/{version}")
            except ManagementError as error:
                raise ReleaseError(f"release {release.release_id}: {name} {version} did not load: {error}") from None
            if not any(w.get("status") == "READY" for d in described for w in d.get("workers", [])):
                raise ReleaseError(f"release {release.release_id}: {name} {version} has no READY worker "
                                   "(its worker log, model_log.log, has the traceback)")
            log(f"registered {name} {version}")
        try:
            management.call("PUT", f"/models/{name}/{model.default}/set-default")
        except ManagementError as error:
            raise ReleaseError(f"release {release.release_id}: cannot make {name} {model.default} the default: {error}") from None


def s3_client():
    import boto3  # only where a release is served: a task without one never imports it

    return boto3.client("s3")


def _get(s3, bucket: str, key: str, what: str) -> bytes:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:  # noqa: BLE001 - botocore's errors, named in the one line the operator reads
        raise ReleaseError(f"cannot read {what}: {_aws_reason(error)}") from None


def _download(s3, bucket: str, key: str, path: Path, what: str) -> None:
    try:
        s3.download_file(bucket, key, str(path))
    except Exception as error:  # noqa: BLE001 - as in _get
        path.unlink(missing_ok=True)
        raise ReleaseError(f"cannot download {what}: {_aws_reason(error)}") from None


def _aws_reason(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    if code in ("NoSuchKey", "404", "NotFound"):
        return "it is not in the store (missing)"
    if code in ("AccessDenied", "403"):  # also S3's answer for a missing key to a role that may not list
        return "access denied: missing from the store, or not readable by this task's role"
    return f"{type(error).__name__}: {error}"
