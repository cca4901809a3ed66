"""One Ray cluster, three checks of the node over Ray Serve; run by test_node_ray.py in a loopback-only namespace.

Prints one JSON line with what it measured: bit-identity against the in-process pipeline, which
replicas served, and what a SIGKILLed replica cost the clients. Starting a cluster costs ~15 s,
so the checks share one.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import torch
import zmq
from foresight_client import wire

from foresight.node import ray_worker
from foresight.node.server import NodeServer, ServerConfig
from foresight.pipeline import load_pipeline

FAST = {"steps": 2, "num_frames": 3}
REPLY_MS = 120_000
LOAD_CLIENTS = 3
REPLACE_TIMEOUT_S = 240.0  # a new replica loads the model: minutes on a busy 2-core machine


def dealer(endpoint: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def ask(socket: zmq.Socket, request: dict) -> dict:
    socket.send(wire.packb(request))
    if not socket.poll(REPLY_MS):
        return {"ok": False, "error": {"code": "NO_REPLY", "message": f"nothing in {REPLY_MS} ms"}}
    return wire.unpackb(socket.recv())


def frames_for(pipe, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (pipe.context_frames, pipe.height, pipe.width, 3), np.uint8)


def bit_identity(pipe, endpoint: str) -> dict:
    socket = dealer(endpoint)
    frames = frames_for(pipe, 0)
    reply = ask(socket, {"method": "predict", "id": "same", "frames": frames, "instruction": ["push the cup left"], "seed": 5, **FAST})
    socket.close()
    local = pipe.predict(frames, ["push the cup left"], seed=5, **FAST)
    return {"ok": reply["ok"], "identical": bool(reply["ok"] and np.array_equal(reply["frames"], local)),
            "max_diff": int(np.abs(reply["frames"].astype(int) - local).max()) if reply["ok"] else None}


def both_serve(pipe, endpoint: str) -> dict:
    socket = dealer(endpoint)
    for i in range(12):  # pipelined: Serve spreads them over the replicas by queue length
        socket.send(wire.packb({"method": "predict", "id": i, "frames": frames_for(pipe, i), "instruction": "x", "seed": i, **FAST}))
    replies = []
    for _ in range(12):
        replies.append(wire.unpackb(socket.recv()) if socket.poll(REPLY_MS) else {"ok": False})
    socket.close()
    return {"ok": sum(r["ok"] for r in replies), "replicas": sorted({r["model"]["replica"] for r in replies if r["ok"]})}


def kill_under_load(pipe, endpoint: str) -> dict:
    """SIGKILL one replica while clients keep sending; count client errors until it is replaced."""
    stop = threading.Event()
    outcomes: list[dict] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        socket = dealer(endpoint)
        i = 0
        while not stop.is_set():
            reply = ask(socket, {"method": "predict", "id": f"{index}-{i}", "frames": frames_for(pipe, index), "instruction": "x",
                                 "seed": i, **FAST})
            with lock:
                outcomes.append({"ok": reply["ok"], "error": reply.get("error"), "replica": (reply.get("model") or {}).get("replica"),
                                 "pid": (reply.get("model") or {}).get("pid"), "at": time.monotonic()})
            i += 1
        socket.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    while len(outcomes) < 4:
        time.sleep(0.05)
    with lock:
        victim = next(o for o in outcomes if o["ok"])
    before = {o["replica"] for o in outcomes if o["ok"]}
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    replaced_after = None
    while time.monotonic() - killed_at < REPLACE_TIMEOUT_S:
        with lock:
            fresh = {o["replica"] for o in outcomes if o["ok"] and o["at"] > killed_at} - before - {victim["replica"]}
        if fresh:
            replaced_after = time.monotonic() - killed_at
            break
        time.sleep(0.2)
    time.sleep(1.0)  # a little more load on the new set of replicas
    stop.set()
    for thread in threads:
        thread.join(timeout=REPLY_MS / 1000)
    errors = [o["error"] for o in outcomes if not o["ok"]]
    return {"requests": len(outcomes), "errors": len(errors), "error_samples": errors[:3], "victim": victim["replica"],
            "replaced_after_s": replaced_after, "served_by_victim_after_kill": sum(
                1 for o in outcomes if o["ok"] and o["replica"] == victim["replica"] and o["at"] > killed_at + 1.0)}


def main() -> None:
    torch.set_num_threads(1)  # as each replica (Ray gives a 1-CPU actor one thread)
    pipe = load_pipeline("tiny-random", threads=1)
    started = time.perf_counter()
    ray_worker.connect("local")
    results: dict = {}
    try:
        config = ray_worker.DeploymentConfig(load=functools.partial(load_pipeline, "tiny-random", threads=1), replicas=2, max_batch=4)
        worker = ray_worker.RayWorker(ray_worker.deployment_handle(config), max_inflight=16)
        results["ready_s"] = time.perf_counter() - started
        server = NodeServer(worker, ServerConfig(bind="tcp://127.0.0.1:*"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        results["identity"] = bit_identity(pipe, server.endpoint)
        results["both"] = both_serve(pipe, server.endpoint)
        results["kill"] = kill_under_load(pipe, server.endpoint)
        socket = dealer(server.endpoint)
        info = ask(socket, {"method": "info"})
        socket.close()
        results["info_ray"] = info.get("ray")
        server.stop()
        thread.join(timeout=60)
    finally:
        ray_worker.serve.shutdown()
        ray_worker.ray.shutdown()
    results["wall_s"] = time.perf_counter() - started
    print("RESULT " + json.dumps(results, default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
