"""scripts/push.py against a real moto server on 127.0.0.1 (the moto_endpoint and aws fixtures).

moto serves ECR's API but has no registry, so the container engine is faked: by a recorder
(in-process) or by a small script standing in for docker/podman (push.py as a subprocess), whose
`push` uploads the manifest through ECR's API as a registry would. Everything else is real: boto3
honouring AWS_ENDPOINT_URL, the script's checks and its ECR calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import boto3
import pytest

from objdetect_serving.paths import ROOT
from objdetect_tools import push

pytestmark = pytest.mark.integration

NAME = "objdetect"


COCO = "fasterrcnn_resnet50_fpn_v2"


class Recorder:
    """Stands in for subprocess: records each command (and its stdin), answers image inspect with
    the local image's labels and, given put_image, leaves a push's manifest in ECR as a registry would."""

    def __init__(self, revision: str = "", model: str = COCO, put_image=None):
        self.commands: list[list[str]] = []
        self.inputs: list[str | None] = []
        self.labels = {push.REVISION_LABEL: revision, push.MODEL_LABEL: model}
        self.put_image = put_image

    def __call__(self, command, *, input=None, capture=False):
        self.commands.append(command)
        self.inputs.append(input)
        if command[1:3] == ["image", "inspect"]:
            return next(value for label, value in self.labels.items() if f'"{label}"' in command[4]) + "\n"
        if command[1] == "push" and self.put_image:
            self.put_image(command[2].rsplit(":", 1)[1])
        return ""


def inspect_model(image: str = "objdetect:cuda") -> list[str]:
    return ["podman", "image", "inspect", "--format", f'{{{{ index .Config.Labels "{push.MODEL_LABEL}" }}}}', image]


def build_command(model: str = COCO, weights: str = "", labels: str = "") -> list[str]:
    return ["make", "-C", str(ROOT), "image", "FLAVOR=cuda", f"MODEL={model}", f"WEIGHTS={weights}",
            f"LABELS={labels}"]


def test_push_finds_the_repository_and_pushes_with_a_login_on_stdin(aws, make_repository, put_image):
    ecr = boto3.client("ecr")
    repository = make_repository()
    remote = f"{repository['repositoryUri']}:abc1234"
    recorder = Recorder(put_image=put_image)

    result = push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda",
                       build_flavor="cuda", engine="podman", run=recorder, log=lambda _: None)

    assert result == remote
    registry = repository["repositoryUri"].split("/")[0]
    assert recorder.commands == [
        build_command(),
        inspect_model(),
        ["podman", "tag", "objdetect:cuda", remote],
        ["podman", "login", "--username", "AWS", "--password-stdin", registry],
        ["podman", "push", remote],
    ]
    login = recorder.commands.index(["podman", "login", "--username", "AWS", "--password-stdin", registry])
    password = recorder.inputs[login]
    assert password and all(password not in part for command in recorder.commands for part in command)


def test_push_fails_clearly_when_the_repository_is_missing(aws):
    recorder = Recorder()
    with pytest.raises(push.PushError, match=r"repository 'objdetect' does not exist.*terraform"):
        push.push(boto3.client("ecr"), repository_name=NAME, tag="abc1234", local_image="objdetect:cuda",
                  build_flavor="cuda", engine="podman", run=recorder, log=lambda _: None)
    assert recorder.commands == []  # nothing built, nothing created
    assert boto3.client("ecr").describe_repositories()["repositories"] == []


def test_push_refuses_an_existing_tag_before_building_or_pushing(aws, make_repository, put_image):
    ecr = boto3.client("ecr")
    make_repository()
    digest = put_image("abc1234")
    recorder = Recorder()
    with pytest.raises(push.PushError, match=rf"already exists \({digest}\): tags are immutable"):
        push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda",
                  build_flavor="cuda", engine="podman", run=recorder, log=lambda _: None)
    assert recorder.commands == []


def test_push_refuses_a_local_image_built_from_another_commit(aws, make_repository):
    ecr = boto3.client("ecr")
    make_repository()
    recorder = Recorder(revision="1111111")
    with pytest.raises(push.PushError, match="built from revision 1111111, not abc1234"):
        push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda", build_flavor=None,
                  engine="podman", verify_commit="abc1234", run=recorder, log=lambda _: None)
    assert [c[1] for c in recorder.commands] == ["image"]  # inspected; never tagged or pushed


def test_push_script_builds_the_coco_model_unless_told_otherwise(aws, make_repository, put_image):
    make_repository()
    recorder = Recorder(put_image=put_image)
    assert push.main(["--tag", "abc1234", "--engine", "podman"], run=recorder) == 0
    assert recorder.commands[0] == build_command(model="fasterrcnn_resnet50_fpn_v2")


def test_push_script_hands_weights_and_labels_to_the_build(aws, make_repository, put_image, tmp_path, monkeypatch):
    make_repository()
    (tmp_path / "ft.pt").write_bytes(b"checkpoint")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    monkeypatch.chdir(tmp_path)  # named relative to here; make runs in the checkout
    recorder = Recorder(model="fasterrcnn_mobilenet_v3_large_fpn", put_image=put_image)
    assert push.main(["--tag", "abc1234", "--engine", "podman", "--model", "fasterrcnn_mobilenet_v3_large_fpn",
                      "--weights", "ft.pt", "--labels", "labels.txt"], run=recorder) == 0
    assert recorder.commands[0] == build_command("fasterrcnn_mobilenet_v3_large_fpn", weights=str(tmp_path / "ft.pt"),
                                                 labels=str(tmp_path / "labels.txt"))


@pytest.mark.parametrize("missing", ["weights", "labels", "both"])
def test_push_script_refuses_missing_weights_or_labels_before_building_or_pushing(
        aws, make_repository, tmp_path, capsys, missing):
    make_repository()
    files = {"weights": tmp_path / "ft.pt", "labels": tmp_path / "labels.txt"}
    for name, path in files.items():
        if missing not in (name, "both"):
            path.write_text("x")
    recorder = Recorder()
    assert push.main(["--tag", "abc1234", "--engine", "podman", "--weights", str(files["weights"]),
                      "--labels", str(files["labels"])], run=recorder) == 1
    error = capsys.readouterr().err
    for name, path in files.items():
        assert (f"--{name} {path} is not a file" in error) == (missing in (name, "both")), error
    assert "nothing was built or pushed" in error
    assert recorder.commands == []
    assert boto3.client("ecr").list_images(repositoryName=NAME)["imageIds"] == []


def test_push_refuses_weights_without_a_build(aws, make_repository, tmp_path):
    make_repository()
    (tmp_path / "ft.pt").write_bytes(b"checkpoint")
    recorder = Recorder()
    with pytest.raises(push.PushError, match="baked in by the build: drop --no-build"):
        push.push(boto3.client("ecr"), repository_name=NAME, tag="abc1234", local_image="objdetect:cuda",
                  build_flavor=None, engine="podman", weights=tmp_path / "ft.pt", run=recorder, log=lambda _: None)
    assert recorder.commands == []


def test_push_refuses_a_local_image_of_the_shapes_model_unless_asked_for(aws, make_repository, put_image):
    ecr = boto3.client("ecr")
    make_repository()
    recorder = Recorder(model="shapes", put_image=put_image)
    with pytest.raises(push.PushError, match=f"serves model shapes, not {COCO}"):
        push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda", build_flavor=None,
                  engine="podman", run=recorder, log=lambda _: None)
    assert recorder.commands == [inspect_model()]  # never tagged or pushed

    push.push(ecr, repository_name=NAME, tag="abc1234", local_image="objdetect:cuda", build_flavor=None,
              engine="podman", model="shapes", run=recorder, log=lambda _: None)
    assert [c[1] for c in recorder.commands] == ["image", "image", "tag", "login", "push"]


def test_default_tag_is_the_commit_and_needs_a_clean_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "c")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert push.default_tag(tmp_path) == commit
    (tmp_path / "f").write_text("2")
    with pytest.raises(push.PushError, match="uncommitted changes"):
        push.default_tag(tmp_path)


FAKE_ENGINE = textwrap.dedent("""\
    #!{python}
    # Stands in for docker/podman: logs its arguments and stdin; `push` stores the manifest in ECR
    # through the API (moto has no registry), as a real registry push would.
    import json, sys
    import boto3
    args = sys.argv[1:]
    stdin = sys.stdin.read() if "--password-stdin" in args else ""
    with open({log!r}, "a") as log:
        log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
    if args[:2] == ["image", "inspect"]:  # the image's labels: it serves the COCO model
        print("{coco}" if {model_label!r} in args[3] else "")
    if args[0] == "push":
        repository, tag = args[1].rsplit("/", 1)[1].split(":")
        manifest = {{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {{"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                               "digest": "sha256:" + "e" * 64}}, "layers": []}}
        boto3.client("ecr").put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    """)


def test_push_script_end_to_end_then_refuses_the_same_tag(aws, tmp_path, make_repository):
    repository = make_repository()
    log = tmp_path / "engine.log"
    engine = tmp_path / "fake-engine"
    engine.write_text(FAKE_ENGINE.format(python=sys.executable, log=str(log), coco=COCO,
                                         model_label=push.MODEL_LABEL))
    engine.chmod(0o755)
    command = [sys.executable, str(ROOT / "scripts" / "push.py"), "--no-build", "--tag", "0123abc",
               "--engine", str(engine)]

    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    remote = f"{repository['repositoryUri']}:0123abc"
    assert f"pushed {remote} (sha256:" in first.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["args"] for c in calls] == [
        inspect_model()[1:],
        ["tag", "objdetect:cuda", remote],
        ["login", "--username", "AWS", "--password-stdin", repository["repositoryUri"].split("/")[0]],
        ["push", remote],
    ]
    assert calls[2]["stdin"]  # the token's password, on stdin only

    second = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert "already exists" in second.stderr and "tags are immutable" in second.stderr
    assert len(log.read_text().splitlines()) == 4  # the engine was not called again
