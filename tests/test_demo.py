"""`foresight demo` end to end with the tiny random model in a child node, and the child's
shutdown on errors (with a stand-in node program, which starts in a moment)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_replay import Echo

from foresight import cli
from foresight.node import process
from sim_bridge.apps import demo

ECHO_NODE = f"""
import argparse, time
import numpy as np
from foresight.config import SamplerSettings
from foresight.node.server import ServerConfig, serve
{__import__("inspect").getsource(Echo)}
parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--bind")
serve(Echo(), ServerConfig(bind=parser.parse_args().bind))
"""


@pytest.fixture()
def children(monkeypatch) -> list[subprocess.Popen]:
    """Every process the demo starts."""
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(process.subprocess, "Popen", Recorded)
    return started


def test_demo_end_to_end_with_tiny_random(tmp_path, children, capsys):
    cli.main(["demo", "--model", "tiny-random", "--out", str(tmp_path), "--episodes", "1",
              "--goals", "1", "--steps", "2", "--candidates", "2", "--budget", "1"])
    printed = capsys.readouterr().out
    assert "Replay" in printed and "Planner" in printed and "media:" in printed
    replay = json.loads((tmp_path / "replay" / "summary.json").read_text())
    assert replay["node"]["model"] == "tiny-random"
    assert replay["overall"]["decision_steps"] == 1
    planner = json.loads((tmp_path / "planner" / "planner_summary.json").read_text())
    assert planner["goals"] == 1
    assert (tmp_path / "planner" / "goal_2500000.gif").is_file()
    assert len(children) == 1 and children[0].returncode == 0  # stopped by SIGTERM, drained, exit 0


def test_node_stops_when_the_demo_fails(tmp_path, children, monkeypatch):
    monkeypatch.setattr(process, "SERVE_COMMAND", (sys.executable, "-c", ECHO_NODE))

    def broken_replay(*args, **kwargs):
        raise RuntimeError("replay broke")

    monkeypatch.setattr(demo, "run_replay", broken_replay)
    with pytest.raises(RuntimeError, match="replay broke"):
        cli.main(["demo", "--model", "echo", "--out", str(tmp_path), "--episodes", "1", "--goals", "1"])
    assert len(children) == 1 and children[0].poll() is not None


def test_node_that_dies_at_start_is_reported(tmp_path, children, monkeypatch):
    monkeypatch.setattr(process, "SERVE_COMMAND", (sys.executable, "-c", "raise SystemExit('no such model')"))
    with pytest.raises(RuntimeError, match="no such model"):
        cli.main(["demo", "--model", "missing", "--out", str(tmp_path)])
    assert children[0].poll() == 1
