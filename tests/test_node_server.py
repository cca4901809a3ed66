"""The node end to end over tcp loopback, driving load_pipeline("tiny-random") at few steps."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import openpi_client.msgpack_numpy as openpi
import pytest
import torch
import zmq
import zmq.auth
from foresight_client import wire
from foresight_client.client import CurveKeys, ForesightClient, NodeUnavailable
from foresight_client.protocol import ErrorCode, NodeError
from test_replay import Echo

from foresight.node.server import NodeServer, ServerConfig
from foresight.pipeline import load_pipeline
from sim_bridge.common.imaging import fit_frames

FAST = {"steps": 1, "num_frames": 2}  # one predicted frame, one sampler step: keeps the model cheap
TIMEOUT_S = 120.0  # the model shares a small CPU with other work: be patient, not flaky
EPHEMERAL = "tcp://127.0.0.1:*"


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)  # on a shared small CPU, spinning OpenMP threads slow the model a hundredfold
    return load_pipeline("tiny-random")


class Wrapped:
    """The real pipeline, with a hook run before each predict (to fail or to hold the worker)."""

    def __init__(self, pipe, before=None) -> None:
        self.pipe = pipe
        self.before = before
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def predict(self, frames: np.ndarray, instructions: list[str], **options: Any) -> np.ndarray:
        self.calls.append(list(instructions))
        if self.before is not None:
            self.before(instructions)
        return self.pipe.predict(frames, instructions, **options)


class Running:
    """A NodeServer running in a background thread for the length of a `with` block."""

    def __init__(self, predictor, **config: Any) -> None:
        self.server = NodeServer(predictor, ServerConfig(bind=config.pop("bind", EPHEMERAL), **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> NodeServer:
        self.thread.start()
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def node(pipe) -> Iterator[NodeServer]:
    with Running(pipe) as server:
        yield server


def frames_for(pipe, height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (pipe.context_frames, height, width, 3), dtype=np.uint8)


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    socket = ctx.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def recv(socket: zmq.Socket, timeout_s: float = TIMEOUT_S) -> dict:
    assert socket.poll(int(timeout_s * 1000)), "no reply"
    return wire.unpackb(socket.recv_multipart()[-1])


@pytest.mark.parametrize("instructions", [["put the red block in the bowl"], ["push left", "push right", "lift the cup"]])
def test_predict_through_req_client_and_dealer(pipe, node, instructions: list[str]) -> None:
    frames = frames_for(pipe)
    expected = pipe.predict(frames, instructions, seed=11, **FAST)
    with ForesightClient(node.endpoint, timeout_s=TIMEOUT_S) as client:
        out = client.predict(frames, instructions, seed=11, **FAST)
    assert out.shape == (len(instructions), 1, pipe.height, pipe.width, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out, expected, atol=2)  # same seeds as in process, up to batch float rounding

    ctx = zmq.Context.instance()
    socket = dealer(ctx, node.endpoint)
    try:
        for i in range(3):  # pipelined: three requests in flight on one DEALER
            socket.send(wire.packb({"method": "predict", "id": f"d{i}", "frames": frames, "instruction": instructions,
                                    "seed": 11, **FAST}))
        replies = {r["id"]: r for r in (recv(socket) for _ in range(3))}
    finally:
        socket.close()
    assert sorted(replies) == ["d0", "d1", "d2"]
    for reply in replies.values():
        assert reply["ok"] and reply["size"] == [pipe.height, pipe.width]
        np.testing.assert_allclose(reply["frames"], out, atol=2)  # may have run batched with the others
        assert {"decode_s", "queue_s", "infer_s", "total_s", "batch"} <= set(reply["timing"])


def test_single_instruction_string_and_jpeg_both_ways(pipe, node) -> None:
    frames = frames_for(pipe, 480, 640)
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
    with ForesightClient(node.endpoint, timeout_s=TIMEOUT_S) as client:
        out = client.predict(frames[0], "wipe the table", **FAST)
        assert out.shape == (1, pipe.height, pipe.width, 3)
        reply = client.call({"method": "predict", "frames": jpegs, "instruction": ["a", "b"], "encoding": "jpeg", **FAST})
    assert len(reply["frames"]) == 2 and len(reply["frames"][0]) == 1
    decoded = cv2.imdecode(np.frombuffer(reply["frames"][1][0], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (pipe.height, pipe.width, 3)


def test_openpi_client_over_plain_req(pipe, node) -> None:
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(node.endpoint)
    try:
        socket.send(openpi.packb({"method": "info", "id": "hello"}))
        assert socket.poll(int(TIMEOUT_S * 1000))
        info = openpi.unpackb(socket.recv())
        assert info["ok"] and info["id"] == "hello"
        assert info["size"] == [pipe.height, pipe.width] and info["context_frames"] == pipe.context_frames
        socket.send(openpi.packb({"method": "predict", "id": 1, "frames": frames_for(pipe), "instruction": "go",
                                  "steps": np.int64(1), "num_frames": 2, "guidance": {"frame": np.float32(1.0)}}))
        assert socket.poll(int(TIMEOUT_S * 1000))
        reply = openpi.unpackb(socket.recv())
    finally:
        socket.close()
    assert reply["ok"] and reply["id"] == 1 and reply["frames"].shape == (1, 1, pipe.height, pipe.width, 3)


def test_info_and_health(pipe, node) -> None:
    with ForesightClient(node.endpoint, timeout_s=TIMEOUT_S) as client:
        info = client.info()
        health = client.health()
    assert info["model"]["card"]["name"] == "tiny-random"
    assert (info["num_frames"], info["context_frames"]) == (pipe.num_frames, pipe.context_frames)
    assert health["status"] == "ok" and "total_s" in health["timing"]


def test_error_reply_raises_with_code(pipe, node) -> None:
    with ForesightClient(node.endpoint, timeout_s=TIMEOUT_S) as client:
        with pytest.raises(NodeError) as info:
            client.predict(frames_for(pipe), "  ", **FAST)
    assert info.value.code == ErrorCode.BAD_INSTRUCTION


@contextmanager
def held_at_gate(pipe) -> Iterator[tuple[threading.Event, Wrapped, zmq.Socket]]:
    """A node whose worker waits for `gate` before every model call, and a DEALER socket to it."""
    gate = threading.Event()
    held = Wrapped(pipe, before=lambda instructions: gate.wait(TIMEOUT_S))
    with Running(held) as server:
        socket = dealer(zmq.Context.instance(), server.endpoint)
        try:
            yield gate, held, socket
        finally:
            gate.set()
            socket.close()


def test_deadline_expired_while_queued_gives_timeout(pipe) -> None:
    frames = frames_for(pipe)
    with held_at_gate(pipe) as (gate, held, socket):
        socket.send(wire.packb({"method": "predict", "id": "first", "frames": frames, "instruction": "a", **FAST}))
        time.sleep(0.2)  # the worker now holds "first" at the gate
        # a second of margin: on a loaded box "late" once arrived after a 0.2 s deadline
        late_deadline = time.time() + 1.0
        socket.send(wire.packb({"method": "predict", "id": "late", "frames": frames, "instruction": "b",
                                "deadline": late_deadline, **FAST}))
        socket.send(wire.packb({"method": "predict", "id": "past", "frames": frames, "instruction": "c",
                                "deadline": time.time() - 1, **FAST}))
        replies = {r["id"]: r for r in [recv(socket)]}  # "past" is refused on arrival
        time.sleep(max(0.0, late_deadline - time.time()) + 0.2)
        gate.set()
        replies |= {r["id"]: r for r in (recv(socket), recv(socket))}
    assert replies["past"]["error"]["code"] == ErrorCode.TIMEOUT and "arrived" in replies["past"]["error"]["message"]
    assert replies["first"]["ok"]
    assert replies["late"]["error"]["code"] == ErrorCode.TIMEOUT and "queued" in replies["late"]["error"]["message"]
    assert held.calls == [["a"]]


def test_model_exception_answers_model_error_then_serves(pipe) -> None:
    def explode(instructions: list[str]) -> None:
        if "explode" in instructions:
            raise RuntimeError("boom")

    with Running(Wrapped(pipe, before=explode)) as server, ForesightClient(server.endpoint, timeout_s=TIMEOUT_S) as client:
        with pytest.raises(NodeError) as info:
            client.predict(frames_for(pipe), ["fine", "explode"], **FAST)
        assert info.value.code == ErrorCode.MODEL_ERROR and "boom" in info.value.message
        assert client.predict(frames_for(pipe), "fine", **FAST).shape == (1, pipe.height, pipe.width, 3)


def test_compatible_requests_share_one_model_call(pipe) -> None:
    frames = frames_for(pipe)
    with held_at_gate(pipe) as (gate, held, socket):
        socket.send(wire.packb({"method": "predict", "id": 0, "frames": frames, "instruction": "hold", **FAST}))
        time.sleep(0.2)
        for i, steps in [(1, 1), (2, 1), (3, 2)]:  # 1 and 2 batch together; 3 differs in steps
            socket.send(wire.packb({"method": "predict", "id": i, "frames": frames_for(pipe, seed=i),
                                    "instruction": [f"r{i}a", f"r{i}b"], "steps": steps, "num_frames": 2}))
        time.sleep(0.2)
        gate.set()
        replies = {r["id"]: r for r in (recv(socket) for _ in range(4))}
    assert held.calls == [["hold"], ["r1a", "r1b", "r2a", "r2b"], ["r3a", "r3b"]]
    assert replies[1]["timing"]["batch"] == 4 and replies[3]["timing"]["batch"] == 2
    alone = pipe.predict(frames_for(pipe, seed=2), ["r2a", "r2b"], **FAST)
    np.testing.assert_allclose(replies[2]["frames"], alone, atol=2)  # each sample keeps its own frames and seed


def test_oversize_message_is_refused_and_node_goes_on(pipe) -> None:
    with Running(pipe, max_message_bytes=2**20) as server:
        with ForesightClient(server.endpoint, timeout_s=1.0, retries=0) as client:
            with pytest.raises(NodeUnavailable):
                client.predict(np.zeros((1, 1000, 1000, 3), np.uint8), "too big")
        with ForesightClient(server.endpoint, timeout_s=TIMEOUT_S) as client:
            assert client.health()["status"] == "ok"


KILLED_CLIENT = """
import sys, numpy as np, zmq
from foresight_client import wire
socket = zmq.Context().socket(zmq.REQ)
socket.connect(sys.argv[1])
socket.send(wire.packb({"method": "predict", "id": "doomed", "frames": np.zeros((1, 64, 64, 3), np.uint8),
                        "instruction": ["x"] * 8, "steps": 1, "num_frames": 2}))
print("sent", flush=True)
socket.recv()
"""


def test_concurrent_clients_each_get_their_own_replies() -> None:
    """Routing, not the model: the stand-in answers with each request's own context frame, so a reply
    that reached the wrong client shows in its pixels as well as in its id and shape."""
    clients, requests = 8, 20
    echo = Echo()
    results: dict[int, list[tuple[str, tuple]]] = {}
    errors: list[BaseException] = []

    def run(endpoint: str, c: int) -> None:
        try:
            with ForesightClient(endpoint, timeout_s=TIMEOUT_S, retries=0) as client:
                got = []
                for r in range(requests):
                    m = 2 if r % 5 == 0 else 1  # a reply's shape tells whose request it answers
                    reply = client.call({"method": "predict", "id": f"c{c}-r{r}", "frames": frames_for(echo, seed=c),
                                         "instruction": [f"client {c} request {r}"] * m, **FAST})
                    assert np.array_equal(reply["frames"][0, 0], fit_frames(frames_for(echo, seed=c), 64, 64)[0])
                    got.append((reply["id"], reply["frames"].shape))
                results[c] = got
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    with Running(echo) as node:
        doomed = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, node.endpoint], stdout=subprocess.PIPE, text=True)
        assert doomed.stdout.readline().strip() == "sent"
        threads = [threading.Thread(target=run, args=(node.endpoint, c)) for c in range(clients)]
        for thread in threads:
            thread.start()
        doomed.kill()  # vanishes while its request is queued or running
        doomed.wait()
        vanished = dealer(zmq.Context.instance(), node.endpoint)
        vanished.send(wire.packb({"method": "predict", "id": "gone", "frames": frames_for(echo), "instruction": "y", **FAST}))
        vanished.close()
        for thread in threads:
            thread.join(timeout=3 * TIMEOUT_S)
        assert not errors, errors
        for c in range(clients):
            assert [i for i, _ in results[c]] == [f"c{c}-r{r}" for r in range(requests)]
            assert [s[0] for _, s in results[c]] == [2 if r % 5 == 0 else 1 for r in range(requests)]
        with ForesightClient(node.endpoint, timeout_s=TIMEOUT_S) as client:
            assert client.health()["pending"] == 0


def test_curve_allows_listed_client_and_refuses_unknown_key(pipe, tmp_path: Path) -> None:
    server_dir, allowed_dir, stranger_dir = (tmp_path / name for name in ("server", "allowed", "stranger"))
    for folder in (server_dir, allowed_dir, stranger_dir):
        folder.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(server_dir, "server")
    _, client_secret = zmq.auth.create_certificates(allowed_dir, "robot")
    _, stranger_secret = zmq.auth.create_certificates(stranger_dir, "stranger")
    with Running(pipe, curve_secret_file=Path(server_secret), curve_clients_dir=allowed_dir) as server:
        keys = CurveKeys.from_files(server_public, client_secret)
        with ForesightClient(server.endpoint, timeout_s=TIMEOUT_S, curve=keys) as client:
            assert client.predict(frames_for(pipe), "go", **FAST).shape == (1, pipe.height, pipe.width, 3)
        stranger = CurveKeys.from_files(server_public, stranger_secret)
        with ForesightClient(server.endpoint, timeout_s=1.0, retries=1, curve=stranger) as client:
            with pytest.raises(NodeUnavailable):
                client.health()
        with ForesightClient(server.endpoint, timeout_s=1.0, retries=0) as client:  # no CURVE at all
            with pytest.raises(NodeUnavailable):
                client.health()
