"""The git commit a build or a measurement comes from."""

from __future__ import annotations

import subprocess
from pathlib import Path

from objdetect_serving.paths import ROOT


class RevisionError(RuntimeError):
    pass


def git_commit(root: Path = ROOT) -> str:
    """The short commit of HEAD."""
    return _git(root, "rev-parse", "--short", "HEAD")


def working_tree_dirty(root: Path = ROOT) -> bool:
    """Whether tracked files differ from HEAD (an image or a measurement of them is not of the commit)."""
    return bool(_git(root, "status", "--porcelain", "--untracked-files=no"))


def describe(root: Path = ROOT) -> str | None:
    """The commit, marked -dirty when tracked files differ from it; None outside a git checkout."""
    try:
        return git_commit(root) + ("-dirty" if working_tree_dirty(root) else "")
    except RevisionError:
        return None


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    except OSError as error:
        raise RevisionError(f"git {' '.join(args)}: {error}") from None
    if done.returncode != 0:
        raise RevisionError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()
