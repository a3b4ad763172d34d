"""A release's manifest and where it lives (objdetect_serving.release), and the health check's
refusal of a server that has not registered all it was started for; no S3, no server."""

from __future__ import annotations

import hashlib

import pytest

from objdetect_serving import release, torchserve
from objdetect_serving.drain import marker
from objdetect_serving.release import Model, Release, ReleaseError, Store, Version
from objdetect_serving.torchserve import free_port

pytestmark = pytest.mark.unit

LABELS = ("__background__", "circle", "square")


def sample(**changes) -> Release:
    versions = {"1.0": Version("a" * 64, 100, "shapes", LABELS),
                "2.0": Version("b" * 64, 200, "shapes", LABELS, batch_size=8, max_batch_delay_ms=10, workers=2)}
    fields = {"release_id": "20261207T000000Z-0123abcd", "created_at": "2026-12-07T00:00:00Z",
              "models": {"detector": Model("2.0", versions)}, **changes}
    return Release(**fields)


def test_a_manifest_reads_back_as_written_and_its_bytes_do_not_depend_on_insertion_order():
    written = sample()
    assert Release.from_json(written.to_json()) == written
    reordered = sample(models={"detector": Model("2.0", dict(reversed(written.models["detector"].versions.items())))})
    assert hashlib.sha256(reordered.to_json()).hexdigest() == hashlib.sha256(written.to_json()).hexdigest()
    assert written.summary() == "detector 2.0 (default), 1.0"


@pytest.mark.parametrize("change, message", [
    ({"models": {}}, "lists no models"),
    ({"models": {"detector": Model("3.0", {"1.0": Version("a" * 64, 1, "shapes", LABELS)})}}, "default 3.0 is not one"),
    ({"models": {"detector": Model("1.0", {"1.0": Version("A" * 64, 1, "shapes", LABELS)})}}, "is not a SHA-256"),
    ({"models": {"detector": Model("1.0", {"1.0": Version("a" * 64, 1, "shapes", LABELS, workers=0)})}}, "below 1"),
    ({"models": {"../x": Model("1.0", {"1.0": Version("a" * 64, 1, "shapes", LABELS)})}}, "not a model name"),
    ({"models": {"detector": Model("1 0", {"1 0": Version("a" * 64, 1, "shapes", LABELS)})}}, "not a version"),
])
def test_a_manifest_that_cannot_be_served_as_written_is_refused(change, message):
    with pytest.raises(ReleaseError, match=message):
        Release.from_json(sample(**change).to_json())


def test_a_manifest_of_another_format_or_shape_is_refused():
    with pytest.raises(ReleaseError, match="format 2"):
        Release.from_json(sample().to_json().replace(b'"format": 1', b'"format": 2'))
    with pytest.raises(ReleaseError, match="is not a release manifest"):
        Release.from_json(b'{"format": 1, "models": []}')


def test_the_store_and_its_keys_follow_from_a_release_uri_with_or_without_a_prefix():
    assert Store.of_release("s3://models-bucket/releases/r1.json") == Store("models-bucket")
    prefixed = Store.of_release("s3://models-bucket/team/a/releases/r1.json")
    assert prefixed == Store("models-bucket", "team/a")
    assert prefixed.archive_key("c" * 64) == f"team/a/archives/{'c' * 64}.mar"
    assert prefixed.uri(prefixed.release_key("r1")) == "s3://models-bucket/team/a/releases/r1.json"
    assert Store.parse("s3://models-bucket/team/a/").version_key("detector", "2.0") == "team/a/versions/detector/2.0.json"
    for wrong in ("s3://models-bucket/r1.json", "https://models-bucket/releases/r1.json", ""):
        with pytest.raises(ReleaseError):
            Store.of_release(wrong)


def test_versions_order_as_people_read_them():
    assert sorted(["1.10", "1.9", "2.0", "1.2"], key=release.version_key) == ["1.2", "1.9", "1.10", "2.0"]


def test_the_health_check_fails_until_the_server_is_marked_serving_and_while_it_drains(capsys):
    port = free_port()  # nothing listens: a marked server still needs a READY worker
    torchserve.serving_marker(port).unlink(missing_ok=True)
    assert torchserve.check("detector", port) == 1
    assert "not every model" in capsys.readouterr().out
    try:
        torchserve.serving_marker(port).touch()
        assert torchserve.check("detector", port) == 1 and "not every model" not in capsys.readouterr().out
        marker(port).touch()
        assert torchserve.check("detector", port) == 1 and "draining" in capsys.readouterr().out
    finally:
        torchserve.serving_marker(port).unlink(missing_ok=True)
        marker(port).unlink(missing_ok=True)
