"""BridgeData V2 raw reader and the format-agnostic `readers` entry point, on small fake trees."""

from __future__ import annotations

import datetime
import json
import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from sim_bridge.data.bridge_raw import load_pickle, read_trajectory
from sim_bridge.data.episode_io import EpisodeFormatError, write_episode
from sim_bridge.data.readers import find_episodes, read_episodes
from sim_bridge.simulator.tabletop import make_episode

LANG = "put the spoon in the pot\nconfidence: 1\nmove the spoon into the pot\n"


def write_trajectory(folder: Path, frames: int = 4, cameras: tuple[int, ...] = (0,),
                     lang: str | None = LANG, size: tuple[int, int] = (480, 640)) -> Path:
    """A Bridge raw traj folder: smooth-gradient JPEGs that move with t, lang.txt, pickles."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    for cam in cameras:
        (folder / f"images{cam}").mkdir(parents=True)
        for t in range(frames):
            image = np.stack([(x + 20 * t) % 256, (y + 40 * cam) % 256, np.full_like(x, 60 * cam)],
                             -1).astype(np.uint8)
            cv2.imwrite(str(folder / f"images{cam}" / f"im_{t}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if lang is not None:
        (folder / "lang.txt").write_text(lang)
    obs = {"state": np.zeros((frames, 7)), "qpos": np.zeros((frames, 6), np.float32),
           "time_stamp": [0.2 * t for t in range(frames)]}
    (folder / "obs_dict.pkl").write_bytes(pickle.dumps(obs))
    policy = [{"actions": np.zeros(7), "new_robot_transform": np.eye(4)} for _ in range(frames - 1)]
    (folder / "policy_out.pkl").write_bytes(pickle.dumps(policy))
    return folder


def test_reads_one_trajectory(tmp_path):
    episode = read_trajectory(write_trajectory(tmp_path / "traj0", frames=3))
    assert episode.frames.shape == (3, 480, 640, 3) and episode.frames.dtype == np.uint8
    assert episode.instruction == "put the spoon in the pot"  # confidence line dropped
    assert episode.meta["instructions"] == ["put the spoon in the pot", "move the spoon into the pot"]
    assert episode.meta["obs_dict"]["state"] == {"shape": [3, 7], "dtype": "float64"}
    assert episode.meta["policy_out"]["length"] == 2
    assert episode.object_positions is None
    # frames are RGB in time order: the red channel follows x + 20 t
    assert abs(int(episode.frames[1, 10, 100, 0]) - 120) <= 3


def test_camera_selection(tmp_path):
    folder = write_trajectory(tmp_path / "traj0", frames=2, cameras=(0, 2))
    cam2 = read_trajectory(folder, camera=2)
    assert cam2.meta["camera"] == 2 and abs(int(cam2.frames[0, 0, 0, 2]) - 120) <= 3
    with pytest.raises(EpisodeFormatError, match="images1"):
        read_trajectory(folder, camera=1)


@pytest.mark.parametrize("lang", [None, "confidence: 0.9\n", "\n"])
def test_no_instruction(tmp_path, lang):
    assert read_trajectory(write_trajectory(tmp_path / "t", frames=2, lang=lang)).instruction is None


def test_clear_errors(tmp_path):
    gap = write_trajectory(tmp_path / "gap", frames=4)
    (gap / "images0" / "im_2.jpg").unlink()
    with pytest.raises(EpisodeFormatError, match=r"gaps.*im_2\.jpg"):
        read_trajectory(gap)
    bad = write_trajectory(tmp_path / "bad", frames=2)
    (bad / "images0" / "im_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EpisodeFormatError, match=r"im_1\.jpg: unreadable JPEG"):
        read_trajectory(bad)
    empty = tmp_path / "empty" / "traj0"
    (empty / "images0").mkdir(parents=True)
    with pytest.raises(EpisodeFormatError, match="no im_"):
        read_trajectory(empty)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(EpisodeFormatError, match="no episodes"):
        find_episodes(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        find_episodes(tmp_path / "missing")


def test_pickles_only_hold_arrays_and_containers(tmp_path):
    folder = write_trajectory(tmp_path / "traj0", frames=2)
    assert load_pickle(folder / "obs_dict.pkl")["qpos"].dtype == np.float32
    (folder / "obs_dict.pkl").write_bytes(pickle.dumps({"when": datetime.date(2022, 1, 1)}))
    with pytest.raises(EpisodeFormatError, match="refusing to load datetime.date"):
        read_trajectory(folder)


def test_mixed_tree_has_stable_ids_and_skips_missing_cameras(tmp_path, caplog):
    raw = tmp_path / "data" / "toykitchen" / "raw"
    write_trajectory(raw / "traj_group0" / "traj0", frames=2, cameras=(0, 1))
    write_trajectory(raw / "traj_group0" / "traj1", frames=2, cameras=(0,))
    write_episode(make_episode(2_000_000, size=32, num_frames=2), tmp_path / "data" / "sim" / "e0")
    (tmp_path / "data" / "sim" / ".e1.tmp").mkdir()  # an unfinished write: ignored
    ids = [s.id for s in find_episodes(tmp_path / "data")]
    assert ids == ["sim/e0", "toykitchen/raw/traj_group0/traj0", "toykitchen/raw/traj_group0/traj1"]
    assert [i for i, _ in read_episodes(tmp_path / "data")] == ids
    with caplog.at_level(logging.WARNING):
        cam1 = [i for i, _ in read_episodes(raw, camera=1)]
    assert cam1 == ["traj_group0/traj0"] and "no camera 1" in caplog.text
    single = [(i, e.frames.shape) for i, e in read_episodes(raw / "traj_group0" / "traj1")]
    assert single == [("traj1", (2, 480, 640, 3))]


def _session(root: Path, date: str, topics: list) -> Path:
    """A dated collection folder with a config.json naming its camera topics."""
    session = root / date
    session.mkdir(parents=True)
    (session / "config.json").write_text(json.dumps({"agent": {"env": [
        "WidowX", {"camera_topics": topics, "move_to_rand_start_freq": 1}]}}))
    return session


def _with_states(folder: Path, frames: int) -> Path:
    """full_state rows 10 t + j and actions 100 t + j, so a shift is visible in the numbers."""
    rows = np.arange(frames)[:, None] * 10.0 + np.arange(7)
    obs = {"full_state": rows, "time_stamp": [0.2 * t for t in range(frames)]}
    (folder / "obs_dict.pkl").write_bytes(pickle.dumps(obs))
    actions = [{"actions": 100.0 * t + np.arange(7)} for t in range(frames - 1)]
    (folder / "policy_out.pkl").write_bytes(pickle.dumps(actions))
    return folder


def test_camera_identity_from_session_config(tmp_path):
    session = _session(tmp_path, "2022-05-01_10-00-00",
                       [{"name": "/blue/image_raw", "flip": False}, "/yellow/image_raw",
                        ["/wrist/image_raw", True]])
    folder = write_trajectory(session / "raw" / "traj_group0" / "traj0", frames=2, cameras=(0, 2))
    wrist = read_trajectory(folder, camera="wrist")
    assert wrist.meta["camera"] == 2 and wrist.meta["camera_topic"] == "/wrist/image_raw"
    assert read_trajectory(folder).meta["camera_topic"] == "/blue/image_raw"
    with pytest.raises(EpisodeFormatError, match="yellow"):  # named in config, not recorded
        read_trajectory(folder, camera="/yellow")
    with pytest.raises(ValueError, match="several topics"):
        read_trajectory(folder, camera="image_raw")
    source = find_episodes(session)[0]
    assert source.has_camera("wrist") and not source.has_camera("yellow")
    assert source.load("wrist").meta["camera"] == 2
    assert read_trajectory(write_trajectory(tmp_path / "loose", frames=2)).meta["camera_topic"] is None


def test_states_actions_and_the_early_camera_delay(tmp_path):
    late = _session(tmp_path, "2021-08-02_09-00-00", ["/cam0/image_raw"])
    folder = _with_states(write_trajectory(late / "raw" / "traj_group0" / "traj0", frames=4), 4)
    episode = read_trajectory(folder)
    assert not episode.meta["delay_corrected"] and episode.meta["session"] == late.name
    assert episode.states.shape == (4, 7) and episode.actions.shape == (3, 7)
    assert episode.states[2, 0] == 20 and episode.actions[2, 0] == 200
    early = _session(tmp_path, "2021-07-01_09-00-00", ["/cam0/image_raw"])
    folder = _with_states(write_trajectory(early / "raw" / "traj_group0" / "traj0", frames=4), 4)
    shifted = read_trajectory(folder)
    assert shifted.meta["delay_corrected"]
    # first image and state dropped, last action dropped: frame t shows im_{t+1}
    assert shifted.frames.shape[0] == 3 and abs(int(shifted.frames[0, 10, 100, 0]) - 120) <= 3
    assert shifted.states[:, 0].tolist() == [10, 20, 30]
    assert shifted.actions[:, 0].tolist() == [0, 100]


def test_lmdb_folders_are_skipped(tmp_path):
    write_trajectory(tmp_path / "2022-01-01_00-00-00" / "raw" / "traj_group0" / "traj0", frames=2)
    write_trajectory(tmp_path / "2022-01-02_00-00-00_lmdb" / "raw" / "traj_group0" / "traj0",
                     frames=2)
    assert [s.id for s in find_episodes(tmp_path)] == [
        "2022-01-01_00-00-00/raw/traj_group0/traj0"]
