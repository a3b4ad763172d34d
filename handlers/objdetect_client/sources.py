"""Sources: what a user points at (image files, folders, http(s) URLs, s3:// prefixes), expanded to
one name per image, and read."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

import requests

from .errors import describe
# The formats the server decodes (docs/api.md); a folder's other files are not images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
URL_SCHEMES = ("http://", "https://")


class SourceError(ValueError):
    pass


def is_url(name: str) -> bool:
    return name.startswith(URL_SCHEMES)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def expand(specs: Iterable[str]) -> list[str]:
    """Each spec as the images it names, in order, each once: a file as itself, a folder as its
    images (recursively, by extension, sorted), a URL as itself, s3://bucket/prefix as its images."""
    names: dict[str, None] = {}
    for spec in specs:
        if is_url(spec):
            names[spec] = None
        elif spec.startswith("s3://"):
            names.update(dict.fromkeys(_s3_images(spec)))
        elif Path(spec).is_dir():
            images = sorted(p for p in Path(spec).rglob("*") if p.is_file() and is_image_name(p.name))
            names.update(dict.fromkeys(map(str, images)))
        elif Path(spec).is_file():
            names[spec] = None
        else:
            raise SourceError(f"{spec}: no such file or folder (and not an http(s):// or s3:// URL)")
    return list(names)


def read_list(path: str) -> list[str]:
    """A file of sources, one per line (blank lines and # comments skipped); "-" reads stdin."""
    text = open(0).read() if path == "-" else Path(path).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read(name: str, timeout_s: float = 30) -> bytes:
    """The image's bytes. Raises OSError when it cannot be read (a file, a download, an S3 object)."""
    if is_url(name):
        try:
            response = requests.get(name, timeout=timeout_s)
        except requests.RequestException as error:
            raise OSError(f"download failed: {describe(error)}") from error
        if not response.ok:
            raise OSError(f"download failed: HTTP {response.status_code} {response.reason}")
        return response.content
    if name.startswith("s3://"):
        bucket, key = _split_s3(name)
        client = _s3()
        from botocore.exceptions import BotoCoreError, ClientError  # there when boto3 is

        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise OSError(f"S3: {error}") from error
    return Path(name).read_bytes()


def _s3_images(url: str) -> list[str]:
    """Every image key under the prefix. A listing refused or failed is the user's to fix (credentials,
    bucket name), so it is a SourceError: nothing has been sent yet."""
    bucket, prefix = _split_s3(url)
    client = _s3()
    from botocore.exceptions import BotoCoreError, ClientError  # there when boto3 is

    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [f"s3://{bucket}/{item['Key']}" for page in pages for item in page.get("Contents", [])
                if is_image_name(item["Key"])]
    except (BotoCoreError, ClientError) as error:
        raise SourceError(f"{url}: {error}") from None


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise SourceError(f"{url}: not s3://bucket/prefix")
    return bucket, key


@functools.cache
def _s3():
    """One S3 client (thread-safe, unlike boto3's sessions) with the user's credentials and region."""
    try:
        import boto3
    except ImportError:
        raise SourceError("s3:// sources need boto3: install the client with its s3 extra "
                          "(pip install './handlers/objdetect_client[s3]' in a checkout)") from None
    return boto3.client("s3")
