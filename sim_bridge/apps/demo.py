"""The end-to-end demo against a running node: replay fresh simulator episodes, plan to goals.

This side is a plain client, as a robot is, and never loads the model; `foresight demo` starts a
node in a child process and runs this against it.

Seeds: episodes from `tasks.DEMO_SEEDS`, planner goals from `tasks.PLANNER_SEEDS`, disjoint from
training and evaluation seeds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from foresight_client.client import ForesightClient

from sim_bridge.apps.planner import FIRST_SEED as PLANNER_SEED
from sim_bridge.apps.planner import PLANNER_KINDS, PlannerConfig, run_planner
from sim_bridge.apps.planner import format_table as planner_table
from sim_bridge.apps.replay import NodeGeometry, ReplayConfig, run_replay
from sim_bridge.apps.replay import format_table as replay_table
from sim_bridge.data.episode_io import is_episode_dir, read_episode, write_episode
from sim_bridge.simulator.tabletop import make_episode
from sim_bridge.simulator.tasks import DEMO_SEEDS

EPISODE_SEED = DEMO_SEEDS.start
REQUEST_TIMEOUT_S = 300.0


def write_episodes(folder: Path, count: int, geometry: NodeGeometry) -> list[Path]:
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


def run_demo(endpoint: str, out_dir: str | os.PathLike, episodes: int = 3, planner_seeds: int = 3,
             steps: int | None = None, candidates: int = 4, budget: int = 2) -> dict:
    """Replay `episodes` fresh simulator episodes through the node at `endpoint` and plan
    towards `planner_seeds` goals (`candidates` instructions per request, `budget` steps per
    goal), print the tables and where the media are; returns both summaries."""
    out = Path(out_dir)
    start = time.perf_counter()
    with ForesightClient(endpoint, timeout_s=REQUEST_TIMEOUT_S, retries=0) as client:
        geometry = NodeGeometry.from_info(client.info())
        print(f"node {geometry.model} at {endpoint}: {geometry.height}x{geometry.width}, "
              f"N={geometry.num_frames}, K={geometry.context_frames}")
        paths = write_episodes(out / "episodes", episodes, geometry)
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
