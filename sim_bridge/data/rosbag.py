"""ROS bags as episodes, read with `rosbags` (pure Python, no ROS installation): a ROS 1 bag or a
rosbag2 recording (MCAP or SQLite) is one episode.

Layout (the sidecar files are optional):

    run_042.bag                     a ROS 1 bag
    run_042.foresight.json          its options
    run_042.instruction.txt         its instruction

    run_043/                        a rosbag2 recording
        metadata.yaml
        run_043_0.mcap              (or run_043_0.db3)
        foresight.json              its options
        instruction.txt             its instruction

What is read:

- Frames: one camera topic, `sensor_msgs/msg/Image` (encodings rgb8, bgr8, rgba8, bgra8, mono8;
  others are refused) or `sensor_msgs/msg/CompressedImage` (JPEG or PNG). Cameras are numbered
  in the order of the `cameras` option, by default every image topic sorted by name; a camera is
  a number or a topic name, exact or a part of one that names a single topic (e.g. "wrist").
- Time: a topic's header stamps when every message has a non-zero one, else the times the bag
  received them. Frames are put in time order; with `rate_hz` the episode keeps, at each tick
  `first frame + k / rate_hz` up to the last frame, the last frame at or before the tick (a
  frame repeats where the camera is slower than the rate, and is dropped where it is faster).
- Instruction, first that applies: the `instruction_topic` option, the `instruction_file`
  option, the default instruction file, the only `std_msgs/msg/String` topic (of several, the
  only one whose name holds "instruction", "task" or "lang"). A text file gives its first
  non-empty line, a topic its first non-empty message; none of them gives no instruction.
- States and actions: the `state_topic` / `action_topic` options, by default the only
  `sensor_msgs/msg/JointState` topic whose name holds none of "action", "cmd", "command"
  (states) and the only vector topic whose name holds one of them (actions). Vector topics are
  JointState (positions), `std_msgs/msg/Float32MultiArray` and `Float64MultiArray` (data),
  `geometry_msgs/msg/Twist` and `TwistStamped` (linear xyz, angular xyz). Each frame gets the
  last message at or before its time (frames before the first message get the first one), so
  both are (T, D).

Options (`foresight.json`, every key optional, relative paths from the file's folder):
`{"cameras": [topic, ...], "instruction_topic": topic, "instruction_file": path,
"state_topic": topic, "action_topic": topic, "rate_hz": number}`. Replay, training and
evaluation find bags without options, so the defaults above apply wherever no file is present.

`rosbags` is imported only when a bag is opened; finding bags in a tree needs only the file
system.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sim_bridge.data.episode import Episode
from sim_bridge.data.episode_io import EpisodeFormatError

log = logging.getLogger(__name__)

ROS2_METADATA = "metadata.yaml"
ROS2_STORAGE = (".mcap", ".db3")
OPTIONS_NAME, INSTRUCTION_NAME = "foresight.json", "instruction.txt"
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
STRING, JOINT_STATE = "std_msgs/msg/String", "sensor_msgs/msg/JointState"
VECTOR_TYPES = (JOINT_STATE, "std_msgs/msg/Float32MultiArray", "std_msgs/msg/Float64MultiArray",
                "geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped")
INSTRUCTION_WORDS = ("instruction", "task", "lang")
ACTION_WORDS = ("action", "cmd", "command")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_TOPIC_OPTIONS = ("instruction_topic", "state_topic", "action_topic")


@dataclass(frozen=True)
class BagOptions:
    """A bag's options; None means the default (see the module docstring)."""

    source: Path | None = None  # the options file, for error messages
    cameras: tuple[str, ...] | None = None
    instruction_topic: str | None = None
    instruction_file: Path | None = None
    state_topic: str | None = None
    action_topic: str | None = None
    rate_hz: float | None = None


def is_bag_file(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.suffix == ".bag" and not path.name.startswith(".") and path.is_file()


def is_bag_dir(path: str | os.PathLike) -> bool:
    """A rosbag2 recording: metadata.yaml beside MCAP or SQLite storage files."""
    path = Path(path)
    return (path / ROS2_METADATA).is_file() and any(p.suffix in ROS2_STORAGE
                                                     for p in path.iterdir())


def sidecar(bag: Path, name: str) -> Path:
    """Where bag's `name` file ("foresight.json", "instruction.txt") lives: inside a rosbag2
    folder, beside a ROS 1 bag as `<stem>.<name>`."""
    return bag / name if bag.is_dir() else bag.with_name(f"{bag.stem}.{name}")


def read_options(bag: str | os.PathLike) -> BagOptions:
    """The bag's options file, checked; the defaults when there is none."""
    path = sidecar(Path(bag), OPTIONS_NAME)
    if not path.is_file():
        return BagOptions()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EpisodeFormatError(f"{path}: unreadable ({e})") from e
    if not isinstance(data, dict):
        raise EpisodeFormatError(f"{path}: must hold a JSON object, got {data!r}")
    known = {"cameras", "instruction_file", "rate_hz", *_TOPIC_OPTIONS}
    if unknown := sorted(set(data) - known):
        raise EpisodeFormatError(f"{path}: unknown option(s) {unknown}; known: {sorted(known)}")
    cameras = data.get("cameras")
    if cameras is not None and (not isinstance(cameras, list) or not cameras
                                or not all(isinstance(c, str) and c for c in cameras)):
        raise EpisodeFormatError(f"{path}: cameras must be a list of topic names, got {cameras!r}")
    for key in (*_TOPIC_OPTIONS, "instruction_file"):
        if data.get(key) is not None and (not isinstance(data[key], str) or not data[key]):
            raise EpisodeFormatError(f"{path}: {key} must be a non-empty string, "
                                     f"got {data[key]!r}")
    if data.get("instruction_topic") and data.get("instruction_file"):
        raise EpisodeFormatError(f"{path}: give instruction_topic or instruction_file, not both")
    rate = data.get("rate_hz")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                             or not 0 < rate < float("inf")):
        raise EpisodeFormatError(f"{path}: rate_hz must be a positive number, got {rate!r}")
    file = data.get("instruction_file")
    return BagOptions(source=path, cameras=tuple(cameras) if cameras else None,
                      instruction_topic=data.get("instruction_topic"),
                      instruction_file=path.parent / file if file else None,
                      state_topic=data.get("state_topic"), action_topic=data.get("action_topic"),
                      rate_hz=float(rate) if rate is not None else None)


@contextmanager
def _open(bag: Path) -> Iterator[Any]:
    """An open `rosbags` AnyReader on `bag`; its errors become EpisodeFormatError."""
    try:
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.typesys import Stores, get_typestore
    except ImportError as e:
        raise ImportError(f"{bag}: reading ROS bags needs the rosbags package: "
                          "pip install rosbags (it is in the `sim` extra)") from e
    try:
        # The store is used only for rosbag2 files without message definitions (recorded
        # before ROS 2 Iron, e.g. Humble's SQLite); bags with definitions decode with theirs.
        with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
            yield reader
    except AnyReaderError as e:
        raise EpisodeFormatError(f"{bag}: unreadable ROS bag ({e})") from e


def _topics(reader: Any) -> dict[str, tuple[str | None, int]]:
    """Topic name -> (message type, message count)."""
    return {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}


def _check_topic(where: Path | str, option: str, topic: str, topics: dict,
                 types: tuple[str, ...]) -> None:
    if topic not in topics:
        raise EpisodeFormatError(f"{where}: {option} {topic!r} is not in the bag; topics: "
                                 f"{sorted(topics)}")
    if topics[topic][0] not in types:
        raise EpisodeFormatError(f"{where}: {option} {topic!r} is {topics[topic][0]}; "
                                 f"expected one of {list(types)}")


def camera_topics(topics: dict, options: BagOptions) -> list[str]:
    """The image topics in camera order: the `cameras` option, else every one by name."""
    if options.cameras is None:
        return sorted(t for t, (msgtype, _) in topics.items() if msgtype in (IMAGE, COMPRESSED))
    for topic in options.cameras:
        _check_topic(options.source, "camera", topic, topics, (IMAGE, COMPRESSED))
    return list(options.cameras)


def _pick_camera(cameras: list[str], camera: int | str, bag: Path) -> str | None:
    if isinstance(camera, int):
        return cameras[camera] if 0 <= camera < len(cameras) else None
    if camera in cameras:
        return camera
    matches = [t for t in cameras if camera in t]
    if len(matches) > 1:
        raise ValueError(f"camera {camera!r} matches several topics {matches} in {bag}")
    return matches[0] if matches else None


def camera_topic(bag: str | os.PathLike, camera: int | str) -> str | None:
    """The topic of `camera` (a number, a topic name or a part of one naming a single topic);
    None when the bag has no such camera."""
    bag = Path(bag)
    options = read_options(bag)
    with _open(bag) as reader:
        return _pick_camera(camera_topics(_topics(reader), options), camera, bag)


def _instruction_source(bag: Path, topics: dict, options: BagOptions) -> tuple[str | None,
                                                                              Path | None]:
    """(String topic, text file) the instruction comes from; at most one is set."""
    if options.instruction_topic:
        _check_topic(options.source, "instruction_topic", options.instruction_topic, topics,
                     (STRING,))
        return options.instruction_topic, None
    if options.instruction_file:
        if not options.instruction_file.is_file():
            raise EpisodeFormatError(f"{options.source}: instruction_file "
                                     f"{str(options.instruction_file)!r} does not exist")
        return None, options.instruction_file
    if sidecar(bag, INSTRUCTION_NAME).is_file():
        return None, sidecar(bag, INSTRUCTION_NAME)
    strings = sorted(t for t, (msgtype, _) in topics.items() if msgtype == STRING)
    if len(strings) > 1:
        named = [t for t in strings if any(w in t.lower() for w in INSTRUCTION_WORDS)]
        if len(named) != 1:
            raise EpisodeFormatError(
                f"{bag}: several String topics {strings} and not one whose name holds "
                f"{list(INSTRUCTION_WORDS)}; name it as instruction_topic in "
                f"{sidecar(bag, OPTIONS_NAME)}")
        strings = named
    return (strings[0] if strings else None), None


def _vector_source(bag: Path, topics: dict, options: BagOptions, option: str) -> str | None:
    """The state or action topic: named in the options, or the only one that fits."""
    named = getattr(options, option)
    if named:
        _check_topic(options.source, option, named, topics, VECTOR_TYPES)
        return named
    is_action = option == "action_topic"
    fits = sorted(t for t, (msgtype, count) in topics.items() if count
                  and msgtype in (VECTOR_TYPES if is_action else (JOINT_STATE,))
                  and any(w in t.lower() for w in ACTION_WORDS) == is_action)
    if len(fits) > 1:
        log.info("%s: several candidate %ss %s, none used; name one in %s", bag, option, fits,
                 sidecar(bag, OPTIONS_NAME))
    return fits[0] if len(fits) == 1 else None


def _messages(reader: Any, topics: list[str]) -> dict[str, list[tuple[int, Any]]]:
    """(receive time ns, decoded message) of each topic, in the bag's order."""
    connections = [c for t in topics for c in reader.topics[t].connections]
    out: dict[str, list[tuple[int, Any]]] = {t: [] for t in topics}
    for connection, received, raw in reader.messages(connections=connections):
        out[connection.topic].append((received, reader.deserialize(raw, connection.msgtype)))
    return out


def _times(messages: list[tuple[int, Any]]) -> tuple[np.ndarray, str]:
    """Each message's time in ns and where it came from ("header" or "receive")."""
    stamps = [msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
              if hasattr(msg, "header") else 0 for _, msg in messages]
    if all(stamps):
        return np.asarray(stamps, np.int64), "header"
    return np.asarray([received for received, _ in messages], np.int64), "receive"


def resample(times: np.ndarray, rate_hz: float | None) -> np.ndarray:
    """Indices into sorted frame `times` (ns) kept at `rate_hz`: the last frame at or before each
    tick from the first frame to the last; every frame when `rate_hz` is None."""
    if rate_hz is None:
        return np.arange(len(times))
    span = int(times[-1] - times[0])
    ticks = np.round(np.arange(int(span * rate_hz / 1e9) + 2) * (1e9 / rate_hz)).astype(np.int64)
    ticks = times[0] + ticks[ticks <= span]
    return np.searchsorted(times, ticks, side="right") - 1


def _image(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """One camera message as (H, W, 3) uint8 RGB."""
    if msgtype == COMPRESSED:
        image = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise EpisodeFormatError(f"{where}: format {msg.format!r} does not decode as a JPEG "
                                     "or PNG image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    channels = _CHANNELS.get(msg.encoding)
    if channels is None:
        raise EpisodeFormatError(f"{where}: image encoding {msg.encoding!r} is not read; "
                                 f"supported: {list(_CHANNELS)}")
    row = msg.width * channels
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise EpisodeFormatError(f"{where}: {len(msg.data)} bytes with step {msg.step} do not "
                                 f"hold {msg.height}x{msg.width} {msg.encoding}")
    pixels = (np.asarray(msg.data, np.uint8)[:msg.step * msg.height]
              .reshape(msg.height, msg.step)[:, :row].reshape(msg.height, msg.width, channels))
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., 2::-1] if msg.encoding.startswith("bgr")
                                else pixels[..., :3])


def _vector(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == JOINT_STATE:
        return np.asarray(msg.position, np.float64)
    if msgtype.startswith("geometry_msgs/msg/Twist"):
        twist = msg.twist if msgtype.endswith("Stamped") else msg
        return np.array([twist.linear.x, twist.linear.y, twist.linear.z,
                         twist.angular.x, twist.angular.y, twist.angular.z], np.float64)
    return np.asarray(msg.data, np.float64)


def _sampled(bag: Path, topic: str, msgtype: str, messages: list[tuple[int, Any]],
             at: np.ndarray) -> np.ndarray:
    """The topic's vectors at times `at` (ns): the last message at or before each, the first
    one before it starts."""
    if not messages:
        raise EpisodeFormatError(f"{bag}: topic {topic!r} has no messages")
    times, _ = _times(messages)
    order = np.argsort(times, kind="stable")
    vectors = [_vector(messages[i][1], msgtype) for i in order]
    widths = sorted({len(v) for v in vectors})
    if len(widths) != 1 or widths[0] == 0:
        raise EpisodeFormatError(f"{bag}: topic {topic!r} ({msgtype}) holds vectors of length "
                                 f"{widths}; one non-zero length is needed")
    index = np.searchsorted(times[order], at, side="right") - 1
    return np.stack(vectors)[np.maximum(index, 0)]


def _text_line(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EpisodeFormatError(f"{path}: not UTF-8 text ({e})") from e
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


def read_episode(bag: str | os.PathLike, camera: int | str = 0) -> Episode:
    """The episode recorded in `bag` (a `*.bag` file or a rosbag2 folder), frames of `camera`."""
    bag = Path(bag)
    options = read_options(bag)
    with _open(bag) as reader:
        topics = _topics(reader)
        cameras = camera_topics(topics, options)
        if not cameras:
            raise EpisodeFormatError(f"{bag}: no image topics ({IMAGE} or {COMPRESSED}); "
                                     f"topics: {sorted(topics)}")
        topic = _pick_camera(cameras, camera, bag)
        if topic is None:
            raise EpisodeFormatError(f"{bag}: no camera {camera!r}; image topics: {cameras}")
        if not topics[topic][1]:
            raise EpisodeFormatError(f"{bag}: camera topic {topic!r} has no messages")
        instruction_topic, instruction_file = _instruction_source(bag, topics, options)
        state = _vector_source(bag, topics, options, "state_topic")
        action = _vector_source(bag, topics, options, "action_topic")
        wanted = [t for t in dict.fromkeys((topic, instruction_topic, state, action)) if t]
        messages = _messages(reader, wanted)
    frames_in = messages[topic]
    times, clock = _times(frames_in)
    order = np.argsort(times, kind="stable")
    keep = order[resample(times[order], options.rate_hz)]
    frames = []
    for i in keep:
        image = _image(frames_in[i][1], topics[topic][0], f"{bag}: {topic} message {i}")
        if frames and image.shape != frames[0].shape:
            raise EpisodeFormatError(f"{bag}: {topic} message {i} is {image.shape[:2]}, the first "
                                     f"frame {frames[0].shape[:2]}; a camera has one size")
        frames.append(image)
    if instruction_file is not None:
        instruction = _text_line(instruction_file)
    else:
        texts = (msg.data.strip() for _, msg in messages.get(instruction_topic, []))
        instruction = next((t for t in texts if t), None)
    at = times[keep]

    def vectors(name: str | None) -> np.ndarray | None:
        return None if name is None else _sampled(bag, name, topics[name][0], messages[name], at)

    return Episode(frames=np.stack(frames), instruction=instruction, states=vectors(state),
                   actions=vectors(action),
                   meta={"source": "rosbag", "path": str(bag), "camera": topic,
                         "camera_type": topics[topic][0], "clock": clock,
                         "rate_hz": options.rate_hz, "frames_recorded": len(frames_in),
                         "start_ns": int(at[0]), "frame_times_s": ((at - at[0]) / 1e9).tolist(),
                         "instruction_topic": instruction_topic,
                         "instruction_file": str(instruction_file) if instruction_file else None,
                         "state_topic": state, "action_topic": action,
                         "options": str(options.source) if options.source else None})
