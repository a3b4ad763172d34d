"""The worker's part of a drain (objdetect/drain.py) and the device choice, without TorchServe;
the whole drain against a real server is in test_faults.py."""

import json
import os

import pytest
import torch

from objdetect.drain import HEADER, TOKEN_ENV, Drain
from objdetect.messages import Request, Response
from objdetect.predict import choose_device
from objdetect_serving import drain as server_drain

pytestmark = pytest.mark.unit


def served(requests):
    return [Response(200, b"served") for _ in requests]


def stop(token="secret"):
    return Request({"body": b""}, {HEADER: token})


def test_a_stop_request_is_answered_with_the_pid_its_batch_served_and_later_batches_refused():
    drain = Drain({TOKEN_ENV: "secret"})
    first = drain.answer([Request({"body": b"a"}), stop(), Request({"body": b"b"})], served)
    assert [r.body for r in first[::2]] == [b"served", b"served"]
    assert json.loads(first[1].body) == {"stopped": True, "pid": os.getpid()}
    later = drain.answer([Request({"body": b"c"}), stop()], served)
    assert {r.status for r in later} == {503}
    assert json.loads(later[0].body)["error"] == "shutting_down"


@pytest.mark.parametrize("environ, sent", [({TOKEN_ENV: "secret"}, "guess"), ({TOKEN_ENV: "secret"}, ""), ({}, "")],
                         ids=["wrong token", "empty token", "no token configured"])
def test_without_the_servers_token_a_request_is_only_a_request(environ, sent):
    drain = Drain(environ)
    assert [r.body for r in drain.answer([stop(sent)], served)] == [b"served"]
    assert not drain.stopped


def test_the_server_and_the_workers_speak_the_same_protocol():
    assert (server_drain.TOKEN_ENV, server_drain.HEADER) == (TOKEN_ENV, HEADER)


def test_require_cuda_refuses_a_machine_without_a_usable_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as a broken driver reports
    assert choose_device(0) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="require_cuda is set but there is no usable GPU"):
        choose_device(0, require_cuda=True)
