"""Our episode format: exact round trip, atomic writes, clear errors on damaged folders."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from sim_bridge.data import episode_io
from sim_bridge.data.episode import Episode
from sim_bridge.data.episode_io import (
    EpisodeFormatError,
    is_episode_dir,
    iter_episodes,
    read_episode,
    write_episode,
)
from sim_bridge.simulator.tabletop import make_episode


@pytest.fixture(scope="module")
def episode() -> Episode:
    return make_episode(11, 64, 6)


def test_round_trip_is_exact(tmp_path, episode):
    back = read_episode(write_episode(episode, tmp_path / "ep"))
    assert back.frames.tobytes() == episode.frames.tobytes()
    assert back.frames.shape == episode.frames.shape
    assert back.instruction == episode.instruction and back.target == episode.target
    assert back.object_colors == episode.object_colors
    assert back.object_positions.keys() == episode.object_positions.keys()
    for name, track in episode.object_positions.items():
        assert np.array_equal(back.object_positions[name], track)
    assert back.meta == episode.meta


def test_round_trip_without_simulator_fields(tmp_path):
    bare = Episode(frames=np.zeros((2, 5, 7, 3), np.uint8), instruction=None)
    back = read_episode(write_episode(bare, tmp_path / "ep"))
    assert back.frames.shape == (2, 5, 7, 3) and back.object_positions is None
    assert back.instruction is None and back.meta == {}


def test_write_refuses_existing_folder_and_bad_meta(tmp_path, episode):
    write_episode(episode, tmp_path / "ep")
    with pytest.raises(FileExistsError, match="already exists"):
        write_episode(episode, tmp_path / "ep")
    bad = Episode(frames=episode.frames, instruction="x", meta={"when": object()})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        write_episode(bad, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep"]


def test_crash_mid_write_leaves_nothing(tmp_path, episode, monkeypatch):
    calls = []

    def failing_imencode(ext, image):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return True, np.zeros(4, np.uint8)

    monkeypatch.setattr(episode_io.cv2, "imencode", failing_imencode)
    with pytest.raises(OSError, match="disk full"):
        write_episode(episode, tmp_path / "ep")
    assert list(tmp_path.iterdir()) == []


def _damaged(tmp_path, episode, damage) -> str:
    folder = write_episode(episode, tmp_path / "ep")
    damage(folder)
    with pytest.raises(EpisodeFormatError) as error:
        read_episode(folder)
    return str(error.value)


def _edit_json(**changes):
    def damage(folder):
        header = json.loads((folder / "episode.json").read_text())
        header.update(changes)
        (folder / "episode.json").write_text(json.dumps(header))
    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "episode.json").unlink(), "missing episode.json"),
    (lambda f: (f / "episode.json").write_text("{not json"), "unreadable JSON"),
    (lambda f: (f / "frames" / "00003.png").unlink(), r"missing frame\(s\) \['00003.png'\]"),
    (lambda f: (f / "frames" / "00002.png").write_bytes(b"\x89PNG garbage"), "unreadable PNG"),
    (lambda f: (f / "frames" / "00009.png").write_bytes(b""), "unexpected frame"),
    (_edit_json(version=2), "format version 2, this reader reads version 1"),
    (_edit_json(format="something-else"), "not a foresight-episode"),
    (_edit_json(height=32), "episode.json says"),
    (_edit_json(num_frames=None), "bad or missing frame count"),
])
def test_damaged_episode_gives_clear_error(tmp_path, episode, damage, message):
    assert re.search(message, _damaged(tmp_path, episode, damage))


def test_is_episode_dir(tmp_path, episode):
    folder = write_episode(episode, tmp_path / "ep")
    assert is_episode_dir(folder)
    assert not is_episode_dir(tmp_path) and not is_episode_dir(tmp_path / "nowhere")


def test_iter_episodes_walks_a_sorted_tree(tmp_path, episode):
    for rel in ("b/2", "a/10", "a/09", "c", ".a.tmp/x"):
        write_episode(episode, tmp_path / rel)
    (tmp_path / "empty").mkdir()
    found = [p.relative_to(tmp_path).as_posix() for p, _ in iter_episodes(tmp_path)]
    assert found == ["a/09", "a/10", "b/2", "c"]
    assert [p for p, _ in iter_episodes(tmp_path / "c")] == [tmp_path / "c"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        next(iter_episodes(tmp_path / "nowhere"))
