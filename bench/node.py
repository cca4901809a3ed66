"""The node as a robot sees it: overhead of a request, batching, and many clients at once.

The nodes run as `foresight serve` child processes (tcp loopback, REQ clients), as a robot
meets them, with the same thread count as the in-process calls they are compared against. A
node in a thread of this process would be slowed by a second OpenMP pool (see
foresight.node.cli.run_serve).
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from foresight_client.client import ForesightClient
from foresight_client.protocol import NodeError

from bench.core import (
    CAMERA_SIZE,
    INSTRUCTIONS,
    Plan,
    Timing,
    measure_side_by_side,
    random_frames,
)
from foresight.pipeline import ForesightPipeline

CLIENT_TIMEOUT_S = 900.0  # a loaded CPU can take minutes; a retry would only double-count a request


def client(endpoint: str) -> ForesightClient:
    return ForesightClient(endpoint, timeout_s=CLIENT_TIMEOUT_S, retries=0)


def check_backend(endpoint: str, expected: str) -> None:
    """Refuse to measure a node that fell back to another backend (e.g. engines refused)."""
    with client(endpoint) as node:
        info = node.info()["model"]["backend"]
    if info["name"] != expected:
        raise RuntimeError(f"the node at {endpoint} runs {info['name']}, not {expected}: {info.get('skipped')}")


def predict(node: ForesightClient, frames: np.ndarray, instructions: list[str], steps: int, seed: int = 0) -> dict:
    """One predict request; returns the whole reply (frames and the node's own timing)."""
    return node.call({"method": "predict", "frames": frames, "instruction": instructions, "steps": steps, "seed": seed})


def overhead(pipe: ForesightPipeline, endpoint: str, steps: int, plan: Plan) -> dict:
    """Round trip through the node against pipeline.predict in process, on the same camera frames.

    Two views: the difference of the two medians (what the brief asks), and the paired one: each
    round trip minus the model time the node measured inside that same request (less noisy).
    """
    frames = random_frames(pipe.context_frames, *CAMERA_SIZE)
    text = [INSTRUCTIONS[0]]
    paired: list[float] = []

    with client(endpoint) as node:
        def call() -> None:
            start = time.perf_counter()
            reply = predict(node, frames, text, steps)
            paired.append(time.perf_counter() - start - reply["timing"]["infer_s"])

        timings = measure_side_by_side({"in_process": lambda: pipe.predict(frames, text, steps=steps), "round_trip": call},
                                       plan.runs, plan.warmup, "in-process predict and node round trip")
        breakdown = predict(node, frames, text, steps)["timing"]
    inproc, round_trip = timings["in_process"], timings["round_trip"]
    paired = paired[plan.warmup:]
    return {
        "steps": steps,
        "frames_in": list(frames.shape),
        "in_process": inproc,
        "round_trip": round_trip,
        "overhead_s": round_trip.median - inproc.median,
        "overhead_share": (round_trip.median - inproc.median) / round_trip.median,
        "paired_overhead": Timing.of(paired),
        "paired_share": statistics.median(paired) / round_trip.median,
        "node_timing": breakdown,
    }


def batching(pipe: ForesightPipeline, endpoint: str, steps: int, plan: Plan) -> list[dict]:
    """One request with M instructions against M one-instruction requests in sequence."""
    frames = random_frames(pipe.context_frames, pipe.height, pipe.width)
    rows = []
    with client(endpoint) as node:
        predict(node, frames, list(INSTRUCTIONS[:max(plan.batch_sizes)]), steps)  # warm-up at the largest batch
        for m in plan.batch_sizes:
            texts = list(INSTRUCTIONS[:m])
            timings = measure_side_by_side(
                {"one": lambda: predict(node, frames, texts, steps), "many": lambda: [predict(node, frames, [t], steps) for t in texts]},
                plan.batch_runs, 0, f"1 request x {m} and {m} requests")
            one, many = timings["one"], timings["many"]
            rows.append({"m": m, "one_request": one, "separate": many, "speedup": many.median / one.median})
    return rows


def load(pipe: ForesightPipeline, endpoint: str, steps: int, plan: Plan) -> dict:
    """`load_clients` concurrent clients send `load_requests` requests in all; the node may batch them."""
    frames = random_frames(pipe.context_frames, pipe.height, pipe.width)
    per_client = -(-plan.load_requests // plan.load_clients)
    latencies: list[float] = []
    batches: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run_client(index: int) -> None:
        with client(endpoint) as node:
            for i in range(per_client):
                start = time.perf_counter()
                try:
                    reply = predict(node, frames, [INSTRUCTIONS[index % len(INSTRUCTIONS)]], steps, seed=index * 1000 + i)
                except NodeError as exc:
                    with lock:
                        errors.append(f"{exc.code}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    batches.append(int(reply["timing"]["batch"]))

    with client(endpoint) as node:  # warm-up, not counted
        predict(node, frames, [INSTRUCTIONS[0]], steps)
    start = time.perf_counter()
    with ThreadPoolExecutor(plan.load_clients) as pool:
        list(pool.map(run_client, range(plan.load_clients)))
    wall = time.perf_counter() - start
    total = per_client * plan.load_clients
    return {
        "clients": plan.load_clients,
        "requests": total,
        "steps": steps,
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall,
        "p50_s": float(np.percentile(latencies, 50)) if latencies else None,
        "p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "min_s": min(latencies, default=None),
        "max_s": max(latencies, default=None),
        "mean_batch": statistics.mean(batches) if batches else None,
        "errors": len(errors),
        "error_messages": errors[:5],
    }
