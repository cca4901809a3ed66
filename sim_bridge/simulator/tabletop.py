"""Bridge-style tabletop simulator: a table, coloured objects and a two-finger gripper.

A `Scene` is size-independent state in normalised table coordinates (x right, y down, both in
[0, 1] of the image; z is height above the table, drawn as an upward shift). `render` draws it
from a fixed third-person camera at any square size; `run_task` scripts the gripper through a
`Task` (approach, act, leave, as in Bridge clips) and returns an `Episode` with ground-truth object
positions. The final scene of a task is `apply_task(scene, task)` (also stored as
`episode.meta["final_scene"]`), so a planner can chain tasks without rendering.

Everything is deterministic: the same seed gives byte-identical frames.

Pixel convention: the centre of pixel column j is x = j (so normalised x maps to x * size - 0.5),
the same convention as the centroid `scoring.locate_object` returns.

CLI: python -m sim_bridge.simulator.tabletop --n N --seed S --out DIR [--size 128] [--frames 16]
     [--format foresight|lerobot]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sim_bridge.common.logs import setup_logging
from sim_bridge.data.episode import Episode
from sim_bridge.simulator.instructions import instruction_for
from sim_bridge.simulator.tasks import TASK_KINDS

log = logging.getLogger("sim_bridge.simulator.tabletop")  # the same name when run with -m

# Saturated colours with hues at least 40 degrees apart (0, 50, 129, 185, 227, 276), none near the
# wood table (hue 25-40, saturation below 0.4) or the grey gripper, so colour alone finds them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "yellow": (240, 205, 20),
    "green": (40, 170, 60),
    "cyan": (20, 185, 200),
    "blue": (35, 75, 215),
    "purple": (140, 50, 200),
}
SHAPES = ("block", "disc", "triangle")
PUSH_DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "forward": (0.0, -1.0),
                   "backward": (0.0, 1.0)}

# Geometry, in normalised image units.
TABLE_X = (0.12, 0.88)      # where object centres may rest
TABLE_Y = (0.42, 0.88)      # above 0.42 is the gripper's rest zone
FORESHORTEN = 0.8           # the camera looks down at the table at an angle
EXTRUDE = 0.22              # object height as a fraction of its width
LIFT = 0.13                 # how high a picked object is carried
LIFT_SCALE = 0.8            # lifted objects are closer to the camera: drawn larger by 1 + 0.8 z
PUSH_DISTANCE = 0.2
ROTATE_DEGREES = 45.0
NEXT_TO_GAP = 0.05
FINGER_LEN, FINGER_W = 0.12, 0.035
OPEN, CLOSED = 0.26, 0.07   # finger spacing
REST = (0.5, 0.32, 0.08)    # gripper rest pose (x, y, z): tips drawn at y = 0.24
SUPERSAMPLE = 4             # draw 4x larger, then area-downsample: anti-aliasing at 64 px


@dataclass(frozen=True)
class TableLook:
    """Per-episode appearance of the table, wall and lighting."""

    wood_rgb: tuple[float, float, float]
    wall_rgb: tuple[float, float, float]
    edge_y: float
    grain_seed: int
    grain_freq: float
    plank_h: float
    brightness: float
    light_angle: float
    light_strength: float
    tint: tuple[float, float, float]

    @staticmethod
    def random(rng: np.random.Generator) -> TableLook:
        hsv = np.array([[[rng.uniform(12, 20), rng.uniform(0.2, 0.34) * 255,
                          rng.uniform(0.55, 0.8) * 255]]], np.float32)  # OpenCV hue is 0-180
        wood = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
        wall = rng.uniform(175, 215) + rng.uniform(-8, 8, 3)
        return TableLook(
            wood_rgb=tuple(float(c) for c in wood), wall_rgb=tuple(float(c) for c in wall),
            edge_y=float(rng.uniform(0.11, 0.16)), grain_seed=int(rng.integers(2**31)),
            grain_freq=float(rng.uniform(25, 45)), plank_h=float(rng.uniform(0.16, 0.26)),
            brightness=float(rng.uniform(0.82, 1.1)),
            light_angle=float(rng.uniform(0, 2 * math.pi)),
            light_strength=float(rng.uniform(0.05, 0.22)),
            tint=tuple(float(t) for t in rng.uniform(0.96, 1.04, 3)))


@dataclass(frozen=True)
class SceneObject:
    """One object; (x, y) is where it stands on the table, z its height above it."""

    color: str
    shape: str
    size: float
    x: float
    y: float
    z: float = 0.0
    angle: float = 0.0          # degrees, clockwise on screen
    on: str | None = None       # the object it is stacked on

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PALETTE[self.color]


@dataclass(frozen=True)
class Gripper:
    """Pose of the fingertip midpoint; twist turns the wrist (degrees)."""

    x: float
    y: float
    z: float
    opening: float = CLOSED
    twist: float = 0.0


@dataclass(frozen=True)
class Task:
    """One scripted task. direction: push direction, rotation sense or put_next_to side;
    amount: push distance (normalised) or rotation (degrees)."""

    kind: str
    target: str
    direction: str | None = None
    ref: str | None = None
    amount: float = 0.0

    @property
    def instruction(self) -> str:
        """The canonical training-template sentence."""
        return instruction_for(self)


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one frame and to plan the next task."""

    objects: tuple[SceneObject, ...]
    look: TableLook
    gripper: Gripper = Gripper(*REST)
    held: str | None = None

    @staticmethod
    def random(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
        """2-4 objects of distinct colours at non-overlapping places; the gripper at rest."""
        n = int(rng.integers(2, 5)) if n_objects is None else n_objects
        if not 1 <= n <= 4:  # more would not fit apart on the table
            raise ValueError(f"n_objects must be in 1..4, got {n_objects!r}")
        look = TableLook.random(rng)
        colors = rng.choice(list(PALETTE), size=n, replace=False)
        while True:
            objects: list[SceneObject] = []
            for color in colors:
                shape = str(rng.choice(SHAPES))
                obj = SceneObject(str(color), shape, size=float(rng.uniform(0.15, 0.19)),
                                  x=float(rng.uniform(*TABLE_X)), y=float(rng.uniform(*TABLE_Y)),
                                  angle=0.0 if shape == "disc" else float(rng.uniform(-20, 20)))
                if any(not _apart(obj, o, obj.x, obj.y) for o in objects):
                    break
                objects.append(obj)
            if len(objects) == n:
                return Scene(tuple(objects), look)

    def object(self, name: str) -> SceneObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"no object {name!r} in scene (has {[o.name for o in self.objects]})")

    def candidate_tasks(self) -> list[Task]:
        """All tasks feasible from this state, in a fixed order."""
        tasks = []
        for obj in self.objects:
            for other in self.objects:
                if other is not obj:
                    tasks.append(Task("put_on", obj.name, ref=other.name))
                    tasks += [Task("put_next_to", obj.name, side, other.name)
                              for side in ("left", "right")]
            tasks += [Task("push", obj.name, d, amount=PUSH_DISTANCE) for d in PUSH_DIRECTIONS]
            tasks.append(Task("pick_up", obj.name))
            tasks += [Task("rotate", obj.name, sense, amount=ROTATE_DEGREES)
                      for sense in ("clockwise", "counterclockwise")]
        return [t for t in tasks if _infeasible(self, t) is None]

    def to_dict(self) -> dict:
        """JSON-ready form (lists, not tuples), for episode meta."""
        def plain(value):
            return list(value) if isinstance(value, tuple) else value
        return {"objects": [{k: plain(v) for k, v in dataclasses.asdict(o).items()}
                            for o in self.objects],
                "look": {k: plain(v) for k, v in dataclasses.asdict(self.look).items()},
                "gripper": dataclasses.asdict(self.gripper), "held": self.held}

    @staticmethod
    def from_dict(d: dict) -> Scene:
        look = {k: tuple(v) if isinstance(v, list) else v for k, v in d["look"].items()}
        return Scene(tuple(SceneObject(**o) for o in d["objects"]), TableLook(**look),
                     Gripper(**d["gripper"]), d["held"])


# ---------------------------------------------------------------------------------------------
# Feasibility

def _radius(obj: SceneObject) -> float:
    return 0.72 * obj.size  # covers a rotated square's corners and the drawn height


def _apart(obj: SceneObject, other: SceneObject, x: float, y: float) -> bool:
    return math.hypot(x - other.x, y - other.y) >= _radius(obj) + _radius(other) + 0.01


def _on_table(x: float, y: float) -> bool:
    return TABLE_X[0] <= x <= TABLE_X[1] and TABLE_Y[0] <= y <= TABLE_Y[1]


def _infeasible(scene: Scene, task: Task) -> str | None:
    """Why `task` cannot run in `scene`, or None when it can."""
    if task.kind not in TASK_KINDS:
        return f"unknown task kind {task.kind!r}; known: {TASK_KINDS}"
    obj = scene.object(task.target)
    others = [o for o in scene.objects if o is not obj]
    if any(o.on == obj.name for o in others):
        return f"something is stacked on the {obj.name}"
    if scene.held not in (None, obj.name):
        return f"the gripper holds the {scene.held}"
    if scene.held and task.kind not in ("put_on", "put_next_to"):
        return f"the {obj.name} is held; only put tasks can follow"
    if task.kind in ("put_on", "put_next_to"):
        ref = scene.object(task.ref)
        if ref is obj or ref.on is not None or any(o.on == ref.name for o in others):
            return f"the {ref.name} cannot take the {obj.name}"
        if obj.on == ref.name:
            return f"the {obj.name} is already on the {ref.name}"
        if task.kind == "put_on":
            return None
        sign = {"left": -1.0, "right": 1.0}.get(task.direction)
        if sign is None:
            return f"put_next_to side must be 'left' or 'right', got {task.direction!r}"
        x = ref.x + sign * (ref.size / 2 + obj.size / 2 + NEXT_TO_GAP)
        blocked = [o for o in others if o is not ref and not _apart(obj, o, x, ref.y)]
        ok = not blocked and _on_table(x, ref.y)
        return None if ok else "destination blocked or off the table"
    if obj.on is not None and task.kind != "pick_up":
        return f"the {obj.name} is stacked; it can only be picked up"
    if task.kind == "push":
        if task.direction not in PUSH_DIRECTIONS:
            return f"push direction must be one of {list(PUSH_DIRECTIONS)}, got {task.direction!r}"
        dx, dy = PUSH_DIRECTIONS[task.direction]
        path = [(obj.x + dx * task.amount * f, obj.y + dy * task.amount * f)
                for f in np.linspace(0, 1, 6)]
        ok = _on_table(*path[-1]) and all(_apart(obj, o, *p) for o in others for p in path)
        return None if ok else "push path blocked or off the table"
    if task.kind == "rotate":
        if task.direction not in ("clockwise", "counterclockwise"):
            return f"rotate direction must be clockwise or counterclockwise, got {task.direction!r}"
        return "a disc looks the same rotated" if obj.shape == "disc" else None
    return None


# ---------------------------------------------------------------------------------------------
# Scripts: a task becomes keyframes (duration, scene); frames interpolate between them.

def _move(scene: Scene, **gripper) -> Scene:
    """Move the gripper; a held object travels with it, hanging between the fingertips."""
    g = dataclasses.replace(scene.gripper, **gripper)
    objects = scene.objects
    if scene.held:
        objects = tuple(dataclasses.replace(o, x=g.x, y=g.y, z=g.z) if o.name == scene.held else o
                        for o in objects)
    return dataclasses.replace(scene, gripper=g, objects=objects)


def _set_object(scene: Scene, name: str, **changes) -> Scene:
    objects = tuple(dataclasses.replace(o, **changes) if o.name == name else o
                    for o in scene.objects)
    return dataclasses.replace(scene, objects=objects)


def _script(scene: Scene, task: Task) -> list[tuple[float, Scene]]:
    keys = [(0.0, scene)]

    def key(duration: float, new: Scene) -> Scene:
        keys.append((duration, new))
        return new

    obj = scene.object(task.target)
    s = scene
    if not s.held:  # approach from above
        if task.kind == "push":
            dx, dy = PUSH_DIRECTIONS[task.direction]
            back = obj.size / 2 + FINGER_W / 2 + 0.01
            cx, cy = obj.x - dx * back, obj.y - dy * back
            s = key(1.0, _move(s, x=cx, y=cy, z=LIFT, opening=CLOSED))
            s = key(0.4, _move(s, z=0.0))
            s = key(1.4, _set_object(_move(s, x=cx + dx * task.amount, y=cy + dy * task.amount),
                                     obj.name, x=obj.x + dx * task.amount,
                                     y=obj.y + dy * task.amount))
            s = key(0.4, _move(s, z=LIFT))
            key(1.0, _move(s, x=REST[0], y=REST[1], z=REST[2]))
            return keys
        s = key(1.0, _move(s, x=obj.x, y=obj.y, z=obj.z + LIFT, opening=OPEN))
        s = key(0.4, _move(s, z=obj.z))
        s = key(0.3, dataclasses.replace(_move(s, opening=obj.size + FINGER_W), held=obj.name))
        s = _set_object(s, obj.name, on=None)
        if task.kind == "rotate":
            sign = 1.0 if task.direction == "clockwise" else -1.0
            s = key(1.2, _set_object(_move(s, twist=sign * task.amount), obj.name,
                                     angle=obj.angle + sign * task.amount))
            s = key(0.3, dataclasses.replace(_move(s, opening=OPEN), held=None))
            s = key(0.4, _move(s, z=LIFT, twist=0.0))
            key(1.0, _move(s, x=REST[0], y=REST[1], z=REST[2], opening=CLOSED))
            return keys
        s = key(0.5, _move(s, z=obj.z + LIFT))
        if task.kind == "pick_up":
            key(0.8, _move(s, y=obj.y - 0.03, z=obj.z + LIFT + 0.04))
            return keys
    ref = scene.object(task.ref) if task.ref else None
    if task.kind == "put_on":
        x, y, z = ref.x, ref.y, ref.z + EXTRUDE * ref.size
    else:
        sign = -1.0 if task.direction == "left" else 1.0
        x, y, z = ref.x + sign * (ref.size / 2 + obj.size / 2 + NEXT_TO_GAP), ref.y, 0.0
    s = key(1.2, _move(s, x=x, y=y, z=z + LIFT))
    s = key(0.4, _move(s, z=z))
    s = _set_object(s, obj.name, on=ref.name if task.kind == "put_on" else None)
    s = key(0.3, dataclasses.replace(_move(s, opening=OPEN), held=None))
    s = key(0.4, _move(s, z=z + LIFT))
    key(1.0, _move(s, x=REST[0], y=REST[1], z=REST[2], opening=CLOSED))
    return keys


def _lerp_scene(a: Scene, b: Scene, f: float) -> Scene:
    def mix(u: float, v: float) -> float:
        return u + (v - u) * f
    g = Gripper(*(mix(getattr(a.gripper, k), getattr(b.gripper, k))
                  for k in ("x", "y", "z", "opening", "twist")))
    objects = tuple(dataclasses.replace(q, x=mix(p.x, q.x), y=mix(p.y, q.y), z=mix(p.z, q.z),
                                        angle=mix(p.angle, q.angle))
                    for p, q in zip(a.objects, b.objects))
    return dataclasses.replace(b, objects=objects, gripper=g)


def _sample(keys: list[tuple[float, Scene]], num_frames: int) -> list[Scene]:
    """Scenes at evenly spaced times, each segment eased (smoothstep) so motion starts and stops
    gently."""
    ends = np.cumsum([d for d, _ in keys])
    out = []
    for t in np.linspace(0.0, ends[-1], num_frames):
        k = min(int(np.searchsorted(ends, t, side="left")), len(keys) - 1)
        if k == 0:
            out.append(keys[0][1])
            continue
        f = (t - ends[k - 1]) / keys[k][0]
        out.append(keys[k][1] if f >= 1 else _lerp_scene(keys[k - 1][1], keys[k][1],
                                                           f * f * (3 - 2 * f)))
    return out


def apply_task(scene: Scene, task: Task) -> Scene:
    """The scene after `task`, without rendering; raises ValueError if the task is infeasible."""
    reason = _infeasible(scene, task)
    if reason is not None:
        raise ValueError(f"task {task} is infeasible here: {reason}")
    return _script(scene, task)[-1][1]


def run_task(scene: Scene, task: Task, num_frames: int = 16, size: int = 128,
             instruction: str | None = None) -> Episode:
    """Render `task` executed from `scene` (which is not changed). The final state is in
    meta["final_scene"] (Scene.from_dict) and equals apply_task(scene, task)."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames!r}")
    final = apply_task(scene, task)
    scenes = _sample(_script(scene, task), num_frames)
    frames = np.stack([render(s, size) for s in scenes])
    positions = {o.name: _track(scenes, o.name, size) for o in scene.objects}
    states = arm_states(scenes)
    return Episode(
        frames=frames, instruction=instruction or task.instruction,
        object_positions=positions, object_colors={o.name: o.rgb for o in scene.objects},
        target=task.target,
        meta={"source": "tabletop", "task": dataclasses.asdict(task), "size": size,
              "num_frames": num_frames, "initial_scene": scene.to_dict(),
              "final_scene": final.to_dict()},
        states=states, actions=arm_actions(states))


def arm_states(scenes: list[Scene]) -> np.ndarray:
    """(T, 5) gripper pose per scene: x, y, z (normalised), finger opening, wrist twist (deg)."""
    return np.array([[s.gripper.x, s.gripper.y, s.gripper.z, s.gripper.opening, s.gripper.twist]
                     for s in scenes])


def arm_actions(states: np.ndarray) -> np.ndarray:
    """(T, 5) the gripper motion commanded at each frame, in the state's units: the change of x,
    y, z, opening and twist until the next frame (Bridge-style delta actions); zero at the last
    frame, where the script has ended."""
    return np.concatenate([np.diff(states, axis=0), np.zeros((1, states.shape[1]))])


def object_track(scene: Scene, task: Task, name: str, num_frames: int, size: int) -> np.ndarray:
    """(num_frames, 2) pixel centres of object `name` while `task` runs, without rendering; the
    same as run_task(...).object_positions[name]. ValueError if the task is infeasible."""
    apply_task(scene, task)
    return _track(_sample(_script(scene, task), num_frames), name, size)


def _track(scenes: list[Scene], name: str, size: int) -> np.ndarray:
    return np.array([_pixel_centre(s.object(name), size) for s in scenes])


def random_task(scene: Scene, rng: np.random.Generator, kinds: tuple[str, ...] = TASK_KINDS) -> Task:
    """A feasible task: kind uniformly among the feasible `kinds`, then uniformly within it."""
    tasks = [t for t in scene.candidate_tasks() if t.kind in kinds]
    if not tasks:
        raise ValueError(f"no feasible task of kinds {kinds} in this scene")
    kinds = sorted({t.kind for t in tasks}, key=TASK_KINDS.index)
    kind = kinds[int(rng.integers(len(kinds)))]
    of_kind = [t for t in tasks if t.kind == kind]
    return of_kind[int(rng.integers(len(of_kind)))]


def make_episode(seed: int, size: int = 128, num_frames: int = 16,
                 paraphrase: bool = False, kinds: tuple[str, ...] = TASK_KINDS) -> Episode:
    """One random scene, task (of the given kinds) and instruction from `seed`."""
    rng = np.random.default_rng(seed)
    scene = Scene.random(rng)
    task = random_task(scene, rng, kinds)
    episode = run_task(scene, task, num_frames, size, instruction_for(task, rng, paraphrase))
    episode.meta["seed"] = seed
    episode.meta["paraphrase"] = paraphrase
    return episode


def make_episodes(seeds: Iterable[int], size: int, num_frames: int, kinds: tuple[str, ...],
                  paraphrase: bool = False) -> Iterator[Episode]:
    """`make_episode` for each seed, lazily, with a progress bar."""
    from tqdm.auto import tqdm

    seeds = list(seeds)
    for seed in tqdm(seeds, desc="simulating episodes", leave=False):
        yield make_episode(seed, size=size, num_frames=num_frames, paraphrase=paraphrase, kinds=kinds)


# ---------------------------------------------------------------------------------------------
# Rendering

def _pixel_centre(obj: SceneObject, size: int) -> tuple[float, float]:
    return obj.x * size - 0.5, (obj.y - obj.z) * size - 0.5


@functools.lru_cache(maxsize=8)
def _table(look: TableLook, n: int) -> np.ndarray:
    """Wood planks, grain and a wall behind, at canvas resolution n; float32 RGB 0-255."""
    rng = np.random.default_rng(look.grain_seed)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    warp = sum(rng.uniform(0.002, 0.01) * np.sin(2 * np.pi * (rng.uniform(1, 4) * x
                                                              + rng.uniform(0, 1)))
               for _ in range(3))
    plank = np.floor((y - look.edge_y) / look.plank_h)
    plank_tone = rng.uniform(0.9, 1.06, 64)[(plank.astype(int) % 64)]
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (look.grain_freq * (y + warp) + 7.3 * plank))
    coarse = cv2.resize(rng.uniform(0.94, 1.06, (12, 12)).astype(np.float32), (n, n),
                        interpolation=cv2.INTER_CUBIC)
    seam = np.abs(((y - look.edge_y) / look.plank_h) - np.round((y - look.edge_y) / look.plank_h))
    tone = plank_tone * (1 - 0.13 * grain ** 3) * coarse * np.where(seam * look.plank_h < 0.004,
                                                                     0.7, 1.0)
    img = tone[..., None] * np.array(look.wood_rgb, np.float32)
    wall = np.array(look.wall_rgb, np.float32) * (0.92 + 0.08 * y[..., None] / look.edge_y)
    img = np.where((y < look.edge_y)[..., None], wall, img)
    edge = (y >= look.edge_y) & (y < look.edge_y + 0.012)
    img[edge] *= 0.75
    return img.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _light(look: TableLook, size: int) -> np.ndarray:
    """Multiplicative lighting: brightness, a linear gradient and a soft vignette, tinted."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    ramp = x * math.cos(look.light_angle) + y * math.sin(look.light_angle)
    gain = look.brightness * (1 + look.light_strength * 2 * ramp) * (1 - 0.25 * (x**2 + y**2))
    return gain[..., None] * np.array(look.tint, np.float32)


def _poly(points: np.ndarray) -> np.ndarray:
    """Canvas coordinates -> OpenCV fixed-point (4 fractional bits; pixel centres at integers)."""
    return np.round((points - 0.5) * 16).astype(np.int32)


def _outline(obj: SceneObject) -> np.ndarray:
    """Top-face outline around the origin, normalised units, rotated and foreshortened."""
    if obj.shape == "block":
        pts = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    elif obj.shape == "disc":
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = 0.5 * np.stack([np.cos(a), np.sin(a)], 1)
    else:  # triangle, centroid at the origin, a little larger to match the others' area
        a = np.radians([-90.0, 30.0, 150.0])
        pts = 0.7 * np.stack([np.cos(a), np.sin(a)], 1)
    t = math.radians(obj.angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    pts = pts @ rot.T * [1.0, FORESHORTEN]
    return pts * obj.size * (1 + LIFT_SCALE * obj.z)


def _object_polygons(obj: SceneObject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top face, silhouette (top face extruded down by the object's height) and shadow outline,
    normalised units. The silhouette is centred on the object's drawn centre."""
    h = EXTRUDE * obj.size * (1 + LIFT_SCALE * obj.z)
    top = _outline(obj) + [obj.x, obj.y - obj.z - h / 2]
    side = cv2.convexHull(np.concatenate([top, top + [0, h]]).astype(np.float32))[:, 0]
    # The shadow falls where the object stands, further off the higher it is.
    foot = _outline(obj) + [obj.x + 0.012 + 0.2 * obj.z, obj.y + 0.015 + 0.1 * obj.z]
    return top, side, foot


def _draw_object(canvas: np.ndarray, obj: SceneObject) -> None:
    n = canvas.shape[0]
    top, side, _ = _object_polygons(obj)
    rgb = np.array(obj.rgb, np.float32)
    cv2.fillPoly(canvas, [_poly(side * n)], (rgb * 0.62).tolist(), cv2.LINE_8, 4)
    cv2.fillPoly(canvas, [_poly(top * n)], rgb.tolist(), cv2.LINE_8, 4)
    cv2.polylines(canvas, [_poly(top * n)], True, (rgb * 0.8).tolist(), max(1, n // 160),
                  cv2.LINE_8, 4)


def _quad(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """A thick segment as a 4-point polygon."""
    d = np.array([x1 - x0, y1 - y0])
    normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * width / 2
    return np.array([[x0, y0] + normal, [x1, y1] + normal, [x1, y1] - normal, [x0, y0] - normal])


def _draw_gripper(canvas: np.ndarray, g: Gripper) -> None:
    """A WidowX-like gripper seen from the front: arm link from the top edge, wrist, two fingers."""
    n = canvas.shape[0]
    tip_y = g.y - g.z
    palm_y = tip_y - FINGER_LEN
    spread = g.opening * abs(math.cos(math.radians(g.twist))) + FINGER_W / 2
    palm_w = max(spread + 2 * FINGER_W, 0.14)
    base_x = 0.5 + 0.55 * (g.x - 0.5)
    dark, mid, light = (38.0, 38.0, 42.0), (70.0, 70.0, 76.0), (125.0, 125.0, 130.0)
    wrist_y = palm_y - 0.08
    cv2.fillPoly(canvas, [_poly(_quad(base_x, -0.05, g.x, wrist_y, 0.085) * n)], dark,
                 cv2.LINE_8, 4)
    cv2.fillPoly(canvas, [_poly(_quad(base_x - 0.012, -0.05, g.x - 0.012, wrist_y, 0.018) * n)],
                 mid, cv2.LINE_8, 4)
    cv2.circle(canvas, (int((g.x * n - 0.5) * 16), int((wrist_y * n - 0.5) * 16)),
               int(0.05 * n * 16), mid, -1, cv2.LINE_8, 4)
    rect = np.array([[-0.5, 0.0], [0.5, 0.0], [0.5, 1.0], [-0.5, 1.0]])
    wrist = rect * [0.1, 0.05] + [g.x, wrist_y]
    palm = rect * [palm_w, 0.04] + [g.x, palm_y - 0.04]
    cv2.fillPoly(canvas, [_poly(wrist * n), _poly(palm * n)], mid, cv2.LINE_8, 4)
    for side in (-1, 1):
        fx = g.x + side * spread / 2
        finger = rect * [FINGER_W, FINGER_LEN] + [fx, palm_y]
        pad = rect * [FINGER_W * 0.4, FINGER_LEN * 0.7] + [fx - side * FINGER_W * 0.25,
                                                              palm_y + FINGER_LEN * 0.25]
        cv2.fillPoly(canvas, [_poly(finger * n)], dark, cv2.LINE_8, 4)
        cv2.fillPoly(canvas, [_poly(pad * n)], light, cv2.LINE_8, 4)


def render(scene: Scene, size: int = 128) -> np.ndarray:
    """One (size, size, 3) uint8 RGB frame of `scene`."""
    if size < 32:
        raise ValueError(f"size must be >= 32 to show objects, got {size!r}")
    n = size * SUPERSAMPLE
    canvas = _table(scene.look, n).copy()
    # Shadows darken the table only, so they are laid down before anything stands on it.
    shadow = np.zeros((n, n), np.float32)
    for obj in scene.objects:
        cv2.fillPoly(shadow, [_poly(_object_polygons(obj)[2] * n)], 0.45 - 1.5 * min(obj.z, 0.15),
                     cv2.LINE_8, 4)
    g = scene.gripper
    cv2.ellipse(shadow, (int(g.x * n), int((g.y + 0.02) * n)), (int(0.07 * n), int(0.03 * n)),
                0, 0, 360, 0.3 / (1 + 10 * g.z), -1)
    canvas *= 1 - cv2.GaussianBlur(shadow, (0, 0), n / 100)[..., None]
    # Painter's order: far to near, things in the air last.
    for obj in sorted(scene.objects, key=lambda o: (o.z > 1e-3, o.y, o.z)):
        _draw_object(canvas, obj)
    _draw_gripper(canvas, g)
    frame = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    frame *= _light(scene.look, size)
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> None:
    """Write N episodes (episode i from seed S + i) in our episode format or as a LeRobot v3
    dataset."""
    from tqdm import tqdm

    from sim_bridge.data.episode_io import is_episode_dir, write_episode
    from sim_bridge.data.lerobot import write_dataset

    parser = argparse.ArgumentParser(prog="python -m sim_bridge.simulator.tabletop", description=main.__doc__)
    parser.add_argument("--n", type=int, required=True, help="number of episodes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--size", type=int, default=128, help="square frame size in pixels")
    parser.add_argument("--frames", type=int, default=16, help="frames per episode")
    parser.add_argument("--paraphrase", action="store_true",
                        help="held-out paraphrased instructions (evaluation only, never training)")
    parser.add_argument("--format", choices=("foresight", "lerobot"), default="foresight",
                        help="one folder per episode (resumable), or one LeRobot v3 dataset")
    parser.add_argument("--fps", type=int, default=5, help="frame rate stored in a LeRobot dataset")
    args = parser.parse_args(argv)
    setup_logging()
    start, kinds, skipped = time.perf_counter(), Counter(), 0
    seeds = tqdm(range(args.seed, args.seed + args.n), desc="episodes", unit="ep")
    if args.format == "lerobot":
        def made():
            for seed in seeds:
                episode = make_episode(seed, args.size, args.frames, args.paraphrase)
                kinds[episode.meta["task"]["kind"]] += 1
                yield episode
        write_dataset(made(), args.out, args.fps)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            folder = args.out / f"{seed:08d}"
            if is_episode_dir(folder):  # resume: complete episodes are kept
                skipped += 1
                continue
            episode = make_episode(seed, args.size, args.frames, args.paraphrase)
            write_episode(episode, folder)
            kinds[episode.meta["task"]["kind"]] += 1
    log.info("wrote %d episodes (%s), kept %d existing, to %s in %.1f s", sum(kinds.values()),
             ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "none", skipped, args.out,
             time.perf_counter() - start)


if __name__ == "__main__":
    main()
