"""LeRobot v3 datasets, read and written with pyarrow and PyAV (no `lerobot` dependency).

Layout (codebase_version "v3.0"; chunk and file numbers are three digits):

    meta/info.json                         fps, features (dtype, shape, names, video info), paths
    meta/tasks.parquet                     one row per task: index "task" (text), "task_index"
    meta/episodes/chunk-000/file-000.parquet
        one row per episode: episode_index, tasks (list of text), length,
        data/chunk_index, data/file_index, dataset_from_index, dataset_to_index,
        videos/<key>/chunk_index, videos/<key>/file_index,
        videos/<key>/from_timestamp, videos/<key>/to_timestamp
    data/chunk-000/file-000.parquet        one row per frame: index, episode_index, frame_index,
                                           timestamp, task_index, observation.state, action
    videos/<key>/chunk-000/file-000.mp4    the frames of camera <key>, episodes one after another

Reading gives one `Episode` per episode: the frames of one camera (a `video` or `image` feature,
chosen by position among them or by key, e.g. "observation.images.image" or just "image"), the
episode's first task as the instruction, `observation.state` and `action` where present. Only
the rows and the stretch of video of that episode are decoded. Writing puts every episode in
one data file and one video file per camera (H.264 in yuv420p, a keyframe every 2 frames so an
episode's start is found quickly); the whole dataset is written in a hidden folder and renamed
into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim_bridge.data.episode import Episode
from sim_bridge.data.episode_io import EpisodeFormatError

INFO = "meta/info.json"
TASKS = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
VERSION = "v3.0"
IMAGE_KEY = "observation.images.image"
CODEC, PIX_FMT = "h264", "yuv420p"


def is_dataset_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / INFO).is_file()


def read_info(root: Path) -> dict:
    try:
        info = json.loads((root / INFO).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EpisodeFormatError(f"{root / INFO}: unreadable ({e})") from e
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise EpisodeFormatError(f"{root}: LeRobot codebase_version {version!r}; this reader "
                                 "reads v3 (convert v2.x datasets with lerobot's converter)")
    return info


def _episodes_table(root: Path) -> pa.Table:
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise EpisodeFormatError(f"{root}: no {EPISODES_DIR}/chunk-*/file-*.parquet")
    tables = [pq.read_table(f, columns=[c for c in pq.read_schema(f).names
                                        if not c.startswith("stats/")]) for f in files]
    return pa.concat_tables(tables, promote_options="default")


def episode_indices(root: str | os.PathLike) -> list[int]:
    """The episode numbers of a dataset, sorted, from its episode metadata alone."""
    root = Path(root)
    read_info(root)
    return sorted(_episodes_table(root).column("episode_index").to_pylist())


def camera_keys(info: dict) -> list[str]:
    """The image features, in the order info.json lists them."""
    return [k for k, f in info["features"].items() if f.get("dtype") in ("video", "image")]


def camera_key(root: str | os.PathLike, camera: int | str) -> str | None:
    """The feature key of `camera` (a position among the image features, a key, or its last
    dotted part); None when the dataset has no such camera."""
    keys = camera_keys(read_info(Path(root)))
    if isinstance(camera, int):
        return keys[camera] if 0 <= camera < len(keys) else None
    matches = [k for k in keys if k == camera or k.rsplit(".", 1)[-1] == camera]
    return matches[0] if len(matches) == 1 else None


def _episode_row(root: Path, index: int) -> dict[str, Any]:
    table = _episodes_table(root)
    rows = table.filter(pa.compute.equal(table.column("episode_index"), index)).to_pylist()
    if len(rows) != 1:
        raise EpisodeFormatError(f"{root}: {len(rows)} metadata rows for episode {index}")
    return rows[0]


def _decode_video(path: Path, start: float, end: float, fps: float) -> np.ndarray:
    """RGB frames with presentation time in [start, end) (half a frame of slack either side)."""
    half = 0.5 / fps
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(max(0.0, start - half) / stream.time_base), stream=stream,
                       backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None or frame.time < start - half:
                continue
            if frame.time >= end - half:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def read_episode(root: str | os.PathLike, index: int, camera: int | str = 0) -> Episode:
    """Episode `index` of the LeRobot v3 dataset at `root`, frames of `camera`."""
    root = Path(root)
    info = read_info(root)
    key = camera_key(root, camera)
    if key is None:
        raise EpisodeFormatError(f"{root}: no camera {camera!r}; image features: "
                                 f"{camera_keys(info)}")
    row = _episode_row(root, index)
    fps = float(info["fps"])
    data_file = root / info.get("data_path", DATA_PATH).format(
        chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
    wanted = [c for c in ("frame_index", "task_index", "observation.state", "action", key)
              if c in pq.read_schema(data_file).names]
    data = pq.read_table(data_file, columns=wanted + ["episode_index"],
                         filters=[("episode_index", "=", index)]).sort_by("frame_index")
    if info["features"][key]["dtype"] == "video":
        video = root / info.get("video_path", VIDEO_PATH).format(
            video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
            file_index=row[f"videos/{key}/file_index"])
        frames = _decode_video(video, row[f"videos/{key}/from_timestamp"],
                               row[f"videos/{key}/to_timestamp"], fps)
    else:
        frames = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(cell["bytes"], np.uint8),
                                                     cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                           for cell in data.column(key).to_pylist()])
    if len(frames) != row["length"]:
        raise EpisodeFormatError(f"{root}: episode {index} has {row['length']} frames in its "
                                 f"metadata, {len(frames)} decoded from {key}")

    def array(name: str) -> np.ndarray | None:
        if name not in data.column_names:
            return None
        return np.asarray(data.column(name).to_pylist(), np.float64).reshape(len(frames), -1)

    tasks = row.get("tasks") or []
    return Episode(frames=frames, instruction=tasks[0] if tasks else None,
                   states=array("observation.state"), actions=array("action"),
                   meta={"source": "lerobot", "path": str(root), "episode_index": index,
                         "camera": key, "fps": fps, "tasks": tasks})


# ---------------------------------------------------------------------------------------------
# Writing

def _feature(values: np.ndarray, name: str) -> dict:
    return {"dtype": "float32", "shape": [int(values.shape[1])],
            "names": [f"{name}_{i}" for i in range(values.shape[1])]}


class _VideoWriter:
    """One MP4 of concatenated episodes; pts counts frames, so time = frame number / fps."""

    def __init__(self, path: Path, fps: int, height: int, width: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(CODEC, rate=fps,
                                                options={"crf": "18", "g": "2"})
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, PIX_FMT
        self.count = 0

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            image.pts = self.count
            self.count += 1
            self.container.mux(self.stream.encode(image))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


def write_dataset(episodes: Iterable[Episode], root: str | os.PathLike, fps: int = 5,
                  robot_type: str = "tabletop_sim") -> Path:
    """Write `episodes` (one camera each, equal frame sizes) as a LeRobot v3 dataset at `root`,
    which must not exist yet; episodes are encoded as they come. Returns `root`."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; refusing to overwrite a dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        _write(episodes, tmp, fps, robot_type)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write(episodes: Iterable[Episode], root: Path, fps: int, robot_type: str) -> None:
    tasks: dict[str, int] = {}
    rows: dict[str, list] = {k: [] for k in ("index", "episode_index", "frame_index",
                                             "timestamp", "task_index")}
    vectors: dict[str, list[np.ndarray]] = {"observation.state": [], "action": []}
    meta: list[dict] = []
    video = None
    shape = None
    for e, episode in enumerate(episodes):
        t = len(episode.frames)
        if shape is None:
            shape = episode.frames.shape[1:]
            if shape[0] % 2 or shape[1] % 2:
                raise ValueError(f"frame size {shape[:2]} must be even for {PIX_FMT} video")
            video = _VideoWriter(root / VIDEO_PATH.format(video_key=IMAGE_KEY, chunk_index=0,
                                                          file_index=0), fps, shape[0], shape[1])
        elif episode.frames.shape[1:] != shape:
            raise ValueError(f"episode {e}: frames {episode.frames.shape[1:]}, the first "
                             f"episode's are {shape}; a dataset has one frame size")
        task = episode.instruction or ""
        task_index = tasks.setdefault(task, len(tasks))
        start = len(rows["index"])
        from_ts = video.count / fps
        video.write(episode.frames)
        rows["index"] += range(start, start + t)
        rows["episode_index"] += [e] * t
        rows["frame_index"] += range(t)
        rows["timestamp"] += [i / fps for i in range(t)]
        rows["task_index"] += [task_index] * t
        for name, values in (("observation.state", episode.states), ("action", episode.actions)):
            if values is not None and len(values) == t - 1:  # one per transition: pad the last
                values = np.concatenate([values, values[-1:]])
            vectors[name].append(None if values is None else np.asarray(values, np.float32))
        meta.append({"episode_index": e, "tasks": [task], "length": t,
                     "data/chunk_index": 0, "data/file_index": 0,
                     "dataset_from_index": start, "dataset_to_index": start + t,
                     f"videos/{IMAGE_KEY}/chunk_index": 0, f"videos/{IMAGE_KEY}/file_index": 0,
                     f"videos/{IMAGE_KEY}/from_timestamp": from_ts,
                     f"videos/{IMAGE_KEY}/to_timestamp": video.count / fps,
                     "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    if video is None:
        raise ValueError("no episodes to write")
    video.close()
    features: dict[str, dict] = {
        IMAGE_KEY: {"dtype": "video", "shape": [shape[0], shape[1], 3],
                    "names": ["height", "width", "channels"],
                    "info": {"video.height": shape[0], "video.width": shape[1],
                             "video.codec": CODEC, "video.pix_fmt": PIX_FMT,
                             "video.is_depth_map": False, "video.fps": fps,
                             "video.channels": 3, "has_audio": False}}}
    columns = {"index": pa.array(rows["index"], pa.int64()),
               "episode_index": pa.array(rows["episode_index"], pa.int64()),
               "frame_index": pa.array(rows["frame_index"], pa.int64()),
               "timestamp": pa.array(rows["timestamp"], pa.float32()),
               "task_index": pa.array(rows["task_index"], pa.int64())}
    for name, parts in vectors.items():
        if all(p is None for p in parts):
            continue
        if any(p is None for p in parts) or len({p.shape[1] for p in parts}) != 1:
            raise ValueError(f"{name}: every episode needs one of equal width, or none has it")
        values = np.concatenate(parts)
        features[name] = _feature(values, name.rsplit(".", 1)[-1])
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()),
                                                          values.shape[1])
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"),
                        ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64")):
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    data_file = root / DATA_PATH.format(chunk_index=0, file_index=0)
    data_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), data_file)
    episodes_file = root / EPISODES_DIR / (CHUNK_FILE.format(chunk_index=0, file_index=0)
                                           + ".parquet")
    episodes_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(meta), episodes_file)
    task_table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                           "task": pa.array(list(tasks))})
    pq.write_table(task_table.replace_schema_metadata(
        {"pandas": json.dumps({"index_columns": ["task"], "column_indexes": [],
                               "columns": [{"name": "task_index", "field_name": "task_index",
                                            "pandas_type": "int64", "numpy_type": "int64",
                                            "metadata": None},
                                           {"name": "task", "field_name": "task",
                                            "pandas_type": "unicode", "numpy_type": "object",
                                            "metadata": None}],
                               "pandas_version": "2.2.0"})}), root / TASKS)
    total = len(rows["index"])
    info = {"codebase_version": VERSION, "robot_type": robot_type,
            "total_episodes": len(meta), "total_frames": total, "total_tasks": len(tasks),
            "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
            "fps": fps, "splits": {"train": f"0:{len(meta)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features}
    (root / INFO).write_text(json.dumps(info, indent=4))
