"""One entry point for every episode source: our own format and the BridgeData V2 raw layout.

`find_episodes(path)` walks a folder once and names every episode in it with a stable id (its
path relative to `path`, or the folder name when `path` is itself an episode), so a replay can
resume by id; `read_episodes(path)` loads them lazily in that sorted order. Formats are told
apart by shape: an `episode.json` means our format, an `images<d>` folder a Bridge trajectory.
Hidden folders (unfinished writes) are skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sim_bridge.bridge_raw import is_trajectory_dir, read_trajectory
from sim_bridge.episode import Episode
from sim_bridge.episode_io import EpisodeFormatError, is_episode_dir, read_episode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSource:
    """Where one episode lives, found without reading its frames."""

    id: str
    path: Path
    kind: Literal["foresight", "bridge_raw"]

    def has_camera(self, camera: int) -> bool:
        return camera == 0 if self.kind == "foresight" else (self.path / f"images{camera}").is_dir()

    def load(self, camera: int = 0) -> Episode:
        if self.kind == "bridge_raw":
            return read_trajectory(self.path, camera)
        if camera != 0:
            raise ValueError(f"{self.path}: our episode format has one camera (0), got {camera!r}")
        return read_episode(self.path)


def find_episodes(path: str | os.PathLike) -> list[EpisodeSource]:
    """Every episode at or under `path`, sorted by path; EpisodeFormatError when there is none."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"episode path {root} does not exist")
    if not root.is_dir():
        raise EpisodeFormatError(f"{root}: give an episode folder or a folder of episodes")
    found: list[EpisodeSource] = []

    def walk(folder: Path) -> None:
        rel = folder.relative_to(root).as_posix() if folder != root else root.name
        if is_episode_dir(folder):
            found.append(EpisodeSource(rel, folder, "foresight"))
        elif is_trajectory_dir(folder):
            found.append(EpisodeSource(rel, folder, "bridge_raw"))
        else:
            for child in sorted(p for p in folder.iterdir()
                                if p.is_dir() and not p.name.startswith(".")):
                walk(child)

    walk(root)
    if not found:
        raise EpisodeFormatError(f"{root}: no episodes (neither episode.json folders nor "
                                 "BridgeData traj folders with images<d>)")
    return found


def read_episodes(path: str | os.PathLike, camera: int = 0) -> Iterator[tuple[str, Episode]]:
    """(id, episode) for every episode at or under `path`, loaded one at a time.

    Under a tree, Bridge trajectories that did not record camera `camera` are skipped with a
    warning (rigs differ in their cameras); a single episode without it is an error.
    """
    sources = find_episodes(path)
    for source in sources:
        if len(sources) > 1 and not source.has_camera(camera):
            log.warning("%s: no camera %d, skipped", source.path, camera)
            continue
        yield source.id, source.load(camera)
