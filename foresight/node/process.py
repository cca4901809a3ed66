"""A node in a child process, as a robot meets it: `foresight serve` on a free localhost port.

The demo and the benchmark both start nodes this way. The child runs `python -m foresight.node.cli`,
so neither depends on how the command line is installed. It is stopped with SIGTERM
(it drains and exits) in every case, errors and Ctrl-C included, and killed if it does not exit
in time.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from foresight_client.client import ForesightClient
from foresight_client.protocol import NodeError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0  # loading a model on a busy CPU can take minutes
STOP_TIMEOUT_S = 30.0
SERVE_COMMAND = (sys.executable, "-m", "foresight.node.cli")  # `foresight serve`, whatever the scripts are called


def free_port() -> int:
    """A localhost TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_node(model: str, log_path: Path, serve_args: Sequence[str] = (),
                 ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[str]:
    """Start a node serving `model` in a child process; yield its endpoint once it answers.

    serve_args: further `foresight serve` options, e.g. ("--backend", "onnxruntime", "--engines", dir).
    The child's output goes to `log_path`.
    """
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as node_log:
        proc = subprocess.Popen([*SERVE_COMMAND, "--model", model, "--bind", endpoint,
                                 *serve_args], stdout=node_log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, endpoint, log_path, ready_timeout_s)
        yield endpoint
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen, endpoint: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with _quiet_client_log(), ForesightClient(endpoint, timeout_s=1.0, retries=0) as probe:
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"the node exited with status {proc.returncode} before "
                                   f"answering; {log_path} ends with:\n" + "\n".join(tail))
            try:
                probe.health()
                return
            except NodeError as exc:  # not listening yet: NodeUnavailable after the 1 s poll
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the node at {endpoint} did not answer within "
                                       f"{timeout_s:.0f} s (see {log_path})") from exc


@contextlib.contextmanager
def _quiet_client_log() -> Iterator[None]:
    """Unanswered probes are expected while the node loads; the client would warn about each."""
    client_log = logging.getLogger("foresight_client.client")
    level = client_log.level
    client_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        client_log.setLevel(level)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("the node (pid %d) did not stop in %.0f s; killing it", proc.pid, STOP_TIMEOUT_S)
        proc.kill()
        proc.wait()
