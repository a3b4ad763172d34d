"""`scripts/<command>.py --help` prints the command's usage and does nothing else.

Several commands start long or costly work (an image build of many GB, a benchmark, TorchServe,
AWS calls), so an option they ignore would start it. Each script runs as `make` runs it, from the
checkout's root with the project's python, but in a copy of the checkout (its imports and every
path below the checkout resolve into the copy, which nobody else edits while it runs), with an
empty HOME and TMPDIR, and with container engines, package installers, terraform and Java on PATH
replaced by stand-ins that only record their call. It must exit 0 within SECONDS with a usage line
on stdout and nothing on stderr, and leave behind no process, no new or changed file (in the copy,
HOME or TMPDIR) and no stand-in call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from objdetect_serving.paths import ROOT

pytestmark = pytest.mark.integration  # each command runs as a subprocess

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))
# Per command: starting Python and importing torch, torchvision, boto3 or locust on a loaded
# 2-core machine takes a few seconds; any real work (a build, a server, a benchmark) takes minutes.
SECONDS = 30
# What a command must not start on --help: container engines and what sets them up (an image
# build), package installs, terraform, Java (TorchServe's frontend), AWS's CLI, locust.
STAND_INS = ("docker", "podman", "buildah", "debootstrap", "apt-get", "apt", "terraform", "java", "javac", "aws",
             "locust", "torchserve")
SKIPPED = {".git", ".venv", ".venv-checkov", "__pycache__", ".pytest_cache", ".hypothesis"}
# The one thing allowed to appear: torch._dynamo, which importing torchvision imports, makes its
# (empty) cache folder in the temporary directory on import, whatever the command.
TORCH_CACHE = "torchinductor_*"


def files_under(root: Path) -> dict[str, int]:
    """Every file below `root` with its modification time, but for venvs, git's and Python's caches."""
    found = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED]
        for name in files:
            path = Path(folder, name)
            try:
                found[str(path.relative_to(root))] = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
    return found


def changed(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return sorted(path for path, mtime in after.items() if before.get(path) != mtime)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the checkout, but for venvs and caches."""
    copy = tmp_path_factory.mktemp("checkout") / ROOT.name
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*SKIPPED), symlinks=True)
    return copy


def environment(checkout: Path, **folders: Path) -> dict[str, str]:
    """The checkout's packages imported from the copy, ahead of the editable install's path to the
    checkout itself; HOME, TMPDIR and the front of PATH from `folders` when given."""
    python_path = [str(checkout / "handlers"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path), "PYTHONDONTWRITEBYTECODE": "1"}
    if folders:
        env |= {"HOME": str(folders["home"]), "TMPDIR": str(folders["tmp"]),
                "PATH": f"{folders['path_first']}{os.pathsep}{os.environ.get('PATH', '')}"}
    return env


def test_there_are_commands_to_check():
    assert len(SCRIPTS) >= 15 and ROOT / "scripts" / "image_test.py" in SCRIPTS


def test_the_commands_run_in_the_copy(checkout):
    """Else what the commands write below the checkout would go unseen."""
    where = subprocess.run([sys.executable, "-c", "import objdetect_serving.paths as p, objdetect_tools as t; "
                            "print(p.ROOT); print(t.__file__)"],
                           cwd=checkout, env=environment(checkout), capture_output=True, text=True, timeout=SECONDS)
    root, tools = where.stdout.split()
    assert Path(root) == checkout and Path(tools).is_relative_to(checkout), where.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_help_prints_usage_and_does_nothing_else(script, checkout, tmp_path):
    home, tmp, stand_ins = (tmp_path / name for name in ("home", "tmp", "bin"))
    for folder in (home, tmp, stand_ins):
        folder.mkdir()
    calls = tmp_path / "calls.log"
    for name in STAND_INS:
        stand_in = stand_ins / name
        stand_in.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        stand_in.chmod(0o755)
    before = files_under(checkout)

    command = subprocess.Popen([sys.executable, str(checkout / "scripts" / script.name), "--help"], cwd=checkout,
                               env=environment(checkout, home=home, tmp=tmp, path_first=stand_ins),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own session: whatever it starts is found below
    try:
        stdout, stderr = command.communicate(timeout=SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(command.pid, 9)
        command.communicate()
        pytest.fail(f"{script.name} --help, or a process it started with its output, still ran after {SECONDS} s")
    left = [process for process in psutil.process_iter() if _session(process) == command.pid]
    for process in left:
        process.kill()

    assert command.returncode == 0, stderr
    assert stdout.startswith("usage: "), stdout
    assert stderr == ""
    assert left == []
    assert not calls.exists(), calls.read_text()
    torch_cache = list(tmp.glob(TORCH_CACHE))
    assert [path for folder in (home, tmp) for path in folder.rglob("*") if path not in torch_cache] == []
    assert changed(before, files_under(checkout)) == []


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None
