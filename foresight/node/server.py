"""The node's ZeroMQ front: one ROUTER socket, validation at the edge, replies routed back by identity.

The front knows the model only through the small `Worker` interface (foresight.node.worker): it
validates and decodes requests, submits jobs, and sends the replies that the worker's completion
callbacks leave in its outbox (ZeroMQ sockets are not thread-safe, so only the front's thread
touches the socket; a wake-up pipe tells it a reply is waiting).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import msgpack
import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from foresight.node import wire
from foresight.node.images import encode_jpeg, prepare_frames
from foresight.node.protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    MetaRequest,
    NodeError,
    PredictRequest,
    error_reply,
    ok_reply,
    parse_request,
    request_id,
)
from foresight.node.worker import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    SHUTTING_DOWN_MESSAGE,
    Job,
    JobResult,
    LocalWorker,
    Predictor,
    Settings,
    Worker,
)

log = logging.getLogger(__name__)

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20  # 16 raw 640x480 frames fit with room to spare
DEFAULT_DRAIN_TIMEOUT_S = 120.0
POLL_MS = 200  # upper bound on how late the front notices a stop request
RECV_BURST = 64  # messages taken per loop turn before replies are flushed again
CLOSE_LINGER_MS = 2000  # time given to the last replies to leave on shutdown


@dataclass(frozen=True)
class ServerConfig:
    """How the node listens and how much work it accepts."""

    bind: str = DEFAULT_BIND
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch: int = DEFAULT_MAX_BATCH
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    limits: Limits = Limits()
    curve_secret_file: Path | None = None  # server certificate with its secret key (zmq.auth format)
    curve_clients_dir: Path | None = None  # allow-list: one public-key certificate per client


class NodeServer:
    """The ZeroMQ front: one ROUTER socket, validation at the edge, replies routed back by identity.

    REQ clients send [identity, b"", body]; DEALER clients send [identity, body]. The reply
    goes back with the same envelope, so both work; a reply to a vanished client is dropped
    by ROUTER, so it never wedges the node.
    """

    def __init__(self, worker: Worker | Predictor, config: ServerConfig = ServerConfig()):
        """worker: what runs the model; a bare model (Predictor) gets a LocalWorker of its own."""
        self.config = config
        self._worker: Worker = worker if hasattr(worker, "submit") else LocalWorker(worker, config.max_queue, config.max_batch)
        self.spec = self._worker.spec
        self._outbox: queue.SimpleQueue[tuple[list[bytes], dict]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._started = time.time()
        self._served = 0
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._socket = self._ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        self._socket.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        if config.curve_secret_file is not None:
            self._setup_curve(config.curve_secret_file, config.curve_clients_dir)
        elif not _is_local(config.bind):
            log.warning("binding %s without CURVE: anyone who can reach it can use the model", config.bind)
        self._socket.bind(config.bind)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _setup_curve(self, secret_file: Path, clients_dir: Path | None) -> None:
        if clients_dir is None or not Path(clients_dir).is_dir():
            raise ValueError(f"CURVE needs a folder of allowed client public keys, got {clients_dir!r}")
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key (give the .key_secret file)")
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(f"{__name__}.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(clients_dir))
        self._socket.curve_secretkey = secret
        self._socket.curve_publickey = public
        self._socket.curve_server = True
        log.info("CURVE on: clients allowed from %s", clients_dir)

    def stop(self) -> None:
        """Ask the node to drain and exit; safe from other threads and from signal handlers."""
        self._stopping.set()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # pipe full: a wake-up is already pending
            return

    def run(self) -> None:
        """Serve until stop(); then finish accepted work, send its replies and close."""
        self._worker.start()
        log.info("listening on %s (model %dx%d, N=%d, K=%d)", self.endpoint, self.spec.height, self.spec.width,
                 self.spec.num_frames, self.spec.context_frames)
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        drain_until = None
        try:
            while True:
                events = dict(poller.poll(POLL_MS))
                if self._wake_r in events:
                    self._clear_wake()
                self._flush_replies()
                if self._socket in events:
                    self._receive_burst()
                if self._stopping.is_set():
                    if drain_until is None:
                        log.info("stopping: draining %d pending requests", self._worker.health()['pending'])
                        self._worker.stop_accepting()
                        drain_until = time.monotonic() + self.config.drain_timeout_s
                    if self._worker.health()['pending'] == 0:
                        self._flush_replies()
                        break
                    if time.monotonic() > drain_until:
                        log.warning("drain timed out with %d requests pending", self._worker.health()['pending'])
                        break
        finally:
            self._close()

    def _close(self) -> None:
        self._worker.stop_accepting()
        self._worker.join(timeout=1.0)
        self._socket.close()  # lingers CLOSE_LINGER_MS so the last replies leave
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("stopped after serving %d requests", self._served)

    def _clear_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            return

    def _flush_replies(self) -> None:
        while True:
            try:
                envelope, reply = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(envelope, reply)

    def _receive_burst(self) -> None:
        for _ in range(RECV_BURST):
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._handle(parts)

    def _send(self, envelope: list[bytes], reply: dict) -> None:
        try:
            body = wire.packb(reply)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("could not encode reply to %r: %s", reply.get("id"), exc)
            body = wire.packb(error_reply(None, NodeError(ErrorCode.BAD_TYPE, f"reply not encodable: {exc}")))
        try:
            self._socket.send_multipart(envelope + [body], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropped a reply: client %r is not reading", envelope[0])
        self._served += 1

    def _handle(self, parts: list[bytes]) -> None:
        received = time.perf_counter()
        split = 2 if len(parts) > 2 and parts[1] == b"" else 1  # REQ puts an empty delimiter first
        envelope, body = parts[:split], parts[split:]
        rid = None
        try:
            if len(body) != 1:
                raise NodeError(ErrorCode.BAD_MSGPACK, f"a message is one msgpack frame, got {len(body)} frames")
            message = wire.unpackb(body[0])
            rid = request_id(message)
            request = parse_request(message, self.spec, self.config.limits)
            if isinstance(request, MetaRequest):
                self._send(envelope, self._meta_reply(request, received))
            elif self._stopping.is_set():  # health says "draining" from this moment on: refuse alike
                raise NodeError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)
            else:
                self._worker.submit(self._job(request, envelope, received))
        except NodeError as exc:
            log.debug("refused request %r: %s", rid, exc)
            self._send(envelope, error_reply(rid, exc) | {"timing": {"total_s": time.perf_counter() - received}})

    def _job(self, request: PredictRequest, envelope: list[bytes], received: float) -> Job:
        if request.deadline is not None and request.deadline < time.time():
            raise NodeError(ErrorCode.TIMEOUT, f"deadline {request.deadline:.3f} passed before the request arrived")
        frames = prepare_frames(request.frames, self.spec, self.config.limits)
        defaults = self._worker.defaults
        settings = Settings(
            num_frames=request.num_frames or self.spec.num_frames,
            steps=request.steps or int(defaults["steps"]),
            guidance_frame=_or(request.guidance_frame, defaults["guidance_frame"]),
            guidance_text=_or(request.guidance_text, defaults["guidance_text"]),
        )
        decode_s = time.perf_counter() - received

        def on_done(job: Job, result: JobResult) -> None:
            try:
                reply = self._predict_reply(request, result, received, decode_s)
            except Exception as exc:  # e.g. JPEG encoding failed: still answer, so a REQ client is not left waiting
                log.exception("could not build the reply to %r", request.id)
                reply = error_reply(request.id, NodeError(ErrorCode.MODEL_ERROR, f"reply failed: {exc}"))
            self._outbox.put((envelope, reply))
            self._wake()

        return Job(frames, request.instructions, request.seeds, settings, request.deadline, on_done)

    def _predict_reply(self, request: PredictRequest, result: JobResult, received: float, decode_s: float) -> dict:
        """Built in the worker thread, so JPEG encoding does not hold up the front."""
        timing = {"decode_s": decode_s, "queue_s": result.queue_s, "infer_s": result.infer_s, "batch": result.batch}
        if result.error is not None:
            return error_reply(request.id, result.error) | {"timing": timing | {"total_s": time.perf_counter() - received}}
        started = time.perf_counter()
        frames = encode_jpeg(result.frames) if request.encoding == "jpeg" else result.frames
        timing["encode_s"] = time.perf_counter() - started
        timing["total_s"] = time.perf_counter() - received
        return ok_reply(request.id, frames=frames, size=[self.spec.height, self.spec.width], timing=timing, model=result.model)

    def _meta_reply(self, request: MetaRequest, received: float) -> dict:
        if request.method == "health":
            fields = {
                "status": "draining" if self._stopping.is_set() else "ok",
                "uptime_s": time.time() - self._started,
                "served": self._served,
            } | self._worker.health()
        else:
            fields = self._worker.describe() | {
                "size": [self.spec.height, self.spec.width],
                "num_frames": self.spec.num_frames,
                "context_frames": self.spec.context_frames,
                "defaults": dict(self._worker.defaults),
                "limits": asdict(self.config.limits),
                "max_message_bytes": self.config.max_message_bytes,
                "protocol": PROTOCOL_VERSION,
                "versions": {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
                             "numpy": np.__version__, "opencv": cv2.__version__},
            }
        return ok_reply(request.id, **fields, timing={"total_s": time.perf_counter() - received})


def _or(value: float | None, default: Any) -> float:
    return float(default) if value is None else value


def _is_local(endpoint: str) -> bool:
    return endpoint.startswith(("ipc://", "inproc://", "tcp://127.", "tcp://localhost:", "tcp://[::1]:"))


def serve(worker: Worker | Predictor, config: ServerConfig = ServerConfig()) -> None:
    """Run a node in this thread until SIGINT/SIGTERM (when called from the main thread) or stop()."""
    server = NodeServer(worker, config)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: server.stop())
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
