"""The results file: JSON Lines, one Result per image, written as each completes, so an interrupted
run keeps every answer it got and `--resume` sends only the rest."""

from __future__ import annotations

import json
from pathlib import Path

from .result import Result


def load(path: Path) -> dict[str, Result]:
    """Each source's last Result. A torn last line (the run was killed mid-write) is ignored."""
    results: dict[str, Result] = {}
    lines = path.read_text().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            result = Result.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as error:
            if number == len(lines):  # no newline after it: torn
                break
            raise ValueError(f"{path}:{number}: not a result line ({error})") from None
        results[result.source] = result
    return results


class ResultsFile:
    """Read at once, or with `resume` after what an earlier run recorded (`done`: the sources not
    to send again, i.e. all but transient failures, which are sent again and recorded anew).
    Written once entered (`with`): afresh, or appended to after a resume's records, so a run that
    stops before sending anything (an unreachable service) leaves an earlier file as it was."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = path
        self._recorded = load(path) if resume and path.exists() else {}
        self.done = {source for source, result in self._recorded.items() if not result.transient}
        self._file = None

    def write(self, result: Result) -> None:
        self._file.write(json.dumps(result.to_json()) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()

    def __enter__(self) -> "ResultsFile":
        if self._recorded:
            _drop_torn_tail(self.path)
        self._file = open(self.path, "a" if self._recorded else "w")
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
