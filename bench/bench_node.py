"""Node overhead and batch amortisation, measured in one run on one machine.

overhead: a predict round trip through the node (tcp loopback, REQ client) against the same
pipeline.predict called in process; the share of the round trip that is not the model.
amortisation: one request with 4 instructions against 4 one-instruction requests in sequence.
Medians of --runs runs after --warmup runs.

    python bench/bench_node.py --model tiny-random --runs 7 --steps 2
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Callable

import numpy as np

from foresight.node.client import ForesightClient
from foresight.node.server import NodeServer, ServerConfig
from foresight.pipeline import load_pipeline

INSTRUCTIONS = ["push the red block left", "push the red block right", "lift the cup", "open the drawer"]
CAMERA_SIZE = (480, 640)  # a Bridge camera frame; the node resizes it, so the in-process call does too


def median_time(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=None, help="clip length (default: the model's N)")
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    server = NodeServer(pipe, ServerConfig(bind="tcp://127.0.0.1:*"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    frames = np.random.default_rng(0).integers(0, 256, (pipe.context_frames, *CAMERA_SIZE, 3), dtype=np.uint8)
    options = {"steps": args.steps, "num_frames": args.num_frames or pipe.num_frames}
    try:
        with ForesightClient(server.endpoint, timeout_s=600.0, retries=0) as client:
            inproc = median_time(lambda: pipe.predict(frames, INSTRUCTIONS[:1], **options), args.runs, args.warmup)
            node = median_time(lambda: client.predict(frames, INSTRUCTIONS[0], **options), args.runs, args.warmup)
            one_request = median_time(lambda: client.predict(frames, INSTRUCTIONS, **options), args.runs, args.warmup)
            separate = median_time(
                lambda: [client.predict(frames, text, **options) for text in INSTRUCTIONS], args.runs, args.warmup
            )
            timing = client.call({"method": "predict", "frames": frames, "instruction": INSTRUCTIONS[0], **options})["timing"]
    finally:
        server.stop()
        thread.join()

    print(f"model {args.model}: {pipe.height}x{pipe.width}, K={pipe.context_frames}, clip {options['num_frames']}, "
          f"{args.steps} steps; camera frames {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}; median of {args.runs}")
    print(f"in-process predict      {inproc * 1e3:9.1f} ms")
    print(f"node round trip         {node * 1e3:9.1f} ms   overhead {node - inproc:+.4f} s = {(node - inproc) / node:.1%} of the round trip")
    print("  node-side breakdown   " + ", ".join(f"{key} {value * 1e3:.1f} ms" for key, value in timing.items() if key.endswith("_s")))
    print(f"4 instructions, 1 call  {one_request * 1e3:9.1f} ms")
    print(f"4 separate requests     {separate * 1e3:9.1f} ms   batching saves {1 - one_request / separate:.1%} ({separate / one_request:.2f}x)")


if __name__ == "__main__":
    main()
