"""SIGTERM on a real `serve` process: in-flight work is answered, new work refused, exit 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time

import numpy as np
import zmq
from foresight_client import wire
from foresight_client.protocol import ErrorCode

from foresight.node.process import SERVE_COMMAND

STARTUP_S = 120.0
REPLY_MS = 120_000


def test_sigterm_drains_in_flight_work_then_exits_cleanly() -> None:
    proc = subprocess.Popen(
        # --max-batch 2: each 2-instruction request runs alone, so queued work is visible as pending
        [*SERVE_COMMAND, "--model", "tiny-random", "--bind", "tcp://127.0.0.1:*", "--max-batch", "2"],
        stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},  # see test_node_server
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    ctx = zmq.Context()
    try:
        endpoint, started = None, time.monotonic()
        while endpoint is None:
            match = re.search(r"listening on (tcp://\S+)", lines.get(timeout=STARTUP_S - (time.monotonic() - started)))
            endpoint = match and match.group(1)
        work, control = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for socket in (work, control):
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(endpoint)
        frames = np.zeros((1, 64, 64, 3), np.uint8)
        for i in range(3):
            work.send(wire.packb({"method": "predict", "id": i, "frames": frames, "instruction": ["a", "b"], "steps": 6}))
        pending, deadline = 0, time.monotonic() + 30
        # Signal only once all three are accepted: one runs, two wait, so the node is still draining
        # when it answers the health checks below. (Signalling at pending == 1 let the last request
        # finish before the signal; at pending == 2 the third could still be on its way and be
        # refused as shutting down.)
        while pending < 3:  # the two sockets are separate connections: wait until the work has arrived
            assert time.monotonic() < deadline, "the node never reported the work as pending"
            control.send(wire.packb({"method": "health", "id": "before"}))
            assert control.poll(REPLY_MS)
            pending = wire.unpackb(control.recv())["pending"]

        def node_log() -> str:
            return f"node exit status {proc.poll()}; its log:\n" + "".join(lines.get_nowait() for _ in range(lines.qsize()))

        proc.send_signal(signal.SIGTERM)
        status = "ok"
        while status == "ok":  # until the node has seen the signal
            control.send(wire.packb({"method": "health", "id": "during"}))
            assert control.poll(REPLY_MS), "no reply to a health check after SIGTERM; " + node_log()
            status = wire.unpackb(control.recv())["status"]
        assert status == "draining"
        control.send(wire.packb({"method": "predict", "id": "late", "frames": frames, "instruction": "x"}))
        assert control.poll(REPLY_MS), "no reply to a request sent while draining; " + node_log()
        assert wire.unpackb(control.recv())["error"]["code"] == ErrorCode.SHUTTING_DOWN

        replies = []
        for _ in range(3):
            assert work.poll(REPLY_MS), "an accepted request was dropped at shutdown"
            replies.append(wire.unpackb(work.recv()))
        assert sorted(r["id"] for r in replies) == [0, 1, 2] and all(r["ok"] for r in replies)
        assert proc.wait(timeout=60) == 0
        work.close()
        control.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctx.destroy(linger=0)  # closes sockets an assertion left open; term() would hang


# A node whose Python-level SIGTERM handler does nothing: Python may run a handler late (only when
# the main thread gets to it); the node must stop on the signal itself, not on its handler.
SILENT_HANDLERS = """
import signal, sys
install = signal.signal
signal.signal = lambda sig, handler: install(sig, (lambda *_: None) if callable(handler) else handler)
from foresight.node.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_signal_stops_the_node_whenever_python_gets_to_its_handler() -> None:
    proc = subprocess.Popen(
        [SERVE_COMMAND[0], "-c", SILENT_HANDLERS, "--model", "tiny-random", "--bind", "tcp://127.0.0.1:*"],
        stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        started = time.monotonic()
        while "listening on" not in lines.get(timeout=STARTUP_S - (time.monotonic() - started)):
            pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
