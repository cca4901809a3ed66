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
the rows and the stretch of video of that episode are decoded.

Writing makes a dataset lerobot 0.6 takes as its own (checked by `bench/lerobot_conformance.py`:
load, train, merge, resume, recompute stats): lerobot's defaults where it has them (AV1 from
libsvtav1 at crf 30, preset 12, a keyframe every 2 frames, yuv420p; files of at most 100 MB of
data and 200 MB of video, 1000 files per chunk), the encoder settings in `info.json`, feature
statistics per episode and for the whole dataset (`lerobot_stats`), and a new data, video or
metadata file whenever the current one would pass its size limit with the next episode
(lerobot's rule). The whole dataset is written in a hidden folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim_bridge.data import lerobot_stats
from sim_bridge.data.episode import Episode
from sim_bridge.data.episode_io import EpisodeFormatError

INFO = "meta/info.json"
TASKS = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
VERSION = "v3.0"
STATS = "meta/stats.json"
IMAGE_KEY = "observation.images.image"
# lerobot 0.6's VideoEncoderConfig defaults; info.json records them as video.<name>
ENCODER = {"vcodec": "libsvtav1", "pix_fmt": "yuv420p", "g": 2, "crf": 30, "preset": 12,
           "fast_decode": 0, "video_backend": "pyav", "extra_options": {}}


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

@dataclass(frozen=True)
class FileLimits:
    """How big files grow before the next one starts, as `info.json` states (lerobot's defaults)."""

    chunks_size: int = 1000  # files per chunk folder
    data_files_size_in_mb: float = 100  # data and episode-metadata parquet files
    video_files_size_in_mb: float = 200

    def __post_init__(self) -> None:
        if self.chunks_size < 1 or self.data_files_size_in_mb <= 0 or self.video_files_size_in_mb <= 0:
            raise ValueError(f"file limits must be positive, got {self}")


class _FileSeries:
    """The chunk and file numbers of one series of files (data, a camera's video, episode
    metadata). Before an episode is added, the series moves to the next file when the current
    one would pass `limit_mb` with it: its size plus its average size per frame times the
    episode's frames, lerobot's rule."""

    def __init__(self, limit_mb: float, chunks_size: int) -> None:
        self.limit_bytes, self.chunks_size = limit_mb * 2**20, chunks_size
        self.chunk = self.file = 0
        self.frames = 0  # in the current file

    def next_file_for(self, size_bytes: float, frames: int) -> bool:
        """True when the episode of `frames` frames must start a new file (numbers advanced)."""
        if self.frames and size_bytes + size_bytes / self.frames * frames >= self.limit_bytes:
            self.file += 1
            if self.file == self.chunks_size:
                self.chunk, self.file = self.chunk + 1, 0
            self.frames = 0
            return True
        return False

    def path(self, root: Path, template: str, **keys: str) -> Path:
        return root / template.format(chunk_index=self.chunk, file_index=self.file, **keys)


class _ParquetSeries(_FileSeries):
    """Tables appended to a series of parquet files, one writer open at a time."""

    def __init__(self, root: Path, template: str, limit_mb: float, chunks_size: int) -> None:
        super().__init__(limit_mb, chunks_size)
        self.root, self.template, self.writer = root, template, None

    def place(self, frames: int) -> tuple[int, int]:
        """The (chunk, file) the next episode of `frames` frames goes to."""
        if self.writer is not None and self.next_file_for(os.path.getsize(self.writer.where), frames):
            self.close()
        return self.chunk, self.file

    def append(self, table: pa.Table, frames: int) -> tuple[int, int]:
        """Write `table` (an episode's rows, `frames` frames); returns its (chunk, file)."""
        self.place(frames)
        if self.writer is None:
            path = self.path(self.root, self.template)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(str(path), table.schema, compression="snappy")
        self.writer.write_table(table)
        self.frames += frames
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _VideoSeries(_FileSeries):
    """One camera's MP4 files of concatenated episodes; pts counts frames, so time = frame / fps."""

    def __init__(self, root: Path, key: str, fps: int, limit_mb: float, chunks_size: int) -> None:
        super().__init__(limit_mb, chunks_size)
        self.root, self.key, self.fps = root, key, fps
        self.container = self.stream = None
        self.bytes = 0

    def append(self, frames: np.ndarray) -> tuple[int, int, float, float]:
        """Encode an episode's frames; returns (chunk, file, from_timestamp, to_timestamp)."""
        if self.container is not None and self.next_file_for(self.bytes, len(frames)):
            self.close()
        if self.container is None:
            os.environ.setdefault("SVT_LOG", "1")  # errors only: SVT-AV1 prints its settings otherwise
            path = self.path(self.root, VIDEO_PATH, video_key=self.key)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(path), "w")
            options = {"crf": str(ENCODER["crf"]), "g": str(ENCODER["g"]), "preset": str(ENCODER["preset"])}
            self.stream = self.container.add_stream(ENCODER["vcodec"], rate=self.fps, options=options)
            self.stream.height, self.stream.width = frames.shape[1:3]
            self.stream.pix_fmt = ENCODER["pix_fmt"]
            self.bytes = 0
        start = self.frames
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            image.pts = self.frames
            self.frames += 1
            self._mux(self.stream.encode(image))
        return self.chunk, self.file, start / self.fps, self.frames / self.fps

    def _mux(self, packets: list) -> None:
        self.bytes += sum(packet.size for packet in packets)
        self.container.mux(packets)

    def close(self) -> None:
        if self.container is not None:
            self._mux(self.stream.encode())
            self.container.close()
            self.container = None


def _vector_feature(width: int, name: str) -> dict:
    return {"dtype": "float32", "shape": [width], "names": [f"{name}_{i}" for i in range(width)]}


def _video_feature(height: int, width: int, fps: int) -> dict:
    encoder = {f"video.{k}": v for k, v in ENCODER.items() if k not in ("vcodec", "pix_fmt")}
    return {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": height, "video.width": width, "video.codec": "av1",
                     "video.pix_fmt": ENCODER["pix_fmt"], "video.fps": fps, "video.channels": 3,
                     **encoder, "has_audio": False, "is_depth_map": False}}


INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
                  "index": "int64", "task_index": "int64"}


def write_dataset(episodes: Iterable[Episode], root: str | os.PathLike, fps: int = 5,
                  robot_type: str = "tabletop_sim", limits: FileLimits = FileLimits()) -> Path:
    """Write `episodes` (one camera each, equal frame sizes; states and actions in all of them
    or in none) as a LeRobot v3 dataset at `root`, which must not exist yet; episodes are
    encoded as they come. Actions given per transition (T - 1 rows) get the last one repeated,
    since LeRobot keeps one per frame. Returns `root`."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; refusing to overwrite a dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        _write(episodes, tmp, fps, robot_type, limits)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _vectors(e: int, episode: Episode, expected: dict[str, int] | None) -> dict[str, np.ndarray]:
    """The episode's state and action columns, one row per frame, checked against the first
    episode's (`expected`: name -> width)."""
    t = len(episode.frames)
    found = {}
    for name, values in (("observation.state", episode.states), ("action", episode.actions)):
        if values is None:
            continue
        values = np.asarray(values, np.float32)
        if len(values) == t - 1:
            values = np.concatenate([values, values[-1:]])
        found[name] = values
    widths = {name: v.shape[1] for name, v in found.items()}
    if expected is not None and widths != expected:
        raise ValueError(f"episode {e}: state/action widths {widths}, the first episode's are "
                         f"{expected}; every episode needs the same ones")
    return found


def _write(episodes: Iterable[Episode], root: Path, fps: int, robot_type: str, limits: FileLimits) -> None:
    data = _ParquetSeries(root, DATA_PATH, limits.data_files_size_in_mb, limits.chunks_size)
    metadata = _ParquetSeries(root, EPISODES_DIR + "/" + CHUNK_FILE + ".parquet",
                              limits.data_files_size_in_mb, limits.chunks_size)
    video = None
    tasks: dict[str, int] = {}
    widths: dict[str, int] | None = None
    shape = None
    episode_stats: list[dict[str, dict]] = []
    total = 0
    try:
        for e, episode in enumerate(episodes):
            t = len(episode.frames)
            if shape is None:
                shape = episode.frames.shape[1:]
                if shape[0] % 2 or shape[1] % 2:
                    raise ValueError(f"frame size {shape[:2]} must be even for {ENCODER['pix_fmt']} video")
                video = _VideoSeries(root, IMAGE_KEY, fps, limits.video_files_size_in_mb, limits.chunks_size)
            elif episode.frames.shape[1:] != shape:
                raise ValueError(f"episode {e}: frames {episode.frames.shape[1:]}, the first "
                                 f"episode's are {shape}; a dataset has one frame size")
            vectors = _vectors(e, episode, widths)
            widths = {name: v.shape[1] for name, v in vectors.items()}
            task = episode.instruction or ""
            task_index = tasks.setdefault(task, len(tasks))
            columns = {"timestamp": (np.arange(t) / fps).astype(np.float32), "frame_index": np.arange(t),
                       "episode_index": np.full(t, e), "index": np.arange(total, total + t),
                       "task_index": np.full(t, task_index)}
            table = pa.table({name: pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1])
                              for name, v in vectors.items()}
                             | {name: pa.array(values) for name, values in columns.items()})
            data_chunk, data_file = data.append(table, t)
            video_chunk, video_file, from_ts, to_ts = video.append(episode.frames)
            stats = {IMAGE_KEY: lerobot_stats.image_stats(episode.frames)} | {
                name: lerobot_stats.vector_stats(values) for name, values in (columns | vectors).items()}
            episode_stats.append(stats)
            row = {"episode_index": e, "tasks": [task], "length": t,
                   "data/chunk_index": data_chunk, "data/file_index": data_file,
                   "dataset_from_index": total, "dataset_to_index": total + t,
                   f"videos/{IMAGE_KEY}/chunk_index": video_chunk, f"videos/{IMAGE_KEY}/file_index": video_file,
                   f"videos/{IMAGE_KEY}/from_timestamp": from_ts, f"videos/{IMAGE_KEY}/to_timestamp": to_ts}
            row |= {f"stats/{feature}/{key}": value
                    for feature, by_stat in lerobot_stats.as_lists(stats).items() for key, value in by_stat.items()}
            meta_chunk, meta_file = metadata.place(t)
            row |= {"meta/episodes/chunk_index": meta_chunk, "meta/episodes/file_index": meta_file}
            metadata.append(pa.Table.from_pylist([row]), t)
            total += t
    finally:
        data.close()
        metadata.close()
        if video is not None:
            video.close()
    if video is None:
        raise ValueError("no episodes to write")
    features = {IMAGE_KEY: _video_feature(shape[0], shape[1], fps)}
    features |= {name: _vector_feature(width, name.rsplit(".", 1)[-1]) for name, width in widths.items()}
    features |= {name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in INDEX_FEATURES.items()}
    _write_tasks(root, tasks)
    dataset_stats = {feature: lerobot_stats.aggregate([s[feature] for s in episode_stats]) for feature in features}
    (root / STATS).write_text(json.dumps(lerobot_stats.as_lists(dataset_stats), indent=4))
    info = {"codebase_version": VERSION, "robot_type": robot_type,
            "total_episodes": len(episode_stats), "total_frames": total, "total_tasks": len(tasks),
            "chunks_size": limits.chunks_size, "data_files_size_in_mb": limits.data_files_size_in_mb,
            "video_files_size_in_mb": limits.video_files_size_in_mb,
            "fps": fps, "splits": {"train": f"0:{len(episode_stats)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features}
    (root / INFO).write_text(json.dumps(info, indent=4))


def _write_tasks(root: Path, tasks: dict[str, int]) -> None:
    """meta/tasks.parquet as lerobot writes it: a pandas frame indexed by the task text."""
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
