"""A crash must not cost the fleet: `foresight serve --restart on-failure` brings a killed node back."""

from __future__ import annotations

import argparse
import configparser
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from foresight_client.client import ForesightClient
from foresight_client.protocol import NodeError

from foresight.node.cli import add_serve_arguments, serve_argv
from foresight.node.process import SERVE_COMMAND, free_port
from foresight.node.server import DEFAULT_DRAIN_TIMEOUT_S

STARTUP_S = 180.0
UNIT = Path(__file__).parents[1] / "docs" / "foresight-node.service"


def health_when_up(endpoint: str, timeout_s: float = STARTUP_S) -> dict:
    deadline = time.monotonic() + timeout_s
    with ForesightClient(endpoint, timeout_s=1.0, retries=0) as client:
        while True:
            try:
                return client.health()
            except NodeError:
                if time.monotonic() > deadline:
                    raise


@pytest.mark.slow
def test_a_killed_node_is_restarted_and_a_stopped_one_is_not(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    supervisor = subprocess.Popen([*SERVE_COMMAND, "--model", "tiny-random", "--bind", endpoint,
                                   "--threads", "1", "--restart", "on-failure"],
                                  stderr=open(tmp_path / "node.log", "w"))
    try:
        first = health_when_up(endpoint)
        assert first["pid"] != supervisor.pid  # the model runs in a child, not in the supervisor
        os.kill(first["pid"], signal.SIGKILL)  # a crash the node cannot catch
        second = health_when_up(endpoint)
        assert second["pid"] != first["pid"] and second["served"] == 0 and second["internal_errors"] == 0
        supervisor.send_signal(signal.SIGTERM)  # passed on: the child drains and exits 0, and nothing restarts
        assert supervisor.wait(60) == 0
        assert not Path(f"/proc/{second['pid']}").exists() or "Z" in Path(f"/proc/{second['pid']}/stat").read_text().split()[2]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    log = (tmp_path / "node.log").read_text()
    assert "ended with signal SIGKILL" in log and "restarting in 1 s" in log, log[-2000:]


def test_a_setup_that_cannot_work_is_not_restarted(tmp_path: Path) -> None:
    done = subprocess.run([*SERVE_COMMAND, "--model", str(tmp_path / "missing"),
                           "--bind", f"tcp://127.0.0.1:{free_port()}", "--restart", "on-failure"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "foresight serve: error:" in done.stderr and "not restarting" in done.stderr
    assert done.stderr.count("node started") == 1


@pytest.mark.parametrize("argv", [
    ["--model", "/models/aid", "--insecure", "--max-message-mb", "2.5", "--restart", "on-failure"],
    ["--ray", "local", "--replicas", "2", "--dtype", "bf16", "--compile"],
    [],
])
def test_the_supervised_child_gets_the_same_options(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    child = parser.parse_args(serve_argv(args))
    assert vars(child) == vars(args) | {"restart": "no"}


def test_the_shipped_systemd_unit_restarts_on_failure_with_real_options() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert float(service["TimeoutStopSec"]) > DEFAULT_DRAIN_TIMEOUT_S  # systemd waits for the drain
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/foresight") and command[1] == "serve"
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args(command[2:]).restart == "no"  # systemd restarts; the node does not supervise itself
