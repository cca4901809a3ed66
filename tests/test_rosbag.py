"""ROS bags as episodes: ROS 1 bags and rosbag2 recordings (MCAP and SQLite), written here with
rosbags' writers, read back frame-exact, aligned on their stamps and resampled, found in mixed
trees, replayed through a node and trained on."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from foresight_client.client import ForesightClient
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore
from test_bridge_raw import write_trajectory
from test_replay import TIMEOUT_S, Echo, Node, check_outputs
from test_trainer import job, svd_folder  # noqa: F401 (svd_folder is a fixture)

from sim_bridge.apps.replay import ReplayConfig, run_replay
from sim_bridge.data.episode_io import EpisodeFormatError, write_episode
from sim_bridge.data.readers import find_episodes, read_episodes
from sim_bridge.simulator.tabletop import make_episode

ROOT = Path(__file__).resolve().parents[1]
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
STRING, JOINTS = "std_msgs/msg/String", "sensor_msgs/msg/JointState"
FLOATS, TWIST = "std_msgs/msg/Float32MultiArray", "geometry_msgs/msg/Twist"
FRONT, WRIST = "/cam_front/image_raw", "/cam_wrist/image_raw/compressed"
STORES = {"ros1": Stores.ROS1_NOETIC, "mcap": Stores.ROS2_HUMBLE, "sqlite3": Stores.ROS2_HUMBLE}
INSTRUCTION = "put the cup on the plate"

MS = 1_000_000
START = 1_700_000_000 * 1_000_000_000
JITTER_MS = np.array([0, 13, -9, 4, -14, 8, 0, -5, 11, -3, 6, -12])
STAMPS = START + np.arange(12) * 100 * MS + JITTER_MS * MS  # a 10 Hz camera's header stamps
RECEIVED = STAMPS + 5 * MS
RECEIVED[5] += 145 * MS  # frame 5 reaches the bag after frame 6
JOINT_STAMPS = START - 30 * MS + np.arange(30) * 50 * MS  # 20 Hz, from before the first frame
ACTION_RECEIVED = START + 20 * MS + np.arange(12) * 100 * MS  # no header: receive times


def front(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4 + 20 * i) % 256, (y * 5 + 7 * i) % 256, np.full_like(x, 21 * i)],
                    -1).astype(np.uint8)


def wrist(i: int) -> np.ndarray:
    return front(i)[::-1, ::-1].copy()


def last_at_or_before(times: np.ndarray, t: int) -> int:
    return max([k for k, s in enumerate(times) if s <= t], default=0)


# ---------------------------------------------------------------------------------------------
# Writing bags: (topic, type, receive ns, build(typestore) -> message or None for no message)

def write_bag(path: Path, kind: str, messages: list) -> Path:
    store = get_typestore(STORES[kind])
    if kind == "ros1":
        writer, serialize = Writer1(path), store.serialize_ros1
    else:
        plugin = StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3
        writer, serialize = Writer2(path, version=9, storage_plugin=plugin), store.serialize_cdr
    path.parent.mkdir(parents=True, exist_ok=True)
    connections = {}
    with writer:
        for topic, msgtype, received, build in sorted(messages, key=lambda m: m[2]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            if build is not None:
                writer.write(connections[topic], received, serialize(build(store), msgtype))
    return path


def header(store, ns: int):
    cls = store.types["std_msgs/msg/Header"]
    stamp = store.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
    seq = {"seq": 0} if "seq" in cls.__dataclass_fields__ else {}  # ROS 1 headers count
    return cls(stamp=stamp, frame_id="camera", **seq)


def raw_image(frame: np.ndarray, stamp: int, encoding: str = "rgb8", pad: int = 0):
    alpha = np.full(frame.shape[:2] + (1,), 200, np.uint8)
    pixels = {"bgr8": frame[..., ::-1], "rgba8": np.concatenate([frame, alpha], -1),
              "bgra8": np.concatenate([frame[..., ::-1], alpha], -1),
              "mono8": frame[..., :1]}.get(encoding, frame)
    rows = np.pad(pixels.reshape(frame.shape[0], -1), ((0, 0), (0, pad)), constant_values=255)
    return lambda store: store.types[IMAGE](
        header=header(store, stamp), height=frame.shape[0], width=frame.shape[1],
        encoding=encoding, is_bigendian=0, step=rows.shape[1], data=rows.ravel())


def compressed(frame: np.ndarray, stamp: int, ext: str = ".png", data: bytes | None = None):
    if data is None:
        data = cv2.imencode(ext, frame[..., ::-1])[1].tobytes()
    return lambda store: store.types[COMPRESSED](header=header(store, stamp), format=ext[1:],
                                                 data=np.frombuffer(data, np.uint8))


def joint_state(position: list[float], stamp: int):
    return lambda store: store.types[JOINTS](
        header=header(store, stamp), name=[f"j{i}" for i in range(len(position))],
        position=np.asarray(position, np.float64), velocity=np.zeros(0), effort=np.zeros(0))


def floats(values: list[float]):
    return lambda store: store.types[FLOATS](
        layout=store.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
        data=np.asarray(values, np.float32))


def twist(values: list[float]):
    def build(store):
        vector = store.types["geometry_msgs/msg/Vector3"]
        return store.types[TWIST](linear=vector(*values[:3]), angular=vector(*values[3:]))
    return build


def string(text: str):
    return lambda store: store.types[STRING](data=text)


def take(frames: int = 12, instruction: str | None = INSTRUCTION, zero_stamps: bool = False,
         h: int = 48) -> list:
    """A raw front camera (rows padded), a PNG wrist camera, the instruction, joint states at
    20 Hz and actions at 10 Hz."""
    w = h * 4 // 3
    messages = [(FRONT, IMAGE, int(RECEIVED[i]),
                 raw_image(front(i, h, w), 0 if zero_stamps else int(STAMPS[i]), pad=4))
                for i in range(frames)]
    messages += [(WRIST, COMPRESSED, int(RECEIVED[i]) + MS,
                  compressed(front(i, h, w)[::-1, ::-1], int(STAMPS[i]) + 2 * MS))
                 for i in range(frames)]
    messages += [("/joint_states", JOINTS, int(s) + MS, joint_state([k, -k], int(s)))
                 for k, s in enumerate(JOINT_STAMPS)]
    messages += [("/action", FLOATS, int(r), floats([k, k / 4, -k]))
                 for k, r in enumerate(ACTION_RECEIVED)]
    if instruction is not None:
        messages.append(("/task/instruction", STRING, START - 500 * MS, string(instruction)))
    return messages


def bag_path(folder: Path, kind: str, name: str = "take") -> Path:
    return folder / (f"{name}.bag" if kind == "ros1" else f"{name}_{kind}")


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ros1", "mcap", "sqlite3"])
def test_cameras_instruction_states_and_actions(tmp_path, kind):
    bag = write_bag(bag_path(tmp_path, kind), kind, take())
    (source,) = find_episodes(bag)
    assert (source.id, source.kind) == (bag.name, "rosbag")
    episode = source.load()
    # raw Image round-trips bit-exact (padded rows cut), in header-stamp order (frame 5 came late)
    assert np.array_equal(episode.frames, np.stack([front(i) for i in range(12)]))
    assert episode.instruction == INSTRUCTION
    assert episode.meta["clock"] == "header" and episode.meta["camera"] == FRONT
    assert np.allclose(episode.meta["frame_times_s"], (STAMPS - STAMPS[0]) / 1e9)
    joints = [last_at_or_before(JOINT_STAMPS, s) for s in STAMPS]
    assert episode.states.tolist() == [[k, -k] for k in joints]
    assert [a[0] for a in episode.actions] == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # 0: before any
    assert episode.meta["state_topic"] == "/joint_states" and episode.meta["action_topic"] == "/action"
    assert episode.meta["instruction_topic"] == "/task/instruction" and episode.meta["options"] is None
    for camera in (1, "wrist", WRIST):  # by number (topics sorted by name), part, full name
        assert np.array_equal(source.load(camera).frames, np.stack([wrist(i) for i in range(12)]))
    assert np.array_equal(source.load(FRONT).frames, episode.frames)
    assert not source.has_camera(2) and not source.has_camera("thermal")
    with pytest.raises(EpisodeFormatError, match=r"no camera 2; image topics: \['/cam_front"):
        source.load(2)
    with pytest.raises(ValueError, match="matches several topics"):
        source.has_camera("cam_")


def test_resampling_keeps_the_last_frame_at_or_before_each_tick(tmp_path):
    bag = write_bag(tmp_path / "take.bag", "ros1", take())
    for rate, count in ((4, 5), (25, 28)):  # 1.088 s of frames: ticks every 250 ms / 40 ms
        (tmp_path / "take.foresight.json").write_text(json.dumps({"rate_hz": rate}))
        episode = find_episodes(bag)[0].load()
        ticks = [STAMPS[0] + round(k * 1e9 / rate) for k in range(count)]
        assert ticks[-1] <= STAMPS[-1] < ticks[-1] + 1e9 / rate
        kept = [max(i for i in range(12) if STAMPS[i] <= tick) for tick in ticks]
        assert np.array_equal(episode.frames, np.stack([front(i) for i in kept]))
        assert np.allclose(episode.meta["frame_times_s"], (STAMPS[kept] - STAMPS[0]) / 1e9)
        assert episode.states[:, 0].tolist() == [last_at_or_before(JOINT_STAMPS, STAMPS[i])
                                                 for i in kept]
        assert episode.meta["rate_hz"] == rate and episode.meta["frames_recorded"] == 12
    assert sorted(set(kept)) == list(range(11))  # faster: frames repeat; 11 is past the last tick
    (tmp_path / "take.foresight.json").write_text(json.dumps({"rate_hz": 4}))
    assert [int(f[0, 0, 2]) // 21 for f in find_episodes(bag)[0].load().frames] == [0, 2, 4, 7, 9]


def test_receive_times_when_header_stamps_are_zero(tmp_path):
    episode = find_episodes(write_bag(tmp_path / "take.bag", "ros1", take(zero_stamps=True)))[0].load()
    order = [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11]  # the order the bag received them
    assert episode.meta["clock"] == "receive"
    assert np.array_equal(episode.frames, np.stack([front(i) for i in order]))
    assert np.allclose(episode.meta["frame_times_s"], (RECEIVED[order] - RECEIVED[0]) / 1e9)


def test_encodings_and_compressed_images(tmp_path):
    smooth = cv2.GaussianBlur(front(3), (9, 9), 3)
    messages = [(f"/enc/{e}", IMAGE, START + k * MS, raw_image(front(k), START + k * MS, e))
                for e in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1") for k in (1, 2)]
    messages += [("/enc/jpeg", COMPRESSED, START, compressed(smooth, START, ".jpg")),
                 ("/enc/broken", COMPRESSED, START, compressed(smooth, START, ".jpg", b"junk"))]
    (source,) = find_episodes(write_bag(tmp_path / "enc.bag", "ros1", messages))
    expected = np.stack([front(1), front(2)])
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        assert np.array_equal(source.load(f"/enc/{encoding}").frames, expected), encoding
    assert np.array_equal(source.load("mono8").frames, np.repeat(expected[..., :1], 3, -1))
    jpeg = source.load("jpeg").frames[0].astype(int)
    assert jpeg.shape == smooth.shape and np.abs(jpeg - smooth).mean() < 3
    with pytest.raises(EpisodeFormatError, match=r"image encoding '16UC1' is not read; supported"):
        source.load("16UC1")
    with pytest.raises(EpisodeFormatError, match=r"/enc/broken message 0: format 'jpg' does not"):
        source.load("broken")
    with pytest.raises(ValueError, match="matches several topics"):
        source.load("gb")  # rgb8, rgba8


def rig(tmp_path: Path) -> Path:
    """Two String topics, two JointState topics, a Twist command topic: defaults cannot pick
    the instruction or the state."""
    messages = take(instruction=None)
    messages += [("/notes", STRING, START, string("battery low")),
                 ("/operator_text", STRING, START, string("stack the blocks")),
                 ("/gripper/joint_states", JOINTS, START, joint_state([0.5], START)),
                 ("/cmd_vel", TWIST, START - MS, twist([1, 2, 3, 4, 5, 6]))]
    return write_bag(tmp_path / "rig.bag", "ros1", [m for m in messages if m[0] != "/action"])


def test_sidecar_options(tmp_path, caplog):
    source = find_episodes(rig(tmp_path))[0]
    with pytest.raises(EpisodeFormatError, match=r"several String topics \['/notes', "
                                                 r"'/operator_text'\].*rig\.foresight\.json"):
        source.load()
    (tmp_path / "rig.instruction.txt").write_text("\n  stack the red blocks \nsecond line\n")
    with caplog.at_level(logging.INFO):
        episode = source.load()
    assert episode.instruction == "stack the red blocks"
    assert episode.states is None and "several candidate state_topics" in caplog.text
    assert episode.actions.tolist() == [[1, 2, 3, 4, 5, 6]] * 12  # the only command topic
    options = {"cameras": [WRIST, FRONT], "instruction_topic": "/operator_text",
               "state_topic": "/gripper/joint_states", "action_topic": "/cmd_vel", "rate_hz": 5}
    (tmp_path / "rig.foresight.json").write_text(json.dumps(options))
    episode = source.load()
    assert episode.instruction == "stack the blocks"  # a named topic beats the default file
    assert np.array_equal(episode.frames[1], wrist(2)) and len(episode.frames) == 6
    assert np.array_equal(source.load(1).frames[1], front(2)) and not source.has_camera(2)
    assert episode.states.tolist() == [[0.5]] * 6
    assert episode.meta["options"] == str(tmp_path / "rig.foresight.json")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "rig.txt").write_text("wipe the table\n")
    (tmp_path / "rig.foresight.json").write_text(json.dumps({"instruction_file": "labels/rig.txt"}))
    assert source.load().instruction == "wipe the table"
    for bad, message in (
            ({"rate": 5}, r"unknown option\(s\) \['rate'\]; known: \['action_topic'"),
            ({"rate_hz": -1}, r"rate_hz must be a positive number, got -1"),
            ({"rate_hz": True}, r"rate_hz must be a positive number, got True"),
            ({"cameras": FRONT}, r"cameras must be a list of topic names, got '/cam_front"),
            ({"cameras": ["/cam_top"]}, r"camera '/cam_top' is not in the bag; topics: \["),
            ({"state_topic": "/joints"}, r"state_topic '/joints' is not in the bag; topics: "
                                         r"\['/cam_front/image_raw', .*'/operator_text'\]"),
            ({"action_topic": "/notes"}, r"action_topic '/notes' is std_msgs/msg/String; "
                                         r"expected one of \['sensor_msgs/msg/JointState'"),
            ({"instruction_topic": "/cmd_vel"}, r"instruction_topic '/cmd_vel' is geometry"),
            ({"instruction_file": "missing.txt"}, r"instruction_file '.*missing\.txt' does not"),
            ({"instruction_file": "a", "instruction_topic": "/notes"}, r"not both"),
            ([5], r"must hold a JSON object, got \[5\]")):
        (tmp_path / "rig.foresight.json").write_text(json.dumps(bad))
        with pytest.raises(EpisodeFormatError, match=message):
            source.load()
    (tmp_path / "rig.foresight.json").write_text("{rate_hz: 5")
    with pytest.raises(EpisodeFormatError, match=r"rig\.foresight\.json: unreadable"):
        source.has_camera(0)


def test_instruction_file_inside_a_rosbag2_folder(tmp_path):
    bag = write_bag(tmp_path / "take", "mcap", take(instruction=None))
    assert find_episodes(bag)[0].load().instruction is None  # no instruction anywhere
    (bag / "instruction.txt").write_text("open the drawer\n")
    (bag / "foresight.json").write_text(json.dumps({"cameras": [WRIST]}))
    episode = find_episodes(bag)[0].load()
    assert episode.instruction == "open the drawer" and episode.meta["camera"] == WRIST


def test_bad_bags_are_reported(tmp_path, caplog):
    text_only = write_bag(tmp_path / "tree" / "a_text.bag", "ros1",
                          [("/task", STRING, START, string("pick"))])
    empty = write_bag(tmp_path / "empty.bag", "ros1",
                      [(FRONT, IMAGE, START, None), ("/task", STRING, START, string("pick"))])
    resized = take(frames=3) + [(FRONT, IMAGE, int(STAMPS[3]), raw_image(front(3, 24, 32),
                                                                          int(STAMPS[3])))]
    resized = write_bag(tmp_path / "resized.bag", "ros1", resized)
    (tmp_path / "junk.bag").write_bytes(b"#ROSBAG V2.0\nnot a bag at all")
    source = find_episodes(text_only)[0]
    assert not source.has_camera(0)
    with pytest.raises(EpisodeFormatError, match=r"no image topics .*; topics: \['/task'\]"):
        source.load()
    write_bag(tmp_path / "tree" / "b_take.bag", "ros1", take(frames=2))
    with caplog.at_level(logging.WARNING):  # in a tree, a bag without the camera is skipped
        assert [i for i, _ in read_episodes(tmp_path / "tree")] == ["b_take.bag"]
    assert "a_text.bag: no camera 0, skipped" in caplog.text
    with pytest.raises(EpisodeFormatError, match=r"camera topic '/cam_front/image_raw' has no"):
        find_episodes(empty)[0].load()
    with pytest.raises(EpisodeFormatError, match=r"message 3 is \(24, 32\), the first frame "
                                                 r"\(48, 64\)"):
        find_episodes(resized)[0].load()
    with pytest.raises(EpisodeFormatError, match=r"junk\.bag: unreadable ROS bag"):
        find_episodes(tmp_path / "junk.bag")[0].load()


def test_found_in_a_mixed_tree_without_rosbags_until_read(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_bag(root / "ros" / "a.bag", "ros1", take(frames=2))
    write_bag(root / "ros" / "b_mcap", "mcap", take(frames=2))
    write_bag(root / "ros" / "c_sqlite", "sqlite3", take(frames=2))
    write_episode(make_episode(2_000_000, size=32, num_frames=2), root / "ros" / "b_mcap" / "e1")
    (root / "ros" / ".d.bag").write_bytes(b"unfinished")
    (root / "ros" / "e.bag.active").write_bytes(b"recording")
    write_episode(make_episode(2_000_000, size=32, num_frames=2), root / "sim" / "e0")
    write_trajectory(root / "bridge" / "raw" / "traj_group0" / "traj0", frames=2)
    ids = ["bridge/raw/traj_group0/traj0", "ros/a.bag", "ros/b_mcap", "ros/c_sqlite", "sim/e0"]
    assert [s.id for s in find_episodes(root)] == ids  # nothing inside a rosbag2 folder
    assert [s.id for s in find_episodes(root / "ros" / "b_mcap")] == ["b_mcap"]
    assert [i for i, e in read_episodes(root) if e.instruction == INSTRUCTION] == ids[1:4]
    code = ("import sys; from sim_bridge.data.readers import find_episodes; "
            f"find_episodes({str(root)!r}); print('rosbags' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           check=True)
    assert found.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)
    with pytest.raises(ImportError, match=r"pip install rosbags"):
        find_episodes(root)[1].load()


def test_bags_replay_through_a_node(tmp_path):
    root = tmp_path / "episodes"
    write_bag(root / "ros1" / "take.bag", "ros1", take(frames=8))
    write_bag(root / "ros2" / "take", "mcap", take(frames=8))
    write_episode(make_episode(2_000_000, size=64, num_frames=8), root / "sim" / "e0")
    node = Echo()
    with Node(node) as endpoint, ForesightClient(endpoint, TIMEOUT_S, 0) as client:
        summary = run_replay(client, read_episodes(root), tmp_path / "out", ReplayConfig(steps=2))
    check_outputs(tmp_path / "out", episodes=3, steps=3)
    assert [e["episode"] for e in summary["episodes"]] == ["ros1/take.bag", "ros2/take", "sim/e0"]
    assert node.calls == 3 and all(0 < e["psnr"] < 100 for e in summary["episodes"])


def test_training_on_a_folder_of_bags(tmp_path, svd_folder, run_job):  # noqa: F811 (the fixture)
    tree = tmp_path / "bags"
    write_bag(tree / "a.bag", "ros1", take(frames=10, h=96))
    write_bag(tree / "b", "mcap", take(frames=10, h=96, instruction="push the cup left"))
    out = run_job(job(tmp_path, svd_folder, "bags", data={"source": str(tree)},
                      optim={"steps": 2, "batch": 1}))
    logged = json.loads((tmp_path / "bags" / "stats.json").read_text())
    assert logged["steps"] == 2 and np.isfinite(logged["final_loss"])
    assert (out / "aid.safetensors").is_file()
