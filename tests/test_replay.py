"""Replay through a real node on tcp loopback: the tiny random model on both episode formats, and
a fast stand-in model for the resume tests (a killed process, an injected failure)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
from foresight_client.client import ForesightClient
from test_bridge_raw import write_trajectory

from foresight.config import SamplerSettings
from foresight.node.server import NodeServer, ServerConfig
from sim_bridge.apps.replay import (
    EpisodeEnvironment,
    NodeGeometry,
    ReplayConfig,
    ReplayRecorder,
    decision_steps,
    run_replay,
)
from sim_bridge.apps.runtime import run_episode
from sim_bridge.common.imaging import fit_frames, fit_point
from sim_bridge.data.episode_io import write_episode
from sim_bridge.data.readers import read_episodes
from sim_bridge.simulator.scoring import locate_object
from sim_bridge.simulator.tabletop import make_episode

TIMEOUT_S = 600.0  # the CPU may be shared with training: be patient, not flaky
ROOT = Path(__file__).resolve().parents[1]


class Echo:
    """A stand-in model: the last context frame, repeated. Counts calls; can sleep per call."""

    height = width = 64
    num_frames, context_frames = 8, 1
    defaults = SamplerSettings(steps=4, guidance_frame=1.5, guidance_text=3.0)

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def predict(self, frames, instructions, *, num_frames=None, **options):
        self.calls += 1
        time.sleep(self.delay_s)
        n = (num_frames or self.num_frames) - frames.shape[1]
        return np.repeat(frames[:, -1:], n, axis=1).copy()

    def info(self) -> dict:
        return {"card": {"name": "echo"}}


class Node:
    """A NodeServer in a background thread for the length of a `with` block."""

    def __init__(self, predictor) -> None:
        self.server = NodeServer(predictor, ServerConfig(bind="tcp://127.0.0.1:*"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.server.endpoint

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self.thread.join(30)


def episodes_tree(root: Path, bridge_frames: int = 8) -> Path:
    """Two simulator episodes (N = 8 frames at 64 px) and one Bridge trajectory."""
    for seed in (2_000_000, 2_000_001):
        write_episode(make_episode(seed, size=64, num_frames=8), root / "sim" / str(seed))
    write_trajectory(root / "bridge" / "raw" / "traj_group0" / "traj0", frames=bridge_frames)
    return root


def check_outputs(out: Path, episodes: int, steps: int) -> dict:
    """Every table and medium is complete and readable; no temporary file is left."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["episodes"] == episodes
    assert summary["overall"]["decision_steps"] == steps
    assert len(json.loads((out / "steps.json").read_text())) == steps
    assert len(list(csv.DictReader((out / "steps.csv").open()))) == steps
    assert [r["episode"] for r in csv.DictReader((out / "summary.csv").open())][-1] == "ALL"
    for record in summary["episodes"]:
        media = {k: out / v for k, v in record["media"].items()}
        cap = cv2.VideoCapture(str(media["mp4"]))
        ok, frame = cap.read()
        assert ok and frame.shape[0] >= 256
        assert iio.imread(media["gif"], index=None).ndim == 4
        assert cv2.imread(str(media["png"])) is not None
    assert not [p for p in out.rglob(".*tmp*")]
    return summary


def test_decision_steps_rule():
    g = NodeGeometry("m", 64, 64, num_frames=8, context_frames=2)  # horizon 6
    assert decision_steps(8, g, None) == [(1, 6)]  # exactly N frames: one step
    assert decision_steps(20, g, None) == [(1, 6), (7, 6), (13, 6)]  # while t + 6 <= 19
    assert decision_steps(20, g, 4) == [(1, 6), (5, 6), (9, 6), (13, 6)]
    assert decision_steps(5, g, None) == [(1, 3)]  # shorter than N: the overlap
    assert decision_steps(2, g, None) == []


def test_fit_point_follows_fit_frames():
    frame = np.zeros((480, 640, 3), np.uint8)
    cv2.circle(frame, (500, 300), 20, (215, 35, 35), -1)
    small = fit_frames(frame[None], 64, 64)[0]
    found = locate_object(small, (215, 35, 35))
    assert np.hypot(*(np.array(found) - fit_point(np.array([500.0, 300.0]), (480, 640), (64, 64)))) < 0.5


def test_runtime_loop_with_a_users_agent(tmp_path):
    """Replay is runtime.run_episode: an in-process agent takes the node's place; an episode
    without an instruction is recorded as skipped without asking the agent; a finished step is
    not run again."""
    episode = make_episode(2_000_000, size=64, num_frames=8)
    geometry = NodeGeometry("echo", 64, 64, num_frames=8, context_frames=1)
    asked = []

    class LastFrame:
        def get_action(self, observation: dict) -> dict:
            asked.append(observation["t"])
            assert len(observation["future"]) == observation["frames_compared"] == 7
            return {"prediction": np.repeat(observation["context"][-1:], 7, axis=0),
                    "latency_s": 0.0}

    records = {}
    for name, ep in (("a", episode), ("b", dataclasses.replace(episode, instruction=None))):
        recorder = ReplayRecorder(tmp_path, name, ep, geometry, ReplayConfig())
        run_episode(EpisodeEnvironment(ep, recorder.pending, 1), LastFrame(), [recorder])
        records[name] = recorder.record
    assert asked == [0]
    assert records["a"]["decision_steps"] == 1 and records["a"]["psnr"] > 15
    assert records["b"]["skipped"] == "no instruction" and not (tmp_path / "steps" / "b").exists()
    assert json.loads((tmp_path / "episodes" / "a.json").read_text()) == records["a"]
    assert all((tmp_path / path).is_file() for path in records["a"]["media"].values())
    assert ReplayRecorder(tmp_path, "a", episode, geometry, ReplayConfig()).pending == []


def test_replay_through_tiny_random_node(tmp_path):
    from foresight.pipeline import load_pipeline

    root = tmp_path / "episodes"
    write_episode(make_episode(2_000_000, size=64, num_frames=8), root / "sim" / "e0")
    write_trajectory(root / "bridge" / "raw" / "traj_group0" / "traj0", frames=8)
    with Node(load_pipeline("tiny-random")) as endpoint, ForesightClient(endpoint, TIMEOUT_S, 0) as client:
        summary = run_replay(client, read_episodes(root), tmp_path / "out", ReplayConfig(steps=2))
    check_outputs(tmp_path / "out", episodes=2, steps=2)
    bridge, sim = summary["episodes"]
    assert bridge["episode"] == "bridge/raw/traj_group0/traj0" and bridge["follow_rate"] is None
    assert sim["episode"] == "sim/e0" and sim["follow_rate"] in (0.0, 1.0)
    assert 0 < sim["psnr"] < 100 and -1 <= sim["ssim"] <= 1


def test_injected_failure_then_resume(tmp_path):
    root = episodes_tree(tmp_path / "episodes", bridge_frames=20)  # Bridge: steps at t = 0, 7
    out = tmp_path / "out"
    node = Echo()
    with Node(node) as endpoint, ForesightClient(endpoint, TIMEOUT_S, 0) as client:
        real_predict = client.predict

        def failing_predict(*args, **kwargs):
            if node.calls == 2:  # the Bridge episode's first step is done, its second fails
                raise RuntimeError("injected")
            return real_predict(*args, **kwargs)

        client.predict = failing_predict
        with pytest.raises(RuntimeError, match="injected"):
            run_replay(client, read_episodes(root), out, ReplayConfig(steps=2))
        assert (out / "episodes").is_dir() and not (out / "summary.json").exists()
        assert len(list((out / "steps").rglob("*.json"))) == 2
        client.predict = real_predict
        summary = run_replay(client, read_episodes(root), out, ReplayConfig(steps=2))
    assert node.calls == 4  # 2 done before, 2 after: nothing redone
    summary = check_outputs(out, episodes=3, steps=4)
    assert [e["decision_steps"] for e in summary["episodes"]] == [2, 1, 1]
    assert summary["episodes"][1]["psnr"] > 15  # echo of a mostly still scene
    with Node(Echo()) as endpoint, ForesightClient(endpoint, TIMEOUT_S, 0) as client:
        with pytest.raises(ValueError, match="other settings"):
            run_replay(client, read_episodes(root), out, ReplayConfig(steps=3))


def test_killed_process_then_resume(tmp_path):
    root = episodes_tree(tmp_path / "episodes")
    out = tmp_path / "out"
    node = Echo(delay_s=1.0)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with Node(node) as endpoint:
        command = [sys.executable, "-m", "sim_bridge.apps.replay", "--episodes", str(root),
                   "--endpoint", endpoint, "--out", str(out), "--steps", "2", "--timeout", "600"]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        first = out / "episodes" / "bridge__raw__traj_group0__traj0.json"
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert first.exists() and not (out / "summary.json").exists()
        calls_before = node.calls
        rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "ALL" in rerun.stdout and "PSNR" in rerun.stdout
    check_outputs(out, episodes=3, steps=3)
    assert node.calls - calls_before <= 2  # at most the step in flight at the kill is redone
