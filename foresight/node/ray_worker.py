"""The node over Ray Serve: replicas hold the model, the ZeroMQ front stays as it is.

A `ForesightReplica` is a Ray Serve deployment that loads the whole pipeline once (its engines
too) and runs the same `LocalWorker` as an in-process node, so requests that wait together in a
replica run as one batch. `RayWorker` is the front's `Worker` over a deployment handle: it caps
in-flight work (OVERLOADED), keeps deadlines, and retries once a request whose replica died
(every request carries its seeds, so running it again gives the same frames). Several fronts may
share one deployment: a front finds a running application by name and only deploys when none is.

Needs `foresight[ray]`; imported only by `foresight serve --ray`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray
from foresight_client.protocol import ErrorCode, ModelGeometry, NodeError
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from foresight.node.worker import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    SHUTTING_DOWN_MESSAGE,
    Incidents,
    Job,
    JobResult,
    LocalWorker,
    Predictor,
)
from foresight.node.worker import (
    warm_up as run_warm_up,  # `warm_up` is also a setting's name
)

log = logging.getLogger(__name__)

DEFAULT_APP = "foresight"
DEFAULT_MAX_INFLIGHT = 64  # requests a front has in the deployment before it answers OVERLOADED
DEPLOY_TIMEOUT_S = 600.0  # replicas load their models before the front serves
RETRIES = 1  # a request whose replica died runs once more on another replica


@dataclass(frozen=True)
class DeploymentConfig:
    """How many replicas hold the model and what each one loads."""

    load: Callable[[], Predictor]  # run in each replica, e.g. functools.partial(load_pipeline, "tiny", threads=1)
    replicas: int = 1
    max_replicas: int = 1  # above `replicas`: autoscale on in-flight requests per replica
    max_batch: int = DEFAULT_MAX_BATCH
    max_queue: int = DEFAULT_MAX_QUEUE  # requests one replica takes at once (they batch there)
    gpus_per_replica: float = 0.0  # 1 on a GPU cluster
    cpus_per_replica: float = 1.0
    warm_up: bool = False  # one prediction before the replica takes requests (torch.compile)


@serve.deployment(name="ForesightReplica")
class ForesightReplica:
    """One copy of the model and its engines; requests waiting here together run as one batch."""

    def __init__(self, load: Callable[[], Predictor], max_queue: int, max_batch: int, warm_up: bool) -> None:

        predictor = load()
        if warm_up:
            run_warm_up(predictor)
        context = serve.get_replica_context()
        self.identity = {"replica": context.replica_id.unique_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}
        self.worker = LocalWorker(predictor, max_queue, max_batch, labels=self.identity)
        self.worker.start()

    def describe(self) -> dict:
        """What the front needs to validate requests and answer `info`."""
        geometry = self.worker.geometry
        return {"geometry": [geometry.height, geometry.width, geometry.num_frames, geometry.context_frames],
                "defaults": self.worker.defaults,
                "card": self.worker.card, "max_batch": self.worker.max_batch, **self.identity}

    async def __call__(self, request: dict) -> dict:
        """Run one job: frames (K, H, W, 3) uint8, instructions, seeds, settings, deadline."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[JobResult] = loop.create_future()
        try:
            job = Job(request["frames"], tuple(request["instructions"]), tuple(request["seeds"]), request["settings"],
                      request["deadline"], lambda job, result: loop.call_soon_threadsafe(done.set_result, result))
            self.worker.submit(job)  # NodeError (OVERLOADED) travels back to the front as a RayTaskError
        except NodeError:
            raise
        except Exception as exc:  # the front sent a job this replica cannot read: INTERNAL, logged here
            raise self.worker.incidents.record(exc, "taking a job in a replica") from None
        result = await done
        error = None if result.error is None else {"code": result.error.code, "message": result.error.message}
        return {"frames": result.frames, "error": error, "queue_s": result.queue_s, "infer_s": result.infer_s,
                "batch": result.batch, "model": result.model}


def connect(address: str) -> bool:
    """Join the Ray cluster at `address`, or start one in this process for "local"; True if started here.

    Ray learns a node's address by looking up a public one; 127.0.0.1 keeps a local cluster (and
    tests in a loopback-only namespace) on this machine.
    """
    if address == "local":
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)
        serve.start(proxy_location="Disabled")
        return True
    ray.init(address=address, configure_logging=False)
    serve.start(proxy_location="Disabled")
    return False


def deployment_handle(config: DeploymentConfig, app: str = DEFAULT_APP) -> serve.handle.DeploymentHandle:
    """The running application `app`, deployed from `config` first if no front has done so."""
    running = serve.status().applications.get(app)
    if running is not None and running.status == "RUNNING":
        log.info("using the running Ray Serve application %r", app)
        return serve.get_app_handle(app)
    actor = {"num_cpus": config.cpus_per_replica} | ({"num_gpus": config.gpus_per_replica} if config.gpus_per_replica else {})
    if config.max_replicas > config.replicas:
        scale: dict[str, Any] = {"autoscaling_config": {"min_replicas": config.replicas, "max_replicas": config.max_replicas,
                                                        "target_ongoing_requests": config.max_batch}}
    else:
        scale = {"num_replicas": config.replicas}
    deployment = ForesightReplica.options(ray_actor_options=actor, max_ongoing_requests=config.max_queue, **scale)
    log.info("deploying %r: %s replicas of %s (%s)", app, config.replicas, config.load, actor)
    return serve.run(deployment.bind(config.load, config.max_queue, config.max_batch, config.warm_up),
                     name=app, route_prefix=None)


class RayWorker:
    """The front's Worker over a Ray Serve deployment handle."""

    def __init__(self, handle: serve.handle.DeploymentHandle, app: str = DEFAULT_APP,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT) -> None:
        self.handle = handle
        self.app = app
        self.max_inflight = max_inflight
        first = handle.describe.remote().result(timeout_s=DEPLOY_TIMEOUT_S)
        self.geometry = ModelGeometry(*first["geometry"])
        self.defaults = first["defaults"]
        self.card = first["card"]
        self.max_batch = first["max_batch"]
        self._lock = threading.Lock()
        self._inflight = 0
        self._accepting = True
        self._retried = 0
        self.incidents = Incidents()
        self._replicas: dict[str, dict] = {first["replica"]: {"pid": first["pid"], "node": first["node"], "served": 0,
                                                               "backend": _backend_name(first["card"])}}
        self._pool = ThreadPoolExecutor(max_inflight, thread_name_prefix="foresight-ray")

    def start(self) -> None:
        log.info("serving through Ray Serve application %r (%d requests in flight at most)", self.app, self.max_inflight)

    def submit(self, job: Job) -> None:
        with self._lock:
            if not self._accepting:
                raise NodeError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)
            if self._inflight >= self.max_inflight:
                raise NodeError(ErrorCode.OVERLOADED, f"{self._inflight} requests already in flight; retry later")
            self._inflight += 1
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # the pool has shut down: the front is closing
            with self._lock:
                self._inflight -= 1
            raise NodeError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE) from None

    def describe(self) -> dict:
        with self._lock:
            seen = [{"id": key} | value for key, value in self._replicas.items()]
        status = serve.status().applications.get(self.app)
        deployments = {} if status is None else {
            name: {"status": str(getattr(d.status, "value", d.status)), "replicas": dict(d.replica_states)}
            for name, d in status.deployments.items()}
        return {"model": self.card, "max_batch": self.max_batch,
                "ray": {"app": self.app, "deployments": deployments, "replicas_seen": seen, "retried": self._retried}}

    def health(self) -> dict:
        with self._lock:
            return {"pending": self._inflight, "replicas_seen": len(self._replicas)}

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def join(self, timeout: float | None = None) -> bool:
        """The front drains in-flight requests before this; whatever is left is not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            return self._inflight == 0

    def _run(self, job: Job) -> None:
        try:
            result = self._call(job)
        except Exception as exc:  # anything unforeseen from Ray or from this code still answers the request
            result = self._failed(job, self.incidents.record(exc, "calling the Ray deployment", job.instructions))
        with self._lock:
            self._inflight -= 1
        try:
            job.on_done(job, result)
        except Exception as exc:
            self.incidents.record(exc, "handing a result to its reply (that request gets no reply)", job.instructions)

    def _call(self, job: Job) -> JobResult:
        request = {"frames": job.frames, "instructions": list(job.instructions), "seeds": list(job.seeds),
                   "settings": job.settings, "deadline": job.deadline}
        for attempt in range(RETRIES + 1):
            timeout = None if job.deadline is None else max(job.deadline - time.time(), 0.0)
            response = self.handle.remote(request)
            try:
                out = response.result(timeout_s=timeout)
            except (GetTimeoutError, TimeoutError):
                response.cancel()
                return self._failed(job, NodeError(ErrorCode.TIMEOUT, f"deadline {job.deadline:.3f} passed in the deployment"))
            except RayActorError as exc:  # the replica died or became unreachable: Serve replaces it
                if attempt == RETRIES:
                    return self._failed(job, NodeError(ErrorCode.MODEL_ERROR, f"replica lost twice: {type(exc).__name__}"))
                log.warning("replica lost during a request (%s); retrying it once", type(exc).__name__)
                with self._lock:
                    self._retried += 1
                continue
            except RayTaskError as exc:
                cause = exc.cause
                error = cause if isinstance(cause, NodeError) else NodeError(ErrorCode.MODEL_ERROR, str(exc).splitlines()[0])
                return self._failed(job, error)
            return self._result(job, out)
        raise AssertionError("unreachable: the loop returns")

    def _result(self, job: Job, out: dict) -> JobResult:
        model = out["model"]
        with self._lock:
            seen = self._replicas.setdefault(model["replica"], {"pid": model["pid"], "node": model["node"], "served": 0,
                                                                "backend": _backend_name(model)})
            seen["served"] += 1
        error = None if out["error"] is None else NodeError(out["error"]["code"], out["error"]["message"])
        frames = None if out["frames"] is None else np.asarray(out["frames"])
        return JobResult(frames, error, out["queue_s"], out["infer_s"], out["batch"], model)

    @staticmethod
    def _failed(job: Job, error: NodeError) -> JobResult:
        return JobResult(None, error, time.perf_counter() - job.queued_at, 0.0, 0, {})


def _backend_name(card_or_summary: dict) -> Any:
    backend = card_or_summary.get("backend")
    return backend.get("name") if isinstance(backend, dict) else backend
