"""Our own episode format: one folder per episode, lossless frames, JSON for everything else.

Layout:

    <episode>/
        episode.json
        frames/00000.png, 00001.png, ...   one RGB PNG per frame, T files, all the same size

episode.json (format version 1):

    {"format": "foresight-episode", "version": 1,
     "num_frames": T, "height": H, "width": W,
     "instruction": str | null, "target": str | null,
     "object_colors": {name: [r, g, b]} | null,
     "object_positions": {name: [[x, y], ...T rows]} | null,   float pixel centres
     "meta": {...}}                                           free-form, JSON only

Positions are float64 and JSON keeps every digit, so a write/read round trip is exact.
An episode is written into a hidden temporary folder beside its destination and renamed into
place when complete, so a crash never leaves a half episode under the real name; hidden folders
are never read as episodes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from sim_bridge.data.episode import Episode

FORMAT = "foresight-episode"
FORMAT_VERSION = 1
JSON_NAME = "episode.json"
FRAMES_DIR = "frames"


class EpisodeFormatError(ValueError):
    """An episode folder that is missing, incomplete or not in our format."""


def _frame_name(i: int) -> str:
    return f"{i:05d}.png"


def write_episode(episode: Episode, folder: str | os.PathLike) -> Path:
    """Write `episode` to `folder` (which must not exist yet), atomically; returns the path."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; refusing to overwrite an episode")
    header = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "num_frames": int(episode.frames.shape[0]), "height": int(episode.frames.shape[1]),
        "width": int(episode.frames.shape[2]),
        "instruction": episode.instruction, "target": episode.target,
        "object_colors": None if episode.object_colors is None else
        {name: [int(c) for c in rgb] for name, rgb in episode.object_colors.items()},
        "object_positions": None if episode.object_positions is None else
        {name: np.asarray(p, np.float64).tolist() for name, p in episode.object_positions.items()},
        "meta": episode.meta,
    }
    try:
        text = json.dumps(header, indent=1)
    except TypeError as e:
        raise ValueError(f"episode meta must be JSON-serialisable: {e}") from e
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        (tmp / FRAMES_DIR).mkdir()
        for i, frame in enumerate(episode.frames):
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OSError(f"PNG encoding failed for frame {i} of {folder}")
            (tmp / FRAMES_DIR / _frame_name(i)).write_bytes(png.tobytes())
        (tmp / JSON_NAME).write_text(text)  # last: a folder with its JSON is complete
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_episode(folder: str | os.PathLike) -> Episode:
    """Read an episode written by `write_episode`; EpisodeFormatError says what is wrong."""
    folder = Path(folder)
    json_path = folder / JSON_NAME
    if not json_path.is_file():
        raise EpisodeFormatError(f"{folder}: not an episode, missing {JSON_NAME}")
    try:
        header = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EpisodeFormatError(f"{json_path}: unreadable JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise EpisodeFormatError(f"{json_path}: not a {FORMAT} file")
    if header.get("version") != FORMAT_VERSION:
        raise EpisodeFormatError(f"{json_path}: format version {header.get('version')!r}, "
                                 f"this reader reads version {FORMAT_VERSION}")
    try:
        t, h, w = int(header["num_frames"]), int(header["height"]), int(header["width"])
    except (KeyError, TypeError, ValueError) as e:
        raise EpisodeFormatError(f"{json_path}: bad or missing frame count/size ({e!r})") from e
    expected = {_frame_name(i) for i in range(t)}
    present = {p.name for p in (folder / FRAMES_DIR).glob("*.png")}
    if expected - present:
        raise EpisodeFormatError(f"{folder}: missing frame(s) {sorted(expected - present)[:5]} "
                                 f"of {t}")
    if present - expected:
        raise EpisodeFormatError(f"{folder}: unexpected frame(s) {sorted(present - expected)[:5]}"
                                 f"; episode.json says {t} frames")
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        path = folder / FRAMES_DIR / _frame_name(i)
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise EpisodeFormatError(f"{path}: unreadable PNG")
        if image.shape != (h, w, 3):
            raise EpisodeFormatError(f"{path}: size {image.shape[:2]}, episode.json says {(h, w)}")
        frames[i] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    positions = header.get("object_positions")
    if positions is not None:
        positions = {name: np.array(p, np.float64).reshape(-1, 2) for name, p in positions.items()}
        bad = {name: len(p) for name, p in positions.items() if len(p) != t}
        if bad:
            raise EpisodeFormatError(f"{json_path}: object positions {bad} do not have {t} rows")
    colors = header.get("object_colors")
    return Episode(
        frames=frames, instruction=header.get("instruction"), object_positions=positions,
        object_colors=None if colors is None else {n: tuple(c) for n, c in colors.items()},
        target=header.get("target"), meta=header.get("meta", {}))


def is_episode_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a complete episode folder (cheap: looks for its JSON only)."""
    return (Path(path) / JSON_NAME).is_file()


def iter_episodes(root: str | os.PathLike) -> Iterator[tuple[Path, Episode]]:
    """(folder, episode) for every episode folder under `root` (or `root` itself), sorted by
    path; hidden folders (unfinished writes) are skipped. Episodes are read lazily."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"episode root {root} is not a folder")
    if is_episode_dir(root):
        yield root, read_episode(root)
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        yield from iter_episodes(child)
