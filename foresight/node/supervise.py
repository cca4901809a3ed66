"""`foresight serve --restart on-failure`: keep a node up through crashes, as systemd's Restart=on-failure does.

The supervisor loads no model. It runs the node as a child process and starts it again when it
ends by a signal or with a failing status, after a delay that doubles on each quick failure (up to
`max_delay_s`) and starts over once a child has run `stable_s`. Exit status 2 (a bad setup, such as
an unknown model or a refused bind) is not retried, since a restart would fail the same way. SIGINT
and SIGTERM go to the child, which drains and exits; the supervisor then exits with its status.
Where systemd runs the node, use docs/foresight-node.service instead (Restart=on-failure).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

BAD_SETUP_STATUS = 2  # argparse and `foresight serve` exit with 2 for a setup that cannot work
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_S = 60.0


def describe_status(status: int) -> str:
    if status >= 0:
        return f"status {status}"
    try:
        return f"signal {signal.Signals(-status).name}"
    except ValueError:  # a signal without a name (real-time signals)
        return f"signal {-status}"


def supervise(command: Sequence[str], first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S,
              stable_s: float = STABLE_S) -> int:
    """Run `command` until it exits 0 or 2 or we are told to stop; restart it after any other end."""
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def forward(signum: int, frame: object) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    delay = first_delay_s
    restarts = 0
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(list(command))
            log.info("supervisor: node started (pid %d, %d restarts so far)", child.pid, restarts)
            status = child.wait()  # signal handlers run during the wait (PEP 475)
            ran_s = time.monotonic() - started
            if stopping.is_set() or status in (0, BAD_SETUP_STATUS):
                log.info("supervisor: node (pid %d) exited with %s; not restarting", child.pid, describe_status(status))
                return status
            if ran_s >= stable_s:
                delay = first_delay_s
            log.error("supervisor: node (pid %d) ended with %s after %.0f s; restarting in %.0f s",
                      child.pid, describe_status(status), ran_s, delay)
            if stopping.wait(delay):
                return status
            delay = min(2 * delay, max_delay_s)
            restarts += 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

