"""One entry point for every episode source: our own format, BridgeData V2 raw folders, LeRobot v3
datasets, RLDS (TFDS) shards and ROS bags.

`find_episodes(path)` walks a folder once and names every episode in it with a stable id (its
path relative to `path`, or the folder or bag name when `path` is itself an episode; LeRobot and
RLDS episodes add `#<number>`), so a replay can resume by id; `EpisodeSource.load()` reads one
episode, and `read_episodes(path)` loads them lazily in that sorted order. Formats are told
apart by shape: an `episode.json` means our format, an `images<d>` folder a Bridge trajectory,
`meta/info.json` a LeRobot dataset, `features.json` beside `*.tfrecord*` shards an RLDS dataset,
a `*.bag` file a ROS 1 bag and `metadata.yaml` beside `*.mcap` or `*.db3` files a rosbag2
recording (one episode each; nothing inside a rosbag2 folder is read as other data). Hidden
folders and files (unfinished writes) and `*lmdb*` folders (not the raw layout, skipped by the
official Bridge converters too) are skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sim_bridge.data import lerobot, rlds, rosbag
from sim_bridge.data.bridge_raw import camera_index, is_trajectory_dir, read_trajectory
from sim_bridge.data.episode import Episode
from sim_bridge.data.episode_io import EpisodeFormatError, is_episode_dir, read_episode

log = logging.getLogger(__name__)

Camera = int | str  # a number, or a name (Bridge or ROS topic part, LeRobot or RLDS image key)


@dataclass(frozen=True)
class EpisodeSource:
    """Where one episode lives, found without reading its frames. `path` is the episode folder,
    the LeRobot dataset root, the RLDS shard or the ROS bag (file or rosbag2 folder); `index` the
    LeRobot episode index or the RLDS record's byte offset in its shard."""

    id: str
    path: Path
    kind: Literal["foresight", "bridge_raw", "lerobot", "rlds", "rosbag"]
    index: int | None = None

    def has_camera(self, camera: Camera) -> bool:
        if self.kind == "bridge_raw":
            return camera_index(self.path, camera) is not None
        if self.kind == "lerobot":
            return lerobot.camera_key(self.path, camera) is not None
        if self.kind == "rlds":
            return rlds.image_key(rlds.read_features(self.path.parent), camera) is not None
        if self.kind == "rosbag":
            return rosbag.camera_topic(self.path, camera) is not None
        return camera == 0

    def load(self, camera: Camera = 0) -> Episode:
        if self.kind == "bridge_raw":
            return read_trajectory(self.path, camera)
        if self.kind == "lerobot":
            return lerobot.read_episode(self.path, self.index, camera)
        if self.kind == "rlds":
            return rlds.read_episode(self.path, self.index, camera)
        if self.kind == "rosbag":
            return rosbag.read_episode(self.path, camera)
        if camera != 0:
            raise ValueError(f"{self.path}: our episode format has one camera (0), got {camera!r}")
        return read_episode(self.path)


def find_episodes(path: str | os.PathLike) -> list[EpisodeSource]:
    """Every episode at or under `path`, sorted by path; EpisodeFormatError when there is none."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"episode path {root} does not exist")
    if rosbag.is_bag_file(root):
        return [EpisodeSource(root.name, root, "rosbag")]
    if not root.is_dir():
        raise EpisodeFormatError(f"{root}: give an episode folder, a ROS bag or a folder of "
                                 "episodes")
    found: list[EpisodeSource] = []

    def walk(folder: Path) -> None:
        rel = folder.relative_to(root).as_posix() if folder != root else root.name
        if is_episode_dir(folder):
            found.append(EpisodeSource(rel, folder, "foresight"))
        elif is_trajectory_dir(folder):
            found.append(EpisodeSource(rel, folder, "bridge_raw"))
        elif lerobot.is_dataset_dir(folder):
            found.extend(EpisodeSource(f"{rel}#{i}", folder, "lerobot", i)
                         for i in lerobot.episode_indices(folder))
        elif rlds.is_dataset_dir(folder):
            for shard, offsets in rlds.episode_offsets(folder):
                found.extend(EpisodeSource(f"{rel}/{shard.name}#{n}", shard, "rlds", offset)
                             for n, offset in enumerate(offsets))
        elif rosbag.is_bag_dir(folder):
            found.append(EpisodeSource(rel, folder, "rosbag"))
        else:
            for child in sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                                and (p.is_dir() or rosbag.is_bag_file(p))):
                if child.is_file():
                    found.append(EpisodeSource(child.relative_to(root).as_posix(), child,
                                               "rosbag"))
                elif "lmdb" in child.name:
                    log.info("%s: lmdb folder, skipped", child)
                else:
                    walk(child)

    walk(root)
    if not found:
        raise EpisodeFormatError(f"{root}: no episodes (neither episode.json folders, BridgeData "
                                 "traj folders with images<d>, LeRobot datasets, RLDS shards "
                                 "nor ROS bags)")
    return found


def read_episodes(path: str | os.PathLike, camera: Camera = 0) -> Iterator[tuple[str, Episode]]:
    """(id, episode) for every episode at or under `path`, loaded one at a time.

    Under a tree, episodes that did not record camera `camera` are skipped with a warning (rigs
    differ in their cameras); a single episode without it is an error.
    """
    sources = find_episodes(path)
    for source in sources:
        if len(sources) > 1 and not source.has_camera(camera):
            log.warning("%s: no camera %r, skipped", source.id, camera)
            continue
        yield source.id, source.load(camera)
