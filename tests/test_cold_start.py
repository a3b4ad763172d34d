"""`make cold-start`: real servers started per runtime, timed to their first answered prediction."""

import re
import time

import pytest
import torch

from objdetect import openvino_runtime
from objdetect.settings import Settings
from objdetect_serving.torchserve import free_port
from objdetect_tools import cold_start


@pytest.mark.unit
def test_first_prediction_gives_up_at_once_when_the_server_is_gone():
    started = time.monotonic()
    seconds, answer = cold_start.first_prediction(f"http://127.0.0.1:{free_port()}/predictions/detector", b"x",
                                                  started, limit_s=60, alive=lambda: False)
    assert (seconds, answer) == (None, None) and time.monotonic() - started < 5


@pytest.mark.integration
def test_cold_start_times_each_runtime_from_server_start_to_an_answer(capsys):
    assert cold_start.main(["--models", "shapes", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = {m["setting"]: m for m in re.finditer(
        r"^\| shapes \| (?P<setting>\w+) \| (?P<ran>[^|]+) \| (?P<first>[\d.]+) \| (?P<load>\d+) \| (?P<warm>\d+) \|$",
        out, re.M)}
    assert set(rows) == {"torch", "openvino"}, out
    defaults = Settings.load({}, {})
    precision, ran = openvino_runtime.choose("openvino", defaults.cpu_precision, torch.device("cpu"))
    # Each server ran what its setting asked for: the row reads the worker's own log line.
    assert rows["openvino"]["ran"].strip() == ran and rows["torch"]["ran"].strip() == "torch (runtime=torch)"
    for row in rows.values():
        assert 0 < float(row["first"]) < 120 and int(row["warm"]) > 0
    if precision:  # the compile table: no cache, the cache written, the cache read
        compiled = re.search(rf"^\| shapes \| {precision} \| (\d+) \| (\d+) \| (\d+) \|$", out, re.M)
        assert compiled and int(compiled[1]) > 0, out
