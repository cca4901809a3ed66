"""RLDS episodes (TFDS shards), read without TensorFlow: the `tfrecord` package parses the records,
the dataset's `features.json` says what each key holds.

Layout (a TFDS dataset version folder, as the Open X-Embodiment, Octo and OpenVLA releases ship):

    <dataset>/<version>/
        features.json                      the FeaturesDict: keys, shapes, dtypes, image encoding
        dataset_info.json
        <name>-train.tfrecord-00000-of-00064, ...   one tf.train.Example per episode

An episode's record holds its steps flattened: "steps/observation/image_0" (one encoded image per
step), "steps/action" (T x 7 floats), "steps/language_instruction" (one text per step), ... Two key
layouts are read:

- Bridge as Octo and OpenVLA ship it: `observation/image_0` .. `image_3`, `observation/state`,
  `action`, `language_instruction`.
- Open X-Embodiment (e.g. its `bridge`): `observation/image`, `observation/state`,
  `observation/natural_language_instruction`, `action` (a tensor or a map of tensors, which
  are concatenated in features.json order).

A camera is a number (`image_<d>`; 0 is also `image` where there are no numbers) or an image key
under `observation` (e.g. "wrist_image"). The instruction is the first non-empty step text.
Episodes are found by reading only record headers; one episode is parsed at a time.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sim_bridge.data.episode import Episode
from sim_bridge.data.episode_io import EpisodeFormatError

FEATURES = "features.json"
INSTRUCTION_KEYS = ("steps/language_instruction", "steps/observation/natural_language_instruction")
STATE_KEY = "steps/observation/state"
ACTION_KEY = "steps/action"
_DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
           "bool": np.bool_, "uint8": np.uint8}


def shards(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and ".tfrecord" in p.name
                  and not p.name.endswith(".index"))


def is_dataset_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / FEATURES).is_file() and bool(shards(path))


def _flatten(node: dict, prefix: str, out: dict[str, dict]) -> None:
    """features.json (TFDS FeatureConnector protos as JSON) -> {"steps/observation/x": spec}."""
    if "featuresDict" in node:
        for name, child in node["featuresDict"]["features"].items():
            _flatten(child, f"{prefix}/{name}" if prefix else name, out)
    elif "sequence" in node:
        _flatten(node["sequence"]["feature"], prefix, out)
    elif "image" in node:
        out[prefix] = {"kind": "image", "shape": node["image"].get("shape", {}).get("dimensions")}
    elif "text" in node:
        out[prefix] = {"kind": "text"}
    elif "tensor" in node:
        dims = [int(d) for d in node["tensor"].get("shape", {}).get("dimensions", [])]
        out[prefix] = {"kind": "tensor", "shape": dims, "dtype": node["tensor"].get("dtype")}
    elif "scalar" in node:
        out[prefix] = {"kind": "tensor", "shape": [], "dtype": node["scalar"].get("dtype")}
    else:
        out[prefix] = {"kind": node.get("pythonClassName", "unknown")}


def read_features(folder: str | os.PathLike) -> dict[str, dict]:
    """Flat key -> {"kind": image | text | tensor, "shape", "dtype"} from features.json."""
    path = Path(folder) / FEATURES
    try:
        root = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EpisodeFormatError(f"{path}: unreadable ({e})") from e
    out: dict[str, dict] = {}
    _flatten(root, "", out)
    return out


def image_key(features: dict[str, dict], camera: int | str) -> str | None:
    """The record key holding the frames of `camera`, or None."""
    images = [k for k, f in features.items() if f["kind"] == "image"
              and k.startswith("steps/observation/")]
    if isinstance(camera, int):
        names = [f"steps/observation/image_{camera}"] + (["steps/observation/image"]
                                                         if camera == 0 else [])
    else:
        names = [f"steps/observation/{camera}", camera]
    return next((k for k in names if k in images), None)


def episode_offsets(folder: str | os.PathLike) -> list[tuple[Path, list[int]]]:
    """(shard, byte offset of each record) for every shard, reading record headers only."""
    out = []
    for shard in shards(Path(folder)):
        offsets, size = [], shard.stat().st_size
        with open(shard, "rb") as f:
            while f.tell() < size:
                offsets.append(f.tell())
                header = f.read(12)  # uint64 length, uint32 masked CRC of the length
                if len(header) != 12:
                    raise EpisodeFormatError(f"{shard}: truncated record at byte {offsets[-1]}")
                (length,) = struct.unpack("<Q", header[:8])
                f.seek(length + 4, os.SEEK_CUR)  # the record and its CRC
            if f.tell() != size:
                raise EpisodeFormatError(f"{shard}: truncated last record")
        out.append((shard, offsets))
    return out


def _record(shard: Path, offset: int) -> Any:
    """The tf.train.Example at `offset`. tfrecord is imported here: its package imports torch
    where installed, which episode discovery and the other formats must not pay for."""
    from tfrecord import example_pb2

    with open(shard, "rb") as f:
        f.seek(offset)
        (length,) = struct.unpack("<Q", f.read(12)[:8])
        data = f.read(length)
    if len(data) != length:
        raise EpisodeFormatError(f"{shard}: truncated record at byte {offset}")
    return example_pb2.Example.FromString(data)


def _values(feature: Any) -> list[Any]:
    kind = feature.WhichOneof("kind")
    return [] if kind is None else list(getattr(feature, kind).value)


def _tensor(example: Any, key: str, spec: dict, steps: int) -> np.ndarray:
    values = np.asarray(_values(example.features.feature[key]),
                        _DTYPES.get(spec.get("dtype"), np.float64))
    return values.reshape(steps, -1).astype(np.float64)


def read_episode(shard: str | os.PathLike, offset: int, camera: int | str = 0) -> Episode:
    """The episode whose record starts at byte `offset` of `shard`, frames of `camera`."""
    shard = Path(shard)
    features = read_features(shard.parent)
    key = image_key(features, camera)
    if key is None:
        cameras = [k for k, f in features.items() if f["kind"] == "image"]
        raise EpisodeFormatError(f"{shard.parent}: no camera {camera!r}; images: {cameras}")
    example = _record(shard, offset)
    feature = example.features.feature
    if key not in feature:
        raise EpisodeFormatError(f"{shard}@{offset}: record has no {key!r}")
    frames = []
    for data in _values(feature[key]):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise EpisodeFormatError(f"{shard}@{offset}: {key} step {len(frames)} is not an "
                                     "encoded image")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if not frames:
        raise EpisodeFormatError(f"{shard}@{offset}: episode has no steps")
    steps = len(frames)
    instruction = None
    for name in INSTRUCTION_KEYS:
        texts = [t.decode("utf-8") for t in _values(feature[name])] if name in feature else []
        instruction = next((t for t in texts if t.strip()), None)
        if instruction is not None:
            break
    states = (_tensor(example, STATE_KEY, features[STATE_KEY], steps)
              if STATE_KEY in features and STATE_KEY in feature else None)
    action_keys = [k for k, f in features.items() if f["kind"] == "tensor"
                   and (k == ACTION_KEY or k.startswith(ACTION_KEY + "/")) and k in feature]
    actions = (np.concatenate([_tensor(example, k, features[k], steps) for k in action_keys], 1)
               if action_keys else None)
    return Episode(frames=np.stack(frames), instruction=instruction, states=states,
                   actions=actions,
                   meta={"source": "rlds", "path": str(shard), "offset": offset, "camera": key,
                         "action_keys": action_keys})
