"""LeRobot v3 datasets: the simulator writes one, the reader gives the episodes back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from sim_bridge.data.episode_io import EpisodeFormatError
from sim_bridge.data.lerobot import camera_key, write_dataset
from sim_bridge.data.readers import find_episodes, read_episodes
from sim_bridge.simulator.tabletop import main, make_episode

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot") / "sim"
    main(["--n", str(len(SEEDS)), "--seed", "0", "--size", "64", "--frames", "8",
          "--out", str(root), "--format", "lerobot"])
    return root


def test_layout_follows_v3(dataset):
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3
    assert info["total_frames"] == 24 and info["fps"] == 5
    assert info["features"]["observation.images.image"]["dtype"] == "video"
    assert info["features"]["observation.state"]["shape"] == [5]
    data = pq.read_table(dataset / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(24))
    assert data.column("frame_index").to_pylist()[8:16] == list(range(8))
    episodes = pq.read_table(dataset / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in episodes] == [0, 8, 16]
    assert episodes[1]["videos/observation.images.image/from_timestamp"] == pytest.approx(1.6)
    assert episodes[1]["videos/observation.images.image/to_timestamp"] == pytest.approx(3.2)
    tasks = pq.read_table(dataset / "meta/tasks.parquet").to_pylist()
    assert [t["task"] for t in tasks] == list(dict.fromkeys(make_episode(s, 64, 8).instruction
                                                            for s in SEEDS))


def test_reader_gives_back_each_episode(dataset):
    sources = find_episodes(dataset)
    assert [s.id for s in sources] == ["sim#0", "sim#1", "sim#2"]
    refs = [make_episode(s, 64, 8) for s in SEEDS]
    for source, ref in zip(sources, refs):
        episode = source.load()
        assert episode.instruction == ref.instruction and episode.actions is None
        assert np.allclose(episode.states, ref.states, atol=1e-6)
        errors = [np.abs(episode.frames.astype(int) - r.frames).mean() for r in refs]
        assert errors[SEEDS.index(ref.meta["seed"])] < 5.0  # lossy H.264, small frames
        assert np.argmin(errors) == SEEDS.index(ref.meta["seed"])  # the right stretch of video


def test_cameras_and_errors(dataset, tmp_path):
    assert camera_key(dataset, 0) == camera_key(dataset, "image") == "observation.images.image"
    assert camera_key(dataset, 1) is None and not find_episodes(dataset)[0].has_camera("wrist")
    with pytest.raises(EpisodeFormatError, match="no camera"):
        find_episodes(dataset)[0].load("wrist")
    with pytest.raises(FileExistsError):
        write_dataset([make_episode(0, 64, 4)], dataset)
    with pytest.raises(ValueError, match="one frame size"):
        write_dataset([make_episode(0, 64, 4), make_episode(1, 32, 4)], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists() and not list(tmp_path.glob(".mixed*"))


def test_actions_round_trip(tmp_path):
    episode = make_episode(3, 32, 6)
    episode.actions = np.arange(5 * 2, dtype=np.float64).reshape(5, 2)
    root = write_dataset([episode], tmp_path / "acts")
    [(_, back)] = list(read_episodes(root))
    assert back.actions.shape == (6, 2) and np.array_equal(back.actions[:5], episode.actions)
