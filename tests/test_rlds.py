"""RLDS shards read without TensorFlow: small shards in the Bridge (Octo/OpenVLA) and Open
X-Embodiment key layouts, written here with tfrecord's writer."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tfrecord import TFRecordWriter

from sim_bridge.data.episode_io import EpisodeFormatError
from sim_bridge.data.readers import find_episodes, read_episodes
from sim_bridge.simulator.tabletop import make_episode


def _image(shape=(64, 64, 3), encoding="jpeg") -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": "uint8",
                      "encodingFormat": encoding}}


def _tensor(dims, dtype="float32") -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(d) for d in dims]}, "dtype": dtype,
                       "encoding": "none"}}


def _dict(features: dict) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": features}}


TEXT = {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}


def _features(observation: dict, step: dict) -> dict:
    steps = {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
             "sequence": {"feature": _dict({"observation": _dict(observation), **step}),
                          "length": "-1"}}
    return _dict({"steps": steps, "episode_metadata": _dict({"file_path": TEXT})})


def _png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()


def write_bridge_shard(folder: Path, seeds: tuple[int, ...]) -> list:
    """Octo/OpenVLA Bridge layout: image_0 (the sim camera) and image_1 (its mirror image)."""
    folder.mkdir(parents=True)
    features = _features({"image_0": _image(encoding="png"), "image_1": _image(encoding="png"),
                          "state": _tensor([5])},
                         {"action": _tensor([2]), "language_instruction": TEXT,
                          "is_first": _tensor([], "bool")})
    (folder / "features.json").write_text(json.dumps(features))
    episodes = [make_episode(s, 64, 6) for s in seeds]
    writer = TFRecordWriter(str(folder / "bridge_dataset-train.tfrecord-00000-of-00001"))
    for e in episodes:
        t = len(e.frames)
        writer.write({
            "steps/observation/image_0": ([_png(f) for f in e.frames], "byte"),
            "steps/observation/image_1": ([_png(f[:, ::-1]) for f in e.frames], "byte"),
            "steps/observation/state": (e.states.astype(np.float32).ravel().tolist(), "float"),
            "steps/action": (np.arange(2 * t, dtype=np.float32).tolist(), "float"),
            "steps/language_instruction": ([e.instruction.encode()] * t, "byte"),
            "steps/is_first": ([1] + [0] * (t - 1), "int"),
            "episode_metadata/file_path": (b"/data/raw/traj0", "byte"),
        })
    writer.close()
    return episodes


def test_bridge_layout(tmp_path):
    episodes = write_bridge_shard(tmp_path / "bridge_dataset" / "1.0.0", (0, 1, 2))
    sources = find_episodes(tmp_path)
    assert [s.id for s in sources] == [
        f"bridge_dataset/1.0.0/bridge_dataset-train.tfrecord-00000-of-00001#{n}" for n in range(3)]
    for source, ref in zip(sources, episodes):
        episode = source.load()
        assert np.array_equal(episode.frames, ref.frames)  # PNG: lossless
        assert episode.instruction == ref.instruction
        assert np.allclose(episode.states, ref.states, atol=1e-6)
        assert episode.actions.shape == (6, 2) and episode.actions[5, 1] == 11
        assert np.array_equal(source.load(1).frames, ref.frames[:, :, ::-1])
        assert source.has_camera("image_1") and not source.has_camera(2)
    with pytest.raises(EpisodeFormatError, match="no camera 3"):
        sources[0].load(3)


def test_open_x_embodiment_layout(tmp_path):
    folder = tmp_path / "bridge" / "0.1.0"
    folder.mkdir(parents=True)
    features = _features({"image": _image(), "natural_language_instruction": TEXT,
                          "state": _tensor([5])},
                         {"action": _dict({"world_vector": _tensor([3]),
                                           "open_gripper": _tensor([], "bool")})})
    (folder / "features.json").write_text(json.dumps(features))
    episode = make_episode(5, 64, 4)
    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
             for f in episode.frames]
    writer = TFRecordWriter(str(folder / "bridge-train.tfrecord-00000-of-00002"))
    writer.write({"steps/observation/image": (jpegs, "byte"),
                  "steps/observation/natural_language_instruction":
                      ([b""] + [episode.instruction.encode()] * 3, "byte"),
                  "steps/observation/state": (episode.states.ravel().tolist(), "float"),
                  "steps/action/world_vector": (list(range(12)), "float"),
                  "steps/action/open_gripper": ([1, 1, 0, 0], "int")})
    writer.close()
    (folder / "bridge-train.tfrecord-00001-of-00002").write_bytes(b"")  # an empty shard
    [(episode_id, back)] = list(read_episodes(tmp_path))
    assert episode_id.endswith("00000-of-00002#0")
    assert back.instruction == episode.instruction  # the first non-empty step text
    assert np.abs(back.frames.astype(int) - episode.frames).mean() < 3  # JPEG
    assert back.actions.shape == (4, 4) and back.actions[:, 3].tolist() == [1, 1, 0, 0]
    assert back.meta["action_keys"] == ["steps/action/world_vector", "steps/action/open_gripper"]


def test_truncated_shard_is_reported(tmp_path):
    folder = tmp_path / "d"
    write_bridge_shard(folder, (0,))
    shard = next(folder.glob("*.tfrecord*"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(EpisodeFormatError, match="truncated"):
        find_episodes(folder)
