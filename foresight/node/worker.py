"""What runs the model behind the node's front: the worker interface and the in-process worker.

The ZeroMQ front (`foresight.node.server`) hands validated `Job`s to a `Worker` and gets each
result back through the job's `on_done` callback. Two workers implement the interface: the
`LocalWorker` here (one thread that owns the model and batches compatible jobs) and the Ray Serve
one in `foresight.node.ray_worker` (the same `LocalWorker` inside each replica).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
from foresight_client.protocol import ErrorCode, ModelGeometry, NodeError, quote

from foresight.config import SamplerSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 64  # jobs waiting for the worker before OVERLOADED
DEFAULT_MAX_BATCH = 16  # samples (instructions) the worker runs in one model call
SHUTTING_DOWN_MESSAGE = "the node is shutting down and takes no new work"
MODEL_SUMMARY_KEYS = ("backend", "dtype", "device")  # with the card's name, repeated in every predict reply


class Predictor(Protocol):
    """What a worker needs from a model (foresight.pipeline's pipeline, or a test stand-in)."""

    height: int
    width: int
    num_frames: int
    context_frames: int
    defaults: SamplerSettings

    def predict(
        self,
        frames: np.ndarray,
        instructions: list[str],
        *,
        num_frames: int | None = None,
        steps: int | None = None,
        guidance_frame: float | None = None,
        guidance_text: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        seed: int | list[int] = 0,
    ) -> np.ndarray: ...

    def info(self) -> dict: ...


@dataclass(frozen=True)
class Settings:
    """A job's clip length and sampler, fully resolved: jobs with equal settings can share one model call."""

    num_frames: int
    sampler: SamplerSettings


@dataclass(frozen=True)
class JobResult:
    frames: np.ndarray | None  # uint8 (M, N-K, H, W, 3) on success
    error: NodeError | None
    queue_s: float
    infer_s: float
    batch: int  # samples in the model call this job ran in
    model: dict  # short summary of the model that ran it: name, backend, dtype, device (and replica)


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
    answered: bool = False  # set once on_done has been called


class Incidents:
    """Failures of the node's own code on one message, each logged once under a number and counted.

    The number goes into the `INTERNAL` reply, so an operator finds the log line (with its stack
    trace) that belongs to a client's report; the reply itself carries no trace and no text of the
    exception, which could hold another request's data.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def record(self, exc: BaseException, doing: str, request: object = None) -> NodeError:
        """Log `exc` (raised while `doing` something) and return the INTERNAL error to answer with.

        request: what names the request in the log: its id, or its instructions where the id is not at hand.
        """
        with self._lock:
            self._count += 1
            number = self._count
        log.error("incident %d: %s (request %s) failed with %s: %s", number, doing, quote(request),
                  type(exc).__name__, exc, exc_info=exc)
        return NodeError(ErrorCode.INTERNAL, f"the node failed while {doing} ({type(exc).__name__}, incident {number} "
                                             "in its log); it goes on serving")


class Worker(Protocol):
    """The front's whole view of what runs the model.

    `submit` either raises NodeError (OVERLOADED, SHUTTING_DOWN) or later calls the job's
    `on_done` exactly once, from any thread, with frames or a NodeError (TIMEOUT, MODEL_ERROR, INTERNAL).
    """

    geometry: ModelGeometry
    defaults: SamplerSettings  # the model's; a request's unset values take these
    incidents: Incidents  # the node's one incident log and count; the front records its own failures in it too

    def start(self) -> None: ...

    def submit(self, job: Job) -> None: ...

    def describe(self) -> dict:
        """Fields for the `info` reply: at least `model` (the model card)."""
        ...

    def health(self) -> dict:
        """Fields for the `health` reply: at least `pending` (jobs accepted and not yet answered)."""
        ...

    def stop_accepting(self) -> None:
        """Refuse new jobs; accepted ones still finish."""
        ...

    def join(self, timeout: float | None = None) -> bool:
        """Wait for accepted jobs to finish and release resources; True if everything ended."""
        ...


def model_summary(card: dict) -> dict:
    """The short model summary repeated in every predict reply."""
    return {"name": card.get("card", {}).get("name")} | {key: card[key] for key in MODEL_SUMMARY_KEYS if key in card}


class LocalWorker:
    """Runs jobs on a model in one thread of this process; batches queued jobs with equal settings."""

    def __init__(self, predictor: Predictor, max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH,
                 labels: dict | None = None):
        """labels: added to the model summary of every result (a Ray replica's id and process)."""
        self.predictor = predictor
        self.geometry = ModelGeometry(predictor.height, predictor.width, predictor.num_frames, predictor.context_frames)
        self.defaults = predictor.defaults
        self.card = predictor.info()
        self.summary = model_summary(self.card) | (labels or {})
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._busy = False
        self.incidents = Incidents()
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

    def describe(self) -> dict:
        return {"model": self.card, "max_batch": self.max_batch}

    def health(self) -> dict:
        return {"pending": self.pending}

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
            try:
                for job in expired:
                    self._finish(job, self._failed(job, NodeError(ErrorCode.TIMEOUT, f"deadline {job.deadline:.3f} passed while queued")))
                if batch:
                    self._run_batch(batch)
            except Exception as exc:  # a bug here must not end the thread that every later request waits on
                error = self.incidents.record(exc, f"running a batch of {len(batch)} requests")
                for job in expired + batch:
                    if not job.answered:
                        self._finish(job, self._failed(job, error))
            finally:
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
        sampler = settings.sampler
        try:
            frames = np.concatenate([np.broadcast_to(j.frames, (len(j.instructions),) + j.frames.shape) for j in jobs])
            out = self.predictor.predict(
                frames,
                [text for j in jobs for text in j.instructions],
                num_frames=settings.num_frames,
                steps=sampler.steps,
                guidance_frame=sampler.guidance_frame,
                guidance_text=sampler.guidance_text,
                guidance_interval=sampler.guidance_interval,
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
            self._finish(jobs[0], self._failed(jobs[0], NodeError(ErrorCode.MODEL_ERROR, f"{type(exc).__name__}: {exc}")))
            return
        infer_s = time.perf_counter() - started
        offset = 0
        for job in jobs:
            m = len(job.instructions)
            self._finish(job, JobResult(out[offset : offset + m], None, started - job.queued_at, infer_s, len(frames), self.summary))
            offset += m

    def _failed(self, job: Job, error: NodeError) -> JobResult:
        return JobResult(None, error, time.perf_counter() - job.queued_at, 0.0, 0, self.summary)

    def _finish(self, job: Job, result: JobResult) -> None:
        """Hand a result to its callback once; a failing callback is an incident and must not end the worker."""
        job.answered = True
        try:
            job.on_done(job, result)
        except Exception as exc:
            self.incidents.record(exc, "handing a result to its reply (that request gets no reply)", job.instructions)


def warm_up(predictor: Predictor) -> None:
    """One prediction at the default settings on black frames (compiles what a first request would)."""
    frames = np.zeros((predictor.context_frames, predictor.height, predictor.width, 3), np.uint8)
    log.info("warm-up prediction (torch.compile)")
    predictor.predict(frames, ["warm up"])
