"""The demo end to end with the tiny random model in a child node, and the child's shutdown on
errors (with a stand-in node program, which starts in a moment)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from foresight.node import process
from sim_bridge import demo
from test_replay import Echo

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
    result = demo.run_demo(tmp_path, model="tiny-random", episodes=1, planner_seeds=1, steps=2,
                           candidates=2, budget=1)
    printed = capsys.readouterr().out
    assert "Replay" in printed and "Planner" in printed and "media:" in printed
    assert result["replay"]["overall"]["decision_steps"] == 1
    assert result["planner"]["goals"] == 1
    assert json.loads((tmp_path / "replay" / "summary.json").read_text())["node"]["model"] == "tiny-random"
    assert (tmp_path / "planner" / "goal_2500000.gif").is_file()
    assert len(children) == 1 and children[0].returncode == 0  # stopped by SIGTERM, drained, exit 0


def test_node_stops_when_the_demo_fails(tmp_path, children, monkeypatch):
    monkeypatch.setattr(process, "SERVE_COMMAND", (sys.executable, "-c", ECHO_NODE))

    def broken_replay(*args, **kwargs):
        raise RuntimeError("replay broke")

    monkeypatch.setattr(demo, "run_replay", broken_replay)
    with pytest.raises(RuntimeError, match="replay broke"):
        demo.run_demo(tmp_path, model="echo", episodes=1, planner_seeds=1)
    assert len(children) == 1 and children[0].poll() is not None


def test_node_that_dies_at_start_is_reported(tmp_path, children, monkeypatch):
    monkeypatch.setattr(process, "SERVE_COMMAND", (sys.executable, "-c", "raise SystemExit('no such model')"))
    with pytest.raises(RuntimeError, match="no such model"):
        demo.run_demo(tmp_path, model="missing")
    assert children[0].poll() == 1
