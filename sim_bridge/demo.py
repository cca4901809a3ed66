"""The end-to-end demo: start a node, replay fresh simulator episodes through it, plan to goals.

The node runs in a child process (`foresight.node.server`'s serve entry point) on a free
localhost port, exactly as a robot would meet it; this process stays a plain client and never
loads the model. The child is stopped with SIGTERM (it drains and exits) in every case, errors
and Ctrl-C included, and killed if it does not exit in time. Its log goes to `<out>/node.log`.

Seeds: episodes from 2_000_000 up, planner goals from 2_500_000 up, disjoint from training
(< 1_000_000) and evaluation (1_000_000 up) seeds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from foresight.node.client import ForesightClient
from foresight.node.protocol import NodeError
from sim_bridge.episode_io import is_episode_dir, read_episode, write_episode
from sim_bridge.planner import FIRST_SEED as PLANNER_SEED, PLANNER_KINDS, PlannerConfig
from sim_bridge.planner import format_table as planner_table
from sim_bridge.planner import run_planner
from sim_bridge.replay import NodeGeometry, ReplayConfig, run_replay
from sim_bridge.replay import format_table as replay_table
from sim_bridge.tabletop import make_episode

log = logging.getLogger(__name__)

EPISODE_SEED = 2_000_000
READY_TIMEOUT_S = 600.0  # loading a model on a busy CPU can take minutes
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 300.0
# `foresight serve` through the server module's own entry point, so the demo does not depend on
# how the command line is wired.
SERVE_PROGRAM = ("import argparse, sys\n"
                 "from foresight.node.server import add_serve_arguments, run_serve\n"
                 "parser = argparse.ArgumentParser(prog='foresight serve')\n"
                 "add_serve_arguments(parser)\n"
                 "sys.exit(run_serve(parser.parse_args()))\n")


def free_port() -> int:
    """A localhost TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_node(model: str, log_path: Path,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[str]:
    """Start a node serving `model` in a child process; yield its endpoint once it answers."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as node_log:
        proc = subprocess.Popen([sys.executable, "-c", SERVE_PROGRAM, "--model", model,
                                 "--bind", endpoint], stdout=node_log, stderr=subprocess.STDOUT)
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
    client_log = logging.getLogger("foresight.node.client")
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


def make_episodes(folder: Path, count: int, geometry: NodeGeometry) -> list[Path]:
    """Simulator episodes at the node's resolution and clip length, of the trained task kinds,
    written to `folder` (kept for inspection; ones an earlier run wrote are reused)."""
    paths = []
    for seed in range(EPISODE_SEED, EPISODE_SEED + count):
        path = folder / str(seed)
        if not is_episode_dir(path):
            episode = make_episode(seed, max(geometry.height, geometry.width), geometry.num_frames,
                                   kinds=PLANNER_KINDS)
            write_episode(episode, path)
        paths.append(path)
    return paths


def run_demo(out_dir: str | os.PathLike, model: str = "tiny", episodes: int = 3,
             planner_seeds: int = 3, steps: int | None = None, candidates: int = 4,
             budget: int = 2) -> dict:
    """Serve `model`, replay `episodes` fresh simulator episodes and plan towards
    `planner_seeds` goals (`candidates` instructions per request, `budget` steps per goal),
    print the tables and where the media are; returns both summaries."""
    out = Path(out_dir)
    start = time.perf_counter()
    with running_node(model, out / "node.log") as endpoint, \
            ForesightClient(endpoint, timeout_s=REQUEST_TIMEOUT_S, retries=0) as client:
        geometry = NodeGeometry.from_info(client.info())
        print(f"node {geometry.model} at {endpoint}: {geometry.height}x{geometry.width}, "
              f"N={geometry.num_frames}, K={geometry.context_frames}")
        paths = make_episodes(out / "episodes", episodes, geometry)
        replay = run_replay(client, ((p.name, read_episode(p)) for p in paths), out / "replay",
                            ReplayConfig(steps=steps), total=len(paths))
        planner = run_planner(client, list(range(PLANNER_SEED, PLANNER_SEED + planner_seeds)),
                              out / "planner", PlannerConfig(max_candidates=candidates,
                                                             budget=budget, steps=steps))
    print("\nReplay (predicted vs recorded future):")
    print(replay_table(replay))
    print("\nPlanner (goal images one task away):")
    print(planner_table(planner))
    print(f"\nmedia: {out / 'replay' / 'media'} (MP4, GIF, PNG: context | predicted | truth), "
          f"{out / 'planner'} (GIF: executed | predicted | goal); "
          f"metrics: {out / 'replay' / 'summary.json'}, {out / 'planner' / 'planner_summary.json'}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return {"replay": replay, "planner": planner, "out": str(out)}
