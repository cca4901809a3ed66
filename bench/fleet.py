"""The node over Ray Serve under load: 1 against 2 replicas, for the real model and a stand-in engine.

Two CPU cores cannot show what a second GPU buys: two replicas of the real model share the same
cores. So every configuration also runs with a stand-in engine that sleeps like a GPU call (the
thread waits, the cores stay free), named so in every table. Ray binds to the machine's address,
so this runs inside `../shared/loopback-only` (`python -m bench --fleet` re-executes it there):

    ../shared/loopback-only .venv/bin/python -m bench.fleet
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from foresight_client.client import ForesightClient
from foresight_client.protocol import NodeError

from foresight.config import SamplerSettings
from sim_bridge.common.logs import setup_logging

log = logging.getLogger("bench.fleet")

LOOPBACK = Path(__file__).resolve().parents[1].parent / "shared" / "loopback-only"
STAND_IN = "stand-in engine (sleeps like a GPU call)"
REAL = "tiny-random model (CPU)"
CLIENT_TIMEOUT_S = 300.0


class SleepingEngine:
    """A stand-in for a GPU model: the tiny-random geometry, and a batched call that sleeps.

    One sampler step costs `step_s` plus `per_sample_s` per sample: a GPU's batched cost shape,
    compute-bound as a video diffusion UNet is at batch 2 and more. The frames it returns are
    black. It measures the serving path, never the model.
    """

    def __init__(self, step_s: float = 0.005, per_sample_s: float = 0.02) -> None:
        self.height, self.width, self.num_frames, self.context_frames = 64, 64, 8, 1
        self.defaults = SamplerSettings(steps=10, guidance_frame=1.0, guidance_text=1.0)
        self.step_s, self.per_sample_s = step_s, per_sample_s

    def info(self) -> dict:
        return {"card": {"name": STAND_IN}, "backend": {"name": "sleep"}, "dtype": "none", "device": "none"}

    def predict(self, frames: np.ndarray, instructions: list[str], *, num_frames: int | None = None, steps: int | None = None,
                guidance_frame: float | None = None, guidance_text: float | None = None,
                guidance_interval: tuple[float, float] | None = None, seed: int | list[int] = 0) -> np.ndarray:
        steps = steps or self.defaults.steps
        time.sleep(steps * (self.step_s + self.per_sample_s * len(instructions)))
        n = (num_frames or self.num_frames) - self.context_frames
        return np.zeros((len(instructions), n, self.height, self.width, 3), np.uint8)


def load(endpoint: str, clients: int, requests: int, steps: int, shape: tuple[int, int, int]) -> dict:
    """`clients` concurrent clients, `requests` one-instruction requests in all; latency and throughput."""
    frames = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    latencies: list[float] = []
    batches: list[int] = []
    replicas: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        with ForesightClient(endpoint, timeout_s=CLIENT_TIMEOUT_S, retries=0) as node:
            for i in range(requests // clients):
                start = time.perf_counter()
                try:
                    reply = node.call({"method": "predict", "frames": frames, "instruction": ["push"], "steps": steps,
                                       "seed": index * 1000 + i})
                except NodeError as exc:
                    with lock:
                        errors.append(exc.code)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    batches.append(reply["timing"]["batch"])
                    replicas.add(reply["model"]["replica"])

    with ForesightClient(endpoint, timeout_s=CLIENT_TIMEOUT_S, retries=0) as node:  # warm-up, not counted
        node.call({"method": "predict", "frames": frames, "instruction": ["push"], "steps": steps})
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies) + len(errors), "steps": steps, "wall_s": wall,
            "throughput_rps": len(latencies) / wall, "p50_s": float(np.percentile(latencies, 50)),
            "p99_s": float(np.percentile(latencies, 99)), "mean_batch": statistics.mean(batches),
            "replicas_used": len(replicas), "errors": len(errors)}


def run(replica_counts: list[int], clients: int, requests: int, steps: int) -> list[dict]:
    """Every engine x replica count on one local cluster; one application at a time."""
    from ray import serve

    from foresight.node import ray_worker
    from foresight.node.server import NodeServer, ServerConfig
    from foresight.pipeline import load_pipeline

    engines = {REAL: functools.partial(load_pipeline, "tiny-random", threads=1), STAND_IN: SleepingEngine}
    rows = []
    ray_worker.connect("local")
    try:
        for engine, factory in engines.items():
            for replicas in replica_counts:
                app = f"fleet-{len(rows)}"
                config = ray_worker.DeploymentConfig(load=factory, replicas=replicas, max_batch=8, max_queue=32)
                started = time.perf_counter()
                worker = ray_worker.RayWorker(ray_worker.deployment_handle(config, app), app, max_inflight=64)
                ready_s = time.perf_counter() - started
                server = NodeServer(worker, ServerConfig(bind="tcp://127.0.0.1:*"))
                thread = threading.Thread(target=server.run, daemon=True)
                thread.start()
                shape = (worker.geometry.context_frames, worker.geometry.height, worker.geometry.width, 3)
                row = {"engine": engine, "replicas": replicas, "ready_s": ready_s} | load(server.endpoint, clients, requests, steps, shape)
                log.info("%s", row)
                rows.append(row)
                server.stop()
                thread.join(timeout=60)
                serve.delete(app)
    finally:
        serve.shutdown()
        ray_worker.ray.shutdown()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| engine | replicas | clients | requests | throughput (req/s) | p50 (s) | p99 (s) | mean batch | replicas used | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['replicas']} | {r['clients']} | {r['requests']} | {r['throughput_rps']:.2f} | "
                     f"{r['p50_s']:.3f} | {r['p99_s']:.3f} | {r['mean_batch']:.2f} | {r['replicas_used']} | {r['errors']} |")
    for engine in dict.fromkeys(r["engine"] for r in rows):
        by = {r["replicas"]: r["throughput_rps"] for r in rows if r["engine"] == engine}
        if 1 in by and 2 in by:
            lines.append(f"\n{engine}: 2 replicas give {by[2] / by[1]:.2f}x the throughput of 1.")
    return "\n".join(lines)


def run_isolated(out: Path, quick: bool) -> list[dict]:
    """Run this bench in a loopback-only namespace (Ray must not see a public address); return its rows."""
    if not LOOPBACK.exists():
        raise RuntimeError(f"{LOOPBACK} is missing: the fleet bench starts Ray and needs a loopback-only namespace")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fleet.json"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(LOOPBACK), sys.executable, "-m", "bench.fleet", "--json", str(path)] + (["--quick"] if quick else []),
                   check=True, env=env)
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48, help="requests in all, per configuration")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="4 clients, 16 requests, 2 steps")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    setup_logging()
    clients, requests, steps = (4, 16, 2) if args.quick else (args.clients, args.requests, args.steps)
    rows = run([1, 2], clients, requests, steps)
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
