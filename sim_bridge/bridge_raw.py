"""Reader for the BridgeData V2 raw layout, one trajectory folder at a time (trees: `readers`).

Layout (as released; the levels above `raw/` vary by collection):

    .../raw/traj_group0/traj0/
        images0/im_0.jpg ... im_{T-1}.jpg   fixed third-person camera, 480x640 RGB JPEGs
        images1/ .. images3/                other cameras, where recorded
        lang.txt                            instruction line(s), then "confidence: ..." lines
        obs_dict.pkl                        robot state arrays, one row per frame
        policy_out.pkl                      one action record per transition

A trajectory folder is any folder with an `images<d>` subfolder. `lang.txt` lines containing
"confidence" are dropped; the first remaining line is the instruction, and a missing or empty
file means no instruction. The pickles are summarised in `meta` (array shapes, action count):
the frames and the instruction are what the node needs.

Pickles run code when loaded, so they are read only from local files and only through an
unpickler that accepts builtin containers and numpy arrays; anything else is refused.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sim_bridge.episode import Episode
from sim_bridge.episode_io import EpisodeFormatError

FRAME_PATTERN = re.compile(r"im_(\d+)\.jpg")
CAMERA_PATTERN = re.compile(r"images(\d+)")
LANG_FILE = "lang.txt"
PICKLES = ("obs_dict.pkl", "policy_out.pkl")

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


def _summarise(value: Any) -> Any:
    """JSON-ready outline of a pickle: array shapes and dtypes, container lengths."""
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {str(k): _summarise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {"length": len(value), "first": _summarise(value[0]) if value else None}
    return type(value).__name__


def read_trajectory(folder: str | os.PathLike, camera: int = 0) -> Episode:
    """One trajectory folder as an Episode (frames of camera `camera`); EpisodeFormatError says
    what is wrong."""
    folder = Path(folder)
    if not is_trajectory_dir(folder):
        raise EpisodeFormatError(f"{folder}: not a BridgeData trajectory (no images<d> folder)")
    frames = read_frames(folder / f"images{camera}")
    instructions = read_instructions(folder)
    meta: dict[str, Any] = {"source": "bridge_raw", "path": str(folder), "camera": camera,
                            "instructions": instructions}
    for name in PICKLES:
        path = folder / name
        if path.is_file():
            try:
                meta[path.stem] = _summarise(load_pickle(path))
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
                raise EpisodeFormatError(f"{path}: unreadable pickle ({e})") from e
    return Episode(frames=frames, instruction=instructions[0] if instructions else None,
                   meta=meta)

