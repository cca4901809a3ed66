"""Reader for the BridgeData V2 raw layout, one trajectory folder at a time (trees: `readers`).

Layout (as released; the levels above the dated folder vary by collection):

    .../2021-06-28_14-05-40/                dated folder: one data-collection session
        config.json                         the rig's settings, with its camera topics
        raw/traj_group0/traj0/
            images0/im_0.jpg ... im_{T-1}.jpg   camera 0, 480x640 RGB JPEGs
            images1/ .. images3/                other cameras, where recorded
            lang.txt                            instruction line(s), then "confidence: ..." lines
            obs_dict.pkl                        robot state arrays, one row per frame
            policy_out.pkl                      one action record per transition

A trajectory folder is any folder with an `images<d>` subfolder. `lang.txt` lines containing
"confidence" are dropped; the first remaining line is the instruction, and a missing or empty
file means no instruction.

What a camera folder shows is told by the session's config.json: its `camera_topics` list (found
at any depth; entries are topic names, or maps or lists holding one) names camera d's ROS topic,
e.g. "/blue/image_raw" or "/wrist/image_raw"; a camera can be asked for by number or by a
part of its topic name. `obs_dict.pkl["full_state"]` becomes `Episode.states` (T, 7) and
`policy_out.pkl` (a list of arrays or of maps with "actions") `Episode.actions` (T-1, 7); the
pickles are also outlined in `meta`.

Sessions dated before 2021-07-23 recorded the camera one step late. As the official converters
do, their first image and state and their last action are dropped, so frame t again shows the
state the action t was taken from (`meta["delay_corrected"]`). Folders named `*lmdb*` are not
trajectories in this layout and are skipped by `readers`, as the converters skip them.

Pickles run code when loaded, so they are read only from local files and only through an
unpickler that accepts builtin containers and numpy arrays; anything else is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sim_bridge.data.episode import Episode
from sim_bridge.data.episode_io import EpisodeFormatError

FRAME_PATTERN = re.compile(r"im_(\d+)\.jpg")
CAMERA_PATTERN = re.compile(r"images(\d+)")
LANG_FILE = "lang.txt"
CONFIG_FILE = "config.json"
PICKLES = ("obs_dict.pkl", "policy_out.pkl")
SESSION_FORMAT = "%Y-%m-%d_%H-%M-%S"
DELAY_FIXED = datetime(2021, 7, 23)  # sessions before this date recorded the camera one step late

# What the restricted unpickler may construct: numpy arrays, dtypes and scalars (numpy 1 and 2
# module paths), and plain containers. Enough for Bridge's dicts and lists of arrays.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays "
                                         "and builtin containers are allowed")
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a local Bridge pickle with the restricted unpickler (latin1 for Python 2 pickles)."""
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()


def is_trajectory_dir(path: str | os.PathLike) -> bool:
    """Whether `path` holds at least one `images<d>` camera folder."""
    path = Path(path)
    return path.is_dir() and any(p.is_dir() and CAMERA_PATTERN.fullmatch(p.name)
                                 for p in path.iterdir())


def read_instructions(folder: Path) -> list[str]:
    """The non-empty lines of lang.txt without "confidence" lines; [] when there is no file."""
    path = folder / LANG_FILE
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EpisodeFormatError(f"{path}: not UTF-8 text ({e})") from e
    return [line.strip() for line in text.splitlines()
            if line.strip() and "confidence" not in line.lower()]


def read_frames(folder: Path) -> np.ndarray:
    """im_0.jpg .. im_{T-1}.jpg of one camera folder as uint8 (T, H, W, 3) RGB."""
    if not folder.is_dir():
        raise EpisodeFormatError(f"{folder}: camera folder missing")
    indices = {}
    for p in folder.iterdir():
        match = FRAME_PATTERN.fullmatch(p.name)
        if match:
            indices[int(match.group(1))] = p
    if not indices:
        raise EpisodeFormatError(f"{folder}: no im_<t>.jpg frames")
    missing = sorted(set(range(max(indices) + 1)) - set(indices))
    if missing:
        raise EpisodeFormatError(f"{folder}: frame numbering has gaps, missing "
                                 f"{['im_%d.jpg' % t for t in missing[:5]]}"
                                 f"{' ...' if len(missing) > 5 else ''} of {max(indices) + 1}")
    frames = []
    for t in range(len(indices)):
        image = cv2.imdecode(np.fromfile(indices[t], np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise EpisodeFormatError(f"{indices[t]}: unreadable JPEG")
        if frames and image.shape != frames[0].shape:
            raise EpisodeFormatError(f"{indices[t]}: size {image.shape[:2]}, "
                                     f"im_0.jpg has {frames[0].shape[:2]}")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def session_folder(folder: Path) -> tuple[Path, datetime] | None:
    """The nearest dated session folder above a trajectory, and its date; None outside one."""
    for parent in folder.resolve().parents:
        try:
            return parent, datetime.strptime(parent.name, SESSION_FORMAT)
        except ValueError:
            continue
    return None


def _find_key(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        if key in value:
            return value[key]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = _find_key(item, key)
            if found is not None:
                return found
    return None


def _topic_name(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return entry.get("name") or entry.get("topic")
    if isinstance(entry, list) and entry and isinstance(entry[0], str):
        return entry[0]
    return None


def camera_topics(folder: Path) -> list[str] | None:
    """Camera d's topic name at index d, from the config.json of the trajectory's session (or the
    nearest folder above with one); None when there is no config or it names no cameras."""
    for parent in folder.resolve().parents:
        path = parent / CONFIG_FILE
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise EpisodeFormatError(f"{path}: unreadable JSON ({e})") from e
            topics = _find_key(config, "camera_topics")
            if not isinstance(topics, list) or not topics:
                return None
            names = [_topic_name(entry) for entry in topics]
            if any(name is None for name in names):
                raise EpisodeFormatError(f"{path}: camera_topics entries must be topic names, "
                                         f"got {topics!r}")
            return names
    return None


def camera_index(folder: Path, camera: int | str) -> int | None:
    """The images<d> number of `camera` (a number, or a part of a topic name from config.json
    such as "wrist"); None when the trajectory did not record it."""
    if isinstance(camera, str):
        topics = camera_topics(folder) or []
        matches = [d for d, topic in enumerate(topics) if camera in topic]
        if len(matches) > 1:
            raise ValueError(f"camera {camera!r} matches several topics "
                             f"{[topics[d] for d in matches]} in {folder}")
        if not matches:
            return None
        camera = matches[0]
    return camera if (folder / f"images{camera}").is_dir() else None


def _summarise(value: Any) -> Any:
    """JSON-ready outline of a pickle: array shapes and dtypes, container lengths."""
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {str(k): _summarise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {"length": len(value), "first": _summarise(value[0]) if value else None}
    return type(value).__name__


def _load(path: Path) -> Any:
    try:
        return load_pickle(path)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise EpisodeFormatError(f"{path}: unreadable pickle ({e})") from e


def _actions(records: Any, path: Path) -> np.ndarray:
    """policy_out.pkl as (T-1, A) float: a list of action arrays or of maps holding "actions"."""
    if not isinstance(records, list) or not records:
        raise EpisodeFormatError(f"{path}: expected a non-empty list of action records")
    try:
        rows = [r["actions"] if isinstance(r, dict) else r for r in records]
        return np.stack([np.asarray(r, np.float64).ravel() for r in rows])
    except (KeyError, ValueError, TypeError) as e:
        raise EpisodeFormatError(f"{path}: action records without equal-length 'actions' "
                                 f"arrays ({e!r})") from e


def read_trajectory(folder: str | os.PathLike, camera: int | str = 0) -> Episode:
    """One trajectory folder as an Episode (frames of `camera`: images<d> number or a part of its
    topic name); EpisodeFormatError says what is wrong."""
    folder = Path(folder)
    if not is_trajectory_dir(folder):
        raise EpisodeFormatError(f"{folder}: not a BridgeData trajectory (no images<d> folder)")
    index = camera_index(folder, camera)
    if index is None:
        topics = camera_topics(folder)
        raise EpisodeFormatError(f"{folder}: no camera {camera!r} (images"
                                 f"{camera if isinstance(camera, int) else '?'}); topics "
                                 f"{topics if topics else 'unknown (no config.json)'}")
    frames = read_frames(folder / f"images{index}")
    instructions = read_instructions(folder)
    topics = camera_topics(folder)
    session = session_folder(folder)
    delayed = session is not None and session[1] < DELAY_FIXED
    meta: dict[str, Any] = {"source": "bridge_raw", "path": str(folder), "camera": index,
                            "camera_topic": topics[index] if topics and index < len(topics)
                            else None,
                            "session": session[0].name if session else None,
                            "delay_corrected": delayed, "instructions": instructions}
    states = actions = None
    for name in PICKLES:
        path = folder / name
        if not path.is_file():
            continue
        value = _load(path)
        meta[path.stem] = _summarise(value)
        if name == "obs_dict.pkl" and isinstance(value, dict) and "full_state" in value:
            states = np.asarray(value["full_state"], np.float64)
        elif name == "policy_out.pkl":
            actions = _actions(value, path)
    if delayed and len(frames) > 1:
        frames = frames[1:]
        states = None if states is None else states[1:]
        actions = None if actions is None else actions[:-1]
    if states is not None and len(states) != len(frames):
        raise EpisodeFormatError(f"{folder}: full_state has {len(states)} rows for "
                                 f"{len(frames)} frames")
    if actions is not None and len(actions) not in (len(frames) - 1, len(frames)):
        raise EpisodeFormatError(f"{folder}: policy_out.pkl has {len(actions)} actions for "
                                 f"{len(frames)} frames")
    return Episode(frames=frames, instruction=instructions[0] if instructions else None,
                   meta=meta, states=states, actions=actions)
