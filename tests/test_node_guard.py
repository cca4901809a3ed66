"""One guard for the whole per-message path: where the node's own code fails, the message gets INTERNAL.

Faults are put where a bug would be (resizing on the front, the worker's batch loop, the reply
encoder); each time the failing message gets an INTERNAL reply with an incident number and no
exception text, the count shows in `health`, and the next request is served as usual.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from foresight_client import wire
from foresight_client.client import ForesightClient
from foresight_client.protocol import ErrorCode, NodeError
from test_replay import Echo, Node

from foresight.node import server as server_module
from foresight.node.worker import LocalWorker

FRAMES = np.zeros((1, 64, 64, 3), np.uint8)


class OddCard(Echo):
    """A model whose card holds a value msgpack cannot carry (a path object)."""

    def info(self) -> dict:
        return {"card": {"name": "odd"}, "backend": Path("/engines/unet.plan")}


def internal_error(client: ForesightClient, **options) -> NodeError:
    with pytest.raises(NodeError) as caught:
        client.predict(FRAMES, ["push the red block left"], **options)
    assert caught.value.code == ErrorCode.INTERNAL, caught.value
    return caught.value


def test_a_fault_on_the_front_is_answered_and_logged_once(monkeypatch, caplog) -> None:
    def broken_resize(*args, **kwargs):
        raise RuntimeError("a detail of another request")

    with Node(Echo()) as endpoint, ForesightClient(endpoint, timeout_s=30, retries=0) as client:
        monkeypatch.setattr(server_module, "prepare_frames", broken_resize)
        with caplog.at_level(logging.ERROR, logger="foresight.node"):
            error = internal_error(client)
        assert "RuntimeError" in error.message and "incident 1" in error.message
        assert "a detail of another request" not in error.message and "Traceback" not in error.message
        [record] = [r for r in caplog.records if "incident 1" in r.getMessage()]
        assert "a detail of another request" in record.getMessage() and record.exc_info is not None
        monkeypatch.undo()
        assert client.predict(FRAMES, "push the red block left").shape == (7, 64, 64, 3)
        health = client.health()
    assert health["internal_errors"] == 1 and health["errors_by_code"] == {"INTERNAL": 1}


def test_a_fault_in_the_worker_loop_answers_its_batch_and_the_worker_lives_on(monkeypatch) -> None:
    real = LocalWorker._run_batch
    calls = []

    def fails_once(self, jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise KeyError("batch bookkeeping")
        return real(self, jobs)

    monkeypatch.setattr(LocalWorker, "_run_batch", fails_once)
    with Node(Echo()) as endpoint, ForesightClient(endpoint, timeout_s=30, retries=0) as client:
        assert "KeyError" in internal_error(client).message
        assert client.predict(FRAMES, "push the red block left").shape == (7, 64, 64, 3)
        health = client.health()
    assert health["internal_errors"] == 1 and health["pending"] == 0


def test_an_unencodable_reply_becomes_internal() -> None:
    with Node(OddCard()) as endpoint, ForesightClient(endpoint, timeout_s=30, retries=0) as client:
        assert "TypeError" in internal_error(client).message
        assert "TypeError" in internal_error(client, steps=1).message  # and again: the node goes on
        health = client.health()
    assert health["internal_errors"] == 2 and health["errors_by_code"] == {"INTERNAL": 2}


def test_the_124_byte_message_of_issue_35_is_refused_and_the_node_lives() -> None:
    """An empty array claiming 2**64 - 1 rows: numpy's reshape raised on the front and the node stopped."""
    body = msgpack.packb({"method": "predict", "id": 35, "instruction": "x", "frames": {
        b"__ndarray__": True, b"data": b"", b"dtype": "|u1", b"shape": [0, 2**64 - 1, 1, 3]}})
    with Node(Echo()) as endpoint:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        try:
            socket.send(body)
            assert socket.poll(10_000), "no reply: the node died"
            reply = wire.unpackb(socket.recv())
            socket.send(msgpack.packb({"method": "health", "id": "after"}))
            assert socket.poll(10_000), "no health reply"
            health = wire.unpackb(socket.recv())
        finally:
            socket.close()
    assert reply["id"] == 35 and reply["error"]["code"] == ErrorCode.BAD_SHAPE, reply
    assert health["ok"] and health["id"] == "after"
