"""The foresight node: a ZeroMQ ROUTER front and one inference worker thread that owns the model.

The two halves meet only through `Job` objects and a completion callback, so the worker can be
replaced by a call into a serving engine (Triton, Ray Serve) when one GPU box is outgrown, with
this front kept as is. The front owns the socket (ZeroMQ sockets are not thread-safe): it
validates, decodes images and answers errors at once; the worker batches compatible jobs, runs
the model and hands finished replies back through a queue plus a wake-up pipe.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import struct
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import cv2
import msgpack
import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from foresight.imaging import fit_frames
from foresight.node import wire
from foresight.node.protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    MetaRequest,
    ModelSpec,
    NodeError,
    PredictRequest,
    error_reply,
    ok_reply,
    parse_request,
    quote,
    request_id,
)

log = logging.getLogger(__name__)

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20  # 16 raw 640x480 frames fit with room to spare
DEFAULT_MAX_QUEUE = 64  # jobs waiting for the worker before OVERLOADED
DEFAULT_MAX_BATCH = 16  # samples (instructions) the worker runs in one model call
DEFAULT_DRAIN_TIMEOUT_S = 120.0
JPEG_QUALITY = 90
POLL_MS = 200  # upper bound on how late the front notices a stop request
RECV_BURST = 64  # messages taken per loop turn before replies are flushed again
SHUTTING_DOWN_MESSAGE = "the node is shutting down and takes no new work"
CLOSE_LINGER_MS = 2000  # time given to the last replies to leave on shutdown
MODEL_SUMMARY_KEYS = ("backend", "dtype", "device")  # with the card's name, repeated in every predict reply
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not


class Predictor(Protocol):
    """What the node needs from a model (foresight.pipeline's pipeline, or a test stand-in)."""

    height: int
    width: int
    num_frames: int
    context_frames: int
    defaults: dict

    def predict(
        self,
        frames: np.ndarray,
        instructions: list[str],
        *,
        num_frames: int | None = None,
        steps: int | None = None,
        guidance_frame: float | None = None,
        guidance_text: float | None = None,
        seed: int | list[int] = 0,
    ) -> np.ndarray: ...

    def info(self) -> dict: ...


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


@dataclass(frozen=True)
class Settings:
    """Sampling settings, fully resolved: jobs with equal settings can share one model call."""

    num_frames: int
    steps: int
    guidance_frame: float
    guidance_text: float


@dataclass(frozen=True)
class JobResult:
    frames: np.ndarray | None  # uint8 (M, N-K, H, W, 3) on success
    error: NodeError | None
    queue_s: float
    infer_s: float
    batch: int  # samples in the model call this job ran in


@dataclass
class Job:
    """One request's work: frames at model resolution, one instruction and seed per sample."""

    frames: np.ndarray  # uint8 (K, H, W, 3)
    instructions: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: Settings
    deadline: float | None  # unix seconds
    on_done: Callable[[Job, JobResult], None]
    queued_at: float = field(default_factory=time.perf_counter)


class InferenceWorker:
    """Runs jobs on the model in one thread; batches queued jobs with equal settings.

    Knows nothing about ZeroMQ: it takes `Job`s and calls each job's `on_done` exactly once,
    from its own thread, with frames or a NodeError (TIMEOUT, MODEL_ERROR).
    """

    def __init__(self, predictor: Predictor, max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH):
        self.predictor = predictor
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="foresight-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if not self._accepting:
                raise NodeError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)
            if len(self._jobs) >= self.max_queue:
                raise NodeError(ErrorCode.OVERLOADED, f"{len(self._jobs)} requests already queued; retry later")
            self._jobs.append(job)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._jobs) + int(self._busy)

    def stop_accepting(self) -> None:
        """Refuse new jobs; the thread finishes the queued ones, then ends."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and self._accepting:
                    self._cond.wait()
                if not self._jobs:
                    return
                batch, expired = self._take_batch()
                self._busy = True  # until every taken job has been answered
            for job in expired:
                _finish(job, _failed(job, NodeError(ErrorCode.TIMEOUT, f"deadline {job.deadline:.3f} passed while queued")))
            if batch:
                self._run_batch(batch)
            with self._cond:
                self._busy = False

    def _take_batch(self) -> tuple[list[Job], list[Job]]:
        """The oldest live job plus later queued jobs with the same settings, up to max_batch samples."""
        now = time.time()
        batch: list[Job] = []
        expired: list[Job] = []
        kept: deque[Job] = deque()
        samples = 0
        while self._jobs:
            job = self._jobs.popleft()
            if job.deadline is not None and job.deadline < now:
                expired.append(job)
            elif not batch or (job.settings == batch[0].settings and samples + len(job.instructions) <= self.max_batch):
                batch.append(job)
                samples += len(job.instructions)
            else:
                kept.append(job)
        self._jobs = kept
        return batch, expired

    def _run_batch(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        settings = jobs[0].settings
        try:
            frames = np.concatenate([np.broadcast_to(j.frames, (len(j.instructions),) + j.frames.shape) for j in jobs])
            out = self.predictor.predict(
                frames,
                [text for j in jobs for text in j.instructions],
                num_frames=settings.num_frames,
                steps=settings.steps,
                guidance_frame=settings.guidance_frame,
                guidance_text=settings.guidance_text,
                seed=[seed for j in jobs for seed in j.seeds],
            )
            expected = (len(frames), settings.num_frames - frames.shape[1]) + frames.shape[2:]
            if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != expected:
                raise RuntimeError(f"model returned {quote(out)}, expected uint8 {expected}")
        except Exception as exc:  # the model is foreign code: any failure becomes a MODEL_ERROR reply
            if len(jobs) > 1:
                log.warning("batch of %d requests failed (%s); running them one by one", len(jobs), exc)
                for job in jobs:
                    self._run_batch([job])
                return
            log.exception("model failed")
            _finish(jobs[0], _failed(jobs[0], NodeError(ErrorCode.MODEL_ERROR, f"{type(exc).__name__}: {exc}")))
            return
        infer_s = time.perf_counter() - started
        offset = 0
        for job in jobs:
            m = len(job.instructions)
            _finish(job, JobResult(out[offset : offset + m], None, started - job.queued_at, infer_s, len(frames)))
            offset += m


def _finish(job: Job, result: JobResult) -> None:
    """Hand a result to its callback; a failing callback is logged and must not end the worker."""
    try:
        job.on_done(job, result)
    except Exception:
        log.exception("completion callback failed; that request gets no reply")


def _failed(job: Job, error: NodeError) -> JobResult:
    return JobResult(None, error, time.perf_counter() - job.queued_at, 0.0, 0)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header, read before decoding so a huge image is refused cheaply."""
    if data.startswith(PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return height, width
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def decode_image(data: bytes, max_side: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (h, w, 3) RGB, or BAD_IMAGE / TOO_LARGE."""
    size = image_size(data)
    if size is None:
        raise NodeError(ErrorCode.BAD_IMAGE, f"not a PNG or JPEG image (starts {data[:8]!r}, {len(data)} bytes)")
    if max(size) > max_side or min(size) < 1:
        raise NodeError(ErrorCode.TOO_LARGE, f"image size {size} is outside 1..{max_side} pixels a side")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise NodeError(ErrorCode.BAD_IMAGE, f"corrupt image ({len(data)} bytes, header says {size[0]}x{size[1]})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def prepare_frames(frames: np.ndarray | Sequence[bytes], spec: ModelSpec, limits: Limits) -> np.ndarray:
    """Frames of any size -> uint8 (K, H, W, 3) at model resolution: scale to cover, centre-crop."""
    if isinstance(frames, np.ndarray):
        return np.ascontiguousarray(fit_frames(frames, spec.height, spec.width))
    return np.stack([fit_frames(decode_image(f, limits.max_image_side)[None], spec.height, spec.width)[0] for f in frames])


def encode_jpeg(frames: np.ndarray) -> list[list[bytes]]:
    """uint8 (M, T, H, W, 3) RGB -> M lists of T JPEG byte strings."""
    out = []
    for clip in frames:
        row = []
        for frame in clip:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            row.append(data.tobytes())
        out.append(row)
    return out


class NodeServer:
    """The ZeroMQ front: one ROUTER socket, validation at the edge, replies routed back by identity.

    REQ clients send [identity, b"", body]; DEALER clients send [identity, body]. The reply
    goes back with the same envelope, so both work; a reply to a vanished client is dropped
    by ROUTER, so it never wedges the node.
    """

    def __init__(self, predictor: Predictor, config: ServerConfig = ServerConfig()):
        self.config = config
        self.predictor = predictor
        self.spec = ModelSpec(predictor.height, predictor.width, predictor.num_frames, predictor.context_frames)
        self.card = predictor.info()
        self._summary = {"name": self.card.get("card", {}).get("name")} | {
            key: self.card[key] for key in MODEL_SUMMARY_KEYS if key in self.card
        }
        self._worker = InferenceWorker(predictor, config.max_queue, config.max_batch)
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
                        log.info("stopping: draining %d pending requests", self._worker.pending)
                        self._worker.stop_accepting()
                        drain_until = time.monotonic() + self.config.drain_timeout_s
                    if self._worker.pending == 0:
                        self._flush_replies()
                        break
                    if time.monotonic() > drain_until:
                        log.warning("drain timed out with %d requests pending", self._worker.pending)
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
        defaults = self.predictor.defaults
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
        return ok_reply(request.id, frames=frames, size=[self.spec.height, self.spec.width], timing=timing, model=self._summary)

    def _meta_reply(self, request: MetaRequest, received: float) -> dict:
        if request.method == "health":
            fields = {
                "status": "draining" if self._stopping.is_set() else "ok",
                "pending": self._worker.pending,
                "uptime_s": time.time() - self._started,
                "served": self._served,
            }
        else:
            fields = {
                "model": self.card,
                "size": [self.spec.height, self.spec.width],
                "num_frames": self.spec.num_frames,
                "context_frames": self.spec.context_frames,
                "defaults": dict(self.predictor.defaults),
                "limits": asdict(self.config.limits),
                "max_message_bytes": self.config.max_message_bytes,
                "max_batch": self.config.max_batch,
                "protocol": PROTOCOL_VERSION,
                "versions": {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
                             "numpy": np.__version__, "opencv": cv2.__version__},
            }
        return ok_reply(request.id, **fields, timing={"total_s": time.perf_counter() - received})


def _or(value: float | None, default: Any) -> float:
    return float(default) if value is None else value


def _is_local(endpoint: str) -> bool:
    return endpoint.startswith(("ipc://", "inproc://", "tcp://127.", "tcp://localhost:", "tcp://[::1]:"))


def serve(predictor: Predictor, config: ServerConfig = ServerConfig()) -> None:
    """Run a node in this thread until SIGINT/SIGTERM (when called from the main thread) or stop()."""
    server = NodeServer(predictor, config)
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


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `foresight serve`."""
    parser.add_argument("--model", default="tiny", help="'tiny' (embedded), 'tiny-random', or a model folder")
    parser.add_argument("--bind", default=DEFAULT_BIND, help="ZeroMQ endpoint to bind (default %(default)s)")
    parser.add_argument("--backend", default=None, help="auto | tensorrt | onnxruntime | torch (default: the pipeline's)")
    parser.add_argument("--engines", default=None, help="folder of exported engines (export/build_engines.py)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for the GPU backends")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for PyTorch and ONNX Runtime (default 0: each runtime's own)")
    parser.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                        help="larger messages are refused by ZeroMQ (peer disconnected)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="samples per model call")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="queued requests before OVERLOADED")
    parser.add_argument("--curve-secret", type=Path, default=None, help="server certificate with secret key (zmq.auth)")
    parser.add_argument("--curve-clients", type=Path, default=None, help="folder of allowed client public keys")


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `foresight serve`: load the model, serve until a signal, exit 0."""
    from foresight.pipeline import load_pipeline  # the model is only needed by the serving process

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    choices = {key: value for key, value in (("backend", args.backend), ("engines", args.engines)) if value is not None}
    choices |= {"device": args.device, "threads": args.threads}
    # Load on a short-lived thread so the main thread never owns an OpenMP pool. Pools are per
    # thread: with one on the main thread and one on the inference thread, libgomp counts more
    # threads than cores and throttles its spin-waiting, and every small op pays a wake-up
    # (25 steps of the embedded model: 3.6 s instead of 2.2 s). A pool goes away with its thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="foresight-load") as loader:
        predictor = loader.submit(load_pipeline, args.model, **choices).result()
    config = ServerConfig(
        bind=args.bind,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        curve_secret_file=args.curve_secret,
        curve_clients_dir=args.curve_clients,
    )
    serve(predictor, config)
    return 0
