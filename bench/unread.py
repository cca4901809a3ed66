"""`python -m bench.unread`: does the node give memory back after clients that never read their replies?

A client pipelines requests over a DEALER socket and never reads a reply, then disconnects; a
second client waits (through `health`) until the node has answered everything, and the node's
resident memory is read from /proc after each round. Repeated rounds should end where the first
did: what one connection may hold is bounded (`max_unread_replies`), and freed memory goes back
to the system. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq
from foresight_client import wire
from foresight_client.client import ForesightClient

from foresight.node.process import running_node
from sim_bridge.common.logs import setup_logging

log = logging.getLogger("bench.unread")

SETTLE_S = 3.0  # after the last reply, for ZeroMQ and the node's idle trimming to let buffers go
DRAIN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class UnreadRounds:
    model: str
    requests: int  # per round
    instructions: int  # per request
    reply_bytes: int  # of one successful reply's frames
    rss_start_mib: float  # after the model loaded and answered one request
    rss_mib: list[float]  # after each round, the client gone
    errors_by_code: dict
    dropped_replies: int

    @property
    def growth_mib(self) -> float:
        """The most any later round ends above the first."""
        return max(self.rss_mib) - self.rss_mib[0]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def measure(endpoint: str, rounds: int = 3, requests: int = 400, instructions: int = 6) -> UnreadRounds:
    """Run `rounds` rounds of `requests` unread predict requests against the node at `endpoint` (on this machine)."""
    with ForesightClient(endpoint, timeout_s=60, retries=0) as watcher:
        info = watcher.info()
        pid = watcher.health()["pid"]
        k, height, width = info["context_frames"], *info["size"]
        frames = np.zeros((k, height, width, 3), np.uint8)
        request = {"method": "predict", "frames": frames, "instruction": [f"push block {i}" for i in range(instructions)],
                   "steps": 1}
        watcher.predict(frames, request["instruction"], steps=1)
        start = rss_mib(pid)
        after = []
        for round_ in range(rounds):
            served = watcher.health()["served"]
            client = _send_unread(endpoint, request, requests)
            _wait_answered(watcher, served, requests)
            client.close(linger=0)
            time.sleep(SETTLE_S)
            after.append(rss_mib(pid))
            log.info("round %d: RSS %.0f MiB (start %.0f)", round_ + 1, after[-1], start)
        health = watcher.health()
    reply_bytes = instructions * (info["num_frames"] - k) * height * width * 3
    return UnreadRounds(info["model"].get("card", {}).get("name", "?"), requests, instructions, reply_bytes, start, after,
                        health["errors_by_code"], health["dropped_replies"])


def _send_unread(endpoint: str, request: dict, count: int) -> zmq.Socket:
    """A connected DEALER that has sent `count` requests and will never read a reply."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.RCVHWM, 1)  # take as little as ZeroMQ allows off the wire
    socket.connect(endpoint)
    for i in range(count):
        socket.send(wire.packb(request | {"id": i}))
    return socket


def _wait_answered(watcher: ForesightClient, served: int, count: int) -> None:
    """Until the node has answered (or dropped the answers to) `count` requests beyond `served`
    (its health count before they were sent) and holds no work. Waiting for "no work" alone could
    end before the requests have even left this process on a busy machine."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    probes = 0
    while True:
        health = watcher.health()
        probes += 1  # every health reply is counted too: the one that read `served` and each since
        if health["served"] - served - probes >= count and health["pending"] == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node answered {health['served'] - served - probes} of {count} requests "
                               f"in {DRAIN_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.unread", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="unread requests per round")
    parser.add_argument("--instructions", type=int, default=6, help="per request (6 on tiny: 504 KiB replies)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--serve-args", default="", help="further `foresight serve` options, in one string")
    args = parser.parse_args(argv)
    setup_logging()
    queue = ("--max-queue", str(2 * args.requests))  # every request is run, so every reply is a full one
    serve_args = ("--threads", "1", *queue, *args.serve_args.split())
    with running_node(args.model, Path(tempfile.mkdtemp(prefix="unread-")) / "node.log", serve_args) as endpoint:
        result = measure(endpoint, args.rounds, args.requests, args.instructions)
    figures = asdict(result) | {"growth_mib": result.growth_mib}
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
