"""The node's ZeroMQ front: one ROUTER socket, validation at the edge, replies routed back by identity.

The front knows the model only through the small `Worker` interface (foresight.node.worker): it
validates and decodes requests, submits jobs, and sends the replies that the worker's completion
callbacks leave in its outbox (ZeroMQ sockets are not thread-safe, so only the front's thread
touches the socket; a wake-up pipe tells it a reply is waiting).

No message may stop the node: whatever one message does while it is decoded, validated, resized,
queued, run or encoded, it gets a reply, with its own error code where the node can tell what is
wrong and `INTERNAL` (logged under an incident number, no trace on the wire) where the node's own
code failed. One slow message must never stall the others: the front itself decodes only messages of at
most `INLINE_BYTES` (health, info, small requests: bounded by their size), and hands larger ones
to a few intake threads, with the bytes waiting there capped. Decoding is bounded in what it may
allocate (`wire.DecodeLimits`) and images are sized from their headers before being decoded.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import msgpack
import numpy as np
import zmq
import zmq.auth
from foresight_client import wire
from foresight_client.protocol import (
    ARRAY_RANKS,
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    MetaRequest,
    NodeError,
    PredictRequest,
    error_reply,
    ok_reply,
    parse_request,
    quote,
    request_id,
)
from zmq.auth.thread import ThreadAuthenticator

from foresight.node import memory
from foresight.node.images import encode_jpeg, prepare_frames
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
INLINE_BYTES = 64 * 2**10  # bodies this small are decoded on the front's own thread
INTAKE_THREADS = 2  # threads decoding larger messages (images, raw frames)
INTAKE_MESSAGES = 2  # maximal messages that may wait for or be in intake before OVERLOADED
TRIM_EVERY_S = 2.0  # with no work in the node, freed memory goes back to the system this often (foresight.node.memory)
WAKE_BYTE = b"x"  # what stop() writes to the wake-up pipe; C's signal handler writes the signal's number
STOP_SIGNALS = frozenset({int(signal.SIGINT), int(signal.SIGTERM)})  # signals that stop a node run from the main thread
DROP_WARN_EVERY_S = 10.0  # dropped replies are counted each, and logged at most this often
DEFAULT_MAX_UNREAD_REPLIES = 16  # replies held for one client that does not read them; later ones are dropped


@dataclass(frozen=True)
class ServerConfig:
    """How the node listens and how much work it accepts."""

    bind: str = DEFAULT_BIND
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the whole multipart message
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch: int = DEFAULT_MAX_BATCH
    max_unread_replies: int = DEFAULT_MAX_UNREAD_REPLIES  # per connection (ZeroMQ's send high-water mark)
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    limits: Limits = Limits()
    curve_secret_file: Path | None = None  # server certificate with its secret key (zmq.auth format)
    curve_clients_dir: Path | None = None  # allow-list: one public-key certificate per client
    insecure: bool = False  # allow a non-loopback bind without CURVE


def curve_keys(config: ServerConfig) -> tuple[bytes, bytes] | None:
    """The server's (public, secret) CURVE keys, or None for a plain loopback node.

    Raises ValueError with a one-line reason for a setup that would serve strangers or cannot work.
    """
    if config.curve_secret_file is None:
        if not is_loopback(config.bind) and not config.insecure:
            raise ValueError(f"refusing to bind {config.bind} without CURVE: give --curve-secret and --curve-clients, "
                             "or --insecure to serve anyone who can reach it")
        return None
    clients, secret_file = config.curve_clients_dir, Path(config.curve_secret_file)
    if clients is None:
        raise ValueError("CURVE needs --curve-clients, a folder of allowed client public keys")
    if not Path(clients).is_dir():
        raise ValueError(f"the allowed-clients folder {str(clients)!r} does not exist or is not a folder")
    if not secret_file.is_file():
        raise ValueError(f"the server secret file {str(secret_file)!r} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(secret_file)!r} is not a zmq.auth certificate ({exc})") from exc
    if secret is None:
        raise ValueError(f"{str(secret_file)!r} holds only a public key; give the .key_secret file")
    return public, secret


def is_loopback(endpoint: str) -> bool:
    return endpoint.startswith(("ipc://", "inproc://", "tcp://127.", "tcp://localhost:", "tcp://[::1]:"))


class NodeServer:
    """The ZeroMQ front: one ROUTER socket, validation at the edge, replies routed back by identity.

    REQ clients send [identity, b"", body]; DEALER clients send [identity, body]. The reply
    goes back with the same envelope, so both work; a reply to a vanished client is dropped
    by ROUTER, so it never wedges the node.
    """

    def __init__(self, worker: Worker | Predictor, config: ServerConfig = ServerConfig()):
        """worker: what runs the model; a bare model (Predictor) gets a LocalWorker of its own."""
        keys = curve_keys(config)
        self.config = config
        self._worker: Worker = worker if hasattr(worker, "submit") else LocalWorker(worker, config.max_queue, config.max_batch)
        self.geometry = self._worker.geometry
        self._outbox: queue.SimpleQueue[tuple[list[bytes], dict]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._started = time.time()
        self._served = 0
        self._dropped = 0
        self._drop_warned = -DROP_WARN_EVERY_S
        self._errors_by_code: Counter[str] = Counter()
        self._incidents = self._worker.incidents  # one numbering for the front's incidents and the worker's
        self._decode_limits = wire.DecodeLimits(max_bin_bytes=config.max_message_bytes)
        self._intake = ThreadPoolExecutor(INTAKE_THREADS, thread_name_prefix="foresight-intake")
        self._intake_lock = threading.Lock()
        self._intake_bytes = 0
        self._intake_count = 0
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._socket = self._ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)  # per frame; the whole message is checked below
        self._socket.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self._socket.setsockopt(zmq.SNDHWM, config.max_unread_replies)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply that cannot be queued raises, so it is counted
        if keys is not None:
            self._setup_curve(*keys, config.curve_clients_dir)
        elif not is_loopback(config.bind):
            log.warning("binding %s without CURVE (--insecure): anyone who can reach it can use the model", config.bind)
        self._socket.bind(config.bind)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _setup_curve(self, public: bytes, secret: bytes, clients_dir: Path) -> None:
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
            os.write(self._wake_w, WAKE_BYTE)
        except BlockingIOError:  # pipe full: a wake-up is already pending
            return
        except OSError:  # the pipe is closed: the node has stopped
            return

    @property
    def pending(self) -> int:
        """Requests accepted and not yet answered: in intake, queued or running."""
        with self._intake_lock:
            return self._intake_count + self._worker.health()["pending"]

    def run(self, stop_on_signals: bool = False) -> None:
        """Serve until stop(); then finish accepted work, send its replies and close.

        stop_on_signals (main thread only): also stop on SIGINT/SIGTERM as soon as they arrive.
        Python runs a signal's handler in the main thread only when that thread next gets to it,
        which a busy process may delay until its work is done; C's handler writes the signal's
        number to the wake-up pipe at once (`signal.set_wakeup_fd`), and the poll loop sees it.
        """
        previous_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False) if stop_on_signals else None
        self._worker.start()
        log.info("listening on %s (model %dx%d, N=%d, K=%d)", self.endpoint, self.geometry.height, self.geometry.width,
                 self.geometry.num_frames, self.geometry.context_frames)
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        drain_until = None
        trimmed = time.monotonic()
        try:
            while True:
                events = dict(poller.poll(POLL_MS))
                if not events and time.monotonic() - trimmed > TRIM_EVERY_S and self.pending == 0:
                    memory.trim()  # idle: hand back what replies, frames and closed connections freed
                    trimmed = time.monotonic()
                if self._wake_r in events and self._clear_wake() & STOP_SIGNALS:
                    self._stopping.set()
                self._flush_replies()
                if self._socket in events:
                    self._receive_burst()
                if self._stopping.is_set():
                    if drain_until is None:
                        log.info("stopping: draining %d pending requests", self.pending)
                        self._worker.stop_accepting()
                        drain_until = time.monotonic() + self.config.drain_timeout_s
                    if self.pending == 0:
                        self._receive_burst()  # what already arrived gets its SHUTTING_DOWN, not silence
                        self._flush_replies()
                        if self.pending == 0:
                            break
                    if time.monotonic() > drain_until:
                        log.warning("drain timed out with %d requests pending", self.pending)
                        break
        finally:
            if previous_fd is not None:
                signal.set_wakeup_fd(previous_fd)
            self._close()

    def _close(self) -> None:
        self._intake.shutdown(wait=True, cancel_futures=True)
        self._worker.stop_accepting()
        self._worker.join(timeout=1.0)
        self._socket.close()  # lingers CLOSE_LINGER_MS so the last replies leave
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("stopped after serving %d requests", self._served)

    def _clear_wake(self) -> set[int]:
        """Empty the wake-up pipe; returns the bytes read (signal numbers among them)."""
        seen: set[int] = set()
        try:
            while chunk := os.read(self._wake_r, 4096):
                seen.update(chunk)
        except BlockingIOError:
            pass
        return seen

    def _flush_replies(self) -> None:
        while True:
            try:
                envelope, reply = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(envelope, reply)

    def _post(self, envelope: list[bytes], reply: dict) -> None:
        """Queue a reply from another thread; the front's thread sends it."""
        self._outbox.put((envelope, reply))
        self._wake()

    def _receive_burst(self) -> None:
        for _ in range(RECV_BURST):
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)  # frames stay in ZeroMQ's buffers
            except zmq.Again:
                return
            self._admit(parts, time.perf_counter())

    def _send(self, envelope: list[bytes], reply: dict) -> None:
        body, code = self._encode(reply)
        if code is not None:
            self._errors_by_code[code] += 1
        try:
            self._send_now(envelope + [body])
        except zmq.ZMQError as exc:  # the client has gone, or has max_unread_replies replies unread
            self._dropped += 1
            if time.monotonic() - self._drop_warned > DROP_WARN_EVERY_S:
                log.warning("dropped the reply to %s for client %r, which has gone or has %d replies unread (%s); "
                            "%d replies dropped since start", quote(reply.get("id")), envelope[0],
                            self.config.max_unread_replies, exc.strerror, self._dropped)
                self._drop_warned = time.monotonic()
        self._served += 1

    def _send_now(self, parts: list[bytes]) -> None:
        """Queue a message without blocking; zmq.ZMQError (EAGAIN, EHOSTUNREACH) if it cannot be queued.

        A socket learns how much its peers have read from commands it processes lazily, so a
        busy front may think a reading client's queue is full: on EAGAIN it processes them
        (reading ZMQ_EVENTS does) and tries once more before the reply counts as dropped.
        """
        try:
            self._socket.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            self._socket.getsockopt(zmq.EVENTS)
            self._socket.send_multipart(parts, zmq.NOBLOCK)

    def _encode(self, reply: dict) -> tuple[bytes, str | None]:
        """The reply's bytes and its error code (None for success); an unencodable reply becomes INTERNAL."""
        try:
            return wire.packb(reply), None if reply["ok"] else reply["error"]["code"]
        except Exception as exc:
            error = self._incidents.record(exc, "encoding the reply", reply.get("id"))
            timing = {key: value for key, value in reply.get("timing", {}).items() if type(value) in (int, float)}
            return wire.packb(error_reply(request_id(reply), error) | {"timing": timing}), error.code

    def _refusal(self, rid: Any, exc: Exception, doing: str) -> dict:
        """The error reply to one message for any exception raised while handling it."""
        if isinstance(exc, NodeError):
            log.debug("refused request %s: %s", quote(rid), exc)
            return error_reply(rid, exc)
        return error_reply(rid, self._incidents.record(exc, doing, rid))

    def _admit(self, parts: list[zmq.Frame], received: float) -> None:
        """One message, whatever it holds: answered here, handed to intake, or submitted; never raises."""
        split = 2 if len(parts) > 2 and len(parts[1]) == 0 else 1  # REQ puts an empty delimiter first
        envelope, body = [p.bytes for p in parts[:split]], parts[split:]
        size = sum(len(p) for p in parts)
        try:
            if size > self.config.max_message_bytes:
                raise NodeError(ErrorCode.TOO_LARGE, f"the message has {size} bytes in all frames, "
                                                     f"more than the {self.config.max_message_bytes} allowed")
            if len(body) != 1:
                raise NodeError(ErrorCode.BAD_MSGPACK, f"a message is one msgpack frame, got {len(body)} frames")
            data = body[0].buffer
            if len(data) <= INLINE_BYTES:
                reply = self._decode(envelope, data, received)
                if reply is not None:
                    self._send(envelope, reply)
                return
            with self._intake_lock:
                if self._intake_bytes + size > INTAKE_MESSAGES * self.config.max_message_bytes:
                    raise NodeError(ErrorCode.OVERLOADED, f"{self._intake_count} large messages are being decoded; retry later")
                self._intake_bytes += size
                self._intake_count += 1
            try:
                self._intake.submit(self._decode_in_intake, envelope, data, size, received)
            except BaseException:
                self._intake_done(size)
                raise
        except Exception as exc:
            self._send(envelope, _timed(self._refusal(None, exc, "admitting a message"), received))

    def _decode_in_intake(self, envelope: list[bytes], data: memoryview, size: int, received: float) -> None:
        try:
            reply = self._decode(envelope, data, received)
        finally:
            del data  # let ZeroMQ's buffer go before the byte count says it has
            self._intake_done(size)
        if reply is not None:
            self._post(envelope, reply)
        else:
            self._wake()  # the drain loop may be waiting for intake to empty

    def _intake_done(self, size: int) -> None:
        with self._intake_lock:
            self._intake_bytes -= size
            self._intake_count -= 1

    def _decode(self, envelope: list[bytes], data: memoryview, received: float) -> dict | None:
        """Decode and validate one body; submit a predict job (None) or return the reply to send. Never raises."""
        rid = None
        try:
            message = wire.unpack_plain(data, self._decode_limits)
            rid = request_id(message)  # a plain id is echoed even if a numpy field below is refused
            message = wire.decode_fields(message, ARRAY_RANKS, self._decode_limits)
            rid = request_id(message)
            request = parse_request(message, self.geometry, self.config.limits)
            if isinstance(request, MetaRequest):
                return self._meta_reply(request, received)
            if self._stopping.is_set():  # health says "draining" from this moment on: refuse alike
                raise NodeError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)
            self._worker.submit(self._job(request, envelope, received))
            return None
        except Exception as exc:
            return _timed(self._refusal(rid, exc, "reading a request"), received)

    def _job(self, request: PredictRequest, envelope: list[bytes], received: float) -> Job:
        if request.deadline is not None and request.deadline < time.time():
            raise NodeError(ErrorCode.TIMEOUT, f"deadline {request.deadline:.3f} passed before the request arrived")
        frames = prepare_frames(request.frames, self.geometry, self.config.limits)
        settings = Settings(num_frames=request.num_frames or self.geometry.num_frames,
                            sampler=self._worker.defaults.resolve(request.steps, request.guidance_frame, request.guidance_text))
        decode_s = time.perf_counter() - received

        def on_done(job: Job, result: JobResult) -> None:
            try:
                reply = self._predict_reply(request, result, received, decode_s)
            except Exception as exc:  # e.g. JPEG encoding failed: still answer, so a REQ client is not left waiting
                reply = _timed(self._refusal(request.id, exc, "building the reply"), received)
            self._post(envelope, reply)

        return Job(frames, request.instructions, request.seeds, settings, request.deadline, on_done)

    def _predict_reply(self, request: PredictRequest, result: JobResult, received: float, decode_s: float) -> dict:
        """Built in the worker's thread, so JPEG encoding does not hold up the front."""
        timing = {"decode_s": decode_s, "queue_s": result.queue_s, "infer_s": result.infer_s, "batch": result.batch}
        if result.error is not None:
            return error_reply(request.id, result.error) | {"timing": timing | {"total_s": time.perf_counter() - received}}
        started = time.perf_counter()
        frames = encode_jpeg(result.frames) if request.encoding == "jpeg" else result.frames
        timing["encode_s"] = time.perf_counter() - started
        timing["total_s"] = time.perf_counter() - received
        return ok_reply(request.id, frames=frames, size=[self.geometry.height, self.geometry.width], timing=timing, model=result.model)

    def errors(self) -> dict:
        """What went wrong since start: error replies by code, incidents of the node's own code, dropped replies."""
        return {"errors_by_code": dict(self._errors_by_code), "internal_errors": self._incidents.count,
                "dropped_replies": self._dropped}

    def _meta_reply(self, request: MetaRequest, received: float) -> dict:
        if request.method == "health":
            fields = self._worker.health() | self.errors() | {
                "status": "draining" if self._stopping.is_set() else "ok",
                "pending": self.pending,
                "uptime_s": time.time() - self._started,
                "served": self._served,
                "pid": os.getpid(),
            }
        else:
            fields = self._worker.describe() | self.errors() | {
                "size": [self.geometry.height, self.geometry.width],
                "num_frames": self.geometry.num_frames,
                "context_frames": self.geometry.context_frames,
                "defaults": asdict(self._worker.defaults),
                "limits": asdict(self.config.limits),
                "max_message_bytes": self.config.max_message_bytes,
                "max_unread_replies": self.config.max_unread_replies,
                "protocol": PROTOCOL_VERSION,
                "versions": {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
                             "numpy": np.__version__, "opencv": cv2.__version__},
            }
        return ok_reply(request.id, **fields, timing={"total_s": time.perf_counter() - received})


def _timed(reply: dict, received: float) -> dict:
    return reply | {"timing": {"total_s": time.perf_counter() - received}}


def serve(worker: Worker | Predictor, config: ServerConfig = ServerConfig()) -> None:
    """Run a node in this thread until SIGINT/SIGTERM (when called from the main thread) or stop()."""
    server = NodeServer(worker, config)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: server.stop())
    try:
        server.run(stop_on_signals=in_main)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
