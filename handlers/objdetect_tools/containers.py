"""The container engine, and the image built with it (`make image`).

docker where a Docker engine with buildx runs; otherwise buildah and podman, installed and set
up for an unprivileged sandbox (chroot isolation, cgroupfs, file events, explicit ulimits), with
a Debian base image made by debootstrap: what works on the machines this project is built on,
which have no Docker engine and reach no registry (docs/image.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from objdetect_serving.paths import ROOT

from .revision import RevisionError, git_commit

CONFIG_DIR = ROOT / "build" / "containers"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "localhost/objdetect-base:bookworm")
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
CA_BUNDLE = Path(os.environ.get("CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
# The Dockerfile's stage that a fine-tuned checkpoint replaces with a build context of this name.
MODEL_INPUT = "model-input"
PODMAN_PACKAGES = ("buildah", "podman", "debootstrap", "runc", "uidmap", "netavark", "aardvark-dns",
                   "containernetworking-plugins")
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
STORAGE_CONF = """\
[storage]
driver = "{driver}"
runroot = "/var/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""


def engine() -> str:
    """docker when a Docker engine with buildx answers, else podman."""
    docker = all(_succeeds(["docker", *args]) for args in (["buildx", "version"], ["info"]))
    return "docker" if docker else "podman"


def _succeeds(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except OSError:  # not installed
        return False


def podman_environment() -> dict[str, str]:
    """The configuration set_up_podman wrote (where the images are kept), once it exists.
    Only podman and buildah read these variables."""
    env = {"BUILDAH_ISOLATION": "chroot"}
    for variable, name in (("CONTAINERS_CONF", "containers.conf"), ("CONTAINERS_STORAGE_CONF", "storage.conf")):
        if (CONFIG_DIR / name).exists():
            env[variable] = str(CONFIG_DIR / name)
    return env


def engine_environment() -> dict[str, str]:
    """os.environ with podman's configuration (which docker ignores), for running the engine."""
    return {**podman_environment(), **os.environ}


def set_up_podman() -> None:
    """buildah and podman installed (Debian) and configured, and the base image made."""
    if not (shutil.which("buildah") and shutil.which("podman")):
        print("image: installing buildah and podman", file=sys.stderr)
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=apt, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PODMAN_PACKAGES],
                       env=apt, check=True, stdout=subprocess.DEVNULL)
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    (CONFIG_DIR / "containers.conf").write_text(CONTAINERS_CONF)
    (CONFIG_DIR / "storage.conf").write_text(STORAGE_CONF.format(driver=os.environ.get("STORAGE_DRIVER", "overlay")))
    env = engine_environment()
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode != 0:
        print(f"image: making {BASE_IMAGE} with debootstrap (about a minute)", file=sys.stderr)
        with tempfile.TemporaryDirectory() as rootfs:
            subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                            "bookworm", rootfs, DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
            # A slim base: no package caches, docs, man pages or locales (as the python:*-slim images).
            for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                            "usr/share/doc/*", "usr/share/man/*", "usr/share/locale/*", "usr/share/info/*"):
                for path in Path(rootfs).glob(pattern):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            with subprocess.Popen(["tar", "--numeric-owner", "-C", rootfs, "-cf", "-", "."],
                                  stdout=subprocess.PIPE) as tar:
                subprocess.run(["podman", "import", "--quiet", "-", BASE_IMAGE], stdin=tar.stdout, env=env,
                               check=True, stdout=subprocess.DEVNULL)
            if tar.returncode != 0:
                raise SystemExit(f"image: packing the debootstrap root for {BASE_IMAGE} failed")


def missing_model_files(weights: Path | None, labels: Path | None) -> list[str]:
    """What is wrong with a checkpoint and labels file to bake in: said before a build starts, not
    minutes into it."""
    return [f"--{flag} {path} is not a file" for flag, path in (("weights", weights), ("labels", labels))
            if path is not None and not Path(path).is_file()]


@contextmanager
def model_input(weights: Path | None, labels: Path | None) -> Iterator[list[str]]:
    """Build arguments that hand a checkpoint and its labels file to the build: the MODEL_INPUT
    build context, a folder that holds only them (hard links, or copies across file systems), and
    WEIGHTS and LABELS naming them in it. A folder of their own, because they may live anywhere:
    outside the checkout, or in git-ignored places that .dockerignore keeps out of the main context.
    Their file names stay, since the archive records the checkpoint's name as its provenance."""
    files = [(name, Path(path)) for name, path in (("weights", weights), ("labels", labels)) if path is not None]
    if not files:
        yield []
        return
    CONFIG_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{MODEL_INPUT}-", dir=CONFIG_DIR.parent) as folder:
        args = ["--build-context", f"{MODEL_INPUT}={folder}"]
        for name, path in files:
            staged = Path(folder) / name / path.name
            staged.parent.mkdir()
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
            args += ["--build-arg", f"{name.upper()}={name}/{path.name}"]
        yield args


def build(flavor: str, model: str, log: Path | None = None, *, weights: Path | None = None,
          labels: Path | None = None) -> tuple[str, str]:
    """Builds objdetect:<flavor> serving `model`, with the checkpoint `weights` (and its `labels`)
    instead of the model's default weights when given; returns (engine, tag). The build's output
    goes to `log` when given, else to our console."""
    tag = f"objdetect:{flavor}"
    try:
        revision = git_commit()
    except RevisionError:
        revision = "unknown"
    args = ["--build-arg", f"FLAVOR={flavor}", "--build-arg", f"MODEL={model}", "--build-arg", f"REVISION={revision}"]
    if CA_BUNDLE.is_file() and CA_BUNDLE.stat().st_size:
        args += ["--secret", f"id=cacert,src={CA_BUNDLE}"]  # TLS is intercepted here; never baked in
    tool = engine()
    with open(log, "w") if log else nullcontext() as output, model_input(weights, labels) as checkpoint:
        args += checkpoint
        if tool == "docker":
            subprocess.run(["docker", "buildx", "build", "--load", *args, "-t", tag, "."], cwd=ROOT, check=True,
                           stdout=output, stderr=subprocess.STDOUT if output else None)
            return tool, tag
        set_up_podman()
        # --force-rm: a failed build leaves no multi-GB working container behind. The layer cache of
        # this build is kept; images of earlier builds that nothing tags any more are pruned (GBs each).
        subprocess.run(["buildah", "build", "--format", "docker", "--layers", "--force-rm", "--network", "host",
                        *args, *_wheel_mirror_args(), "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag, "."],
                       cwd=ROOT, env=engine_environment(), check=True, stdout=output,
                       stderr=subprocess.STDOUT if output else None)
    subprocess.run(["podman", "image", "prune", "--force"], env=engine_environment(), check=True,
                   stdout=subprocess.DEVNULL)
    return tool, tag


def _wheel_mirror_args() -> list[str]:
    """pip's local wheel mirrors on this machine (file:// indexes and find-links), mounted read-only
    into the build and named to its pip."""
    args = []
    for key, variable in (("extra-index-url", "PIP_EXTRA_INDEX_URL"), ("find-links", "PIP_FIND_LINKS")):
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{key}"],
                              capture_output=True, text=True)
        value = done.stdout.strip() if done.returncode == 0 else ""
        if not value:
            continue
        for location in value.split():
            folder = location.removeprefix("file://").removesuffix("/simple")
            if Path(folder).is_dir():
                args += ["-v", f"{folder}:{folder}:ro"]
        args += ["--build-arg", f"{variable}={value}"]
    return args


def sizes(tool: str, tag: str) -> tuple[int, int]:
    """(uncompressed, compressed) bytes. Uncompressed: the engine's own image size (its layers
    summed). Compressed: each layer tar gzip-compressed at level 6, as `docker push` uploads it and
    ECR stores it, summed; computed while streaming `<engine> save`, so no copy lands on disk."""
    env = engine_environment()
    raw = int(subprocess.run([tool, "image", "inspect", "--format", "{{.Size}}", tag], env=env, check=True,
                             capture_output=True, text=True).stdout.strip())
    save = [tool, "save", tag] if tool == "docker" else [tool, "save", "--format", "docker-archive", tag]
    compressed = 0
    with subprocess.Popen(save, stdout=subprocess.PIPE, env=env) as saving:
        with tarfile.open(fileobj=saving.stdout, mode="r|") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".tar"):
                    layer = archive.extractfile(member)
                    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
                    for chunk in iter(lambda: layer.read(1 << 22), b""):
                        compressed += len(compressor.compress(chunk))
                    compressed += len(compressor.flush())
        if saving.wait() != 0:
            raise SystemExit(f"{tool} save {tag} failed")
    return raw, compressed


def describe_sizes(tag: str, raw: int, compressed: int) -> str:
    return f"{tag} {raw / 1e9:.2f} GB uncompressed, {compressed / 1e9:.2f} GB compressed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build objdetect:<flavor> and print its sizes on one line.")
    parser.add_argument("--flavor", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="shapes", help="the registry model the image serves")
    parser.add_argument("--weights", type=Path, help="a fine-tuned checkpoint of --model to bake in instead of "
                                                     "its default weights")
    parser.add_argument("--labels", type=Path, help="the checkpoint's labels file: one class per line")
    args = parser.parse_args(argv)
    problems = missing_model_files(args.weights, args.labels)
    if problems:
        parser.error("; ".join(problems))
    try:
        tool, tag = build(args.flavor, args.model, weights=args.weights, labels=args.labels)
    except subprocess.CalledProcessError as error:
        print(f"image: `{' '.join(map(str, error.cmd[:3]))} ...` exited with {error.returncode}", file=sys.stderr)
        return 1
    print(describe_sizes(tag, *sizes(tool, tag)))
    return 0
