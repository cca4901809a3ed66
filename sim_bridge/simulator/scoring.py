"""Instruction following, scored the one way every consumer (replay, planner, evaluation) uses.

On tabletop episodes we know where every object ends up, so following is measured directly: the
target is found by its colour in a predicted frame (`locate_object`) and its distance to the
true position is taken (`follow_error`), where the truth is any outcome the instruction allows
(`accepted_tracks`). A prediction follows when that distance is within `follow_tolerance`.
Needs numpy, OpenCV and the simulator; nothing from the model.
"""

from __future__ import annotations

import dataclasses
import re

import cv2
import numpy as np

from sim_bridge.data.episode import Episode
from sim_bridge.simulator.tabletop import Scene, Task, object_track

# A pixel matches a colour when its hue is within HUE_TOL degrees and it is saturated and bright
# enough (HSV, 0-1); blobs below MIN_AREA of the frame are noise.
HUE_TOL = 18.0
MIN_SATURATION = 0.45
MIN_VALUE = 0.25
MIN_AREA = 0.0015
# The target must be found within this many pixels of its true final position, per 64 pixels of
# frame side (6 px at 64x64 is a bit more than half an object).
FOLLOW_TOLERANCE_PER_64PX = 6.0


def locate_object(frame: np.ndarray, rgb: tuple[int, int, int],
                  tol: float = HUE_TOL) -> tuple[float, float] | None:
    """Centroid (x, y), pixel-centre convention, of the largest blob of colour `rgb`, or None.

    A pixel matches when its hue is within `tol` degrees of the hue of `rgb`, and its saturation
    is at least 0.45 and its value at least 0.25 (HSV, 0-1). Hue ignores the brightness and
    gradient of the lighting; the saturation floor rejects the wood (< 0.4), the wall and the grey
    gripper. Palette hues are >= 40 degrees apart, so tol=18 separates neighbours while accepting
    the colour shifts of blur and tint. Blobs smaller than 0.15% of the frame (6 px at 64x64) are
    noise and ignored.
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)  # hue 0-255
    target_hue = cv2.cvtColor(np.array([[rgb]], np.uint8), cv2.COLOR_RGB2HSV_FULL)[0, 0, 0]
    diff = np.abs(hsv[..., 0] - float(target_hue)) * (360 / 256)
    diff = np.minimum(diff, 360 - diff)
    mask = (diff <= tol) & (hsv[..., 1] >= MIN_SATURATION * 255) & (hsv[..., 2] >= MIN_VALUE * 255)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < MIN_AREA * frame.shape[0] * frame.shape[1]:
        return None
    return float(centroids[best, 0]), float(centroids[best, 1])


def accepted_tracks(episode: Episode) -> np.ndarray:
    """(P, T, 2) pixel tracks of the target under every task the instruction allows, the
    recorded one first.

    "put the X next to the Y" names no side, so the feasible placement on the other side of Y
    follows it as well as the recorded one; every other instruction (and any episode not made
    by the simulator) allows exactly one outcome.
    """
    recorded = episode.object_positions[episode.target]
    meta = episode.meta
    if meta.get("source") != "tabletop":
        return recorded[None]
    task = Task(**meta["task"])
    if task.kind != "put_next_to" or re.search(rf"\b{task.direction}\b", episode.instruction):
        return recorded[None]
    scene = Scene.from_dict(meta["initial_scene"])
    other = dataclasses.replace(task, direction="right" if task.direction == "left" else "left")
    if other not in scene.candidate_tasks():
        return recorded[None]
    track = object_track(scene, other, task.target, meta["num_frames"], meta["size"])
    return np.stack([recorded, track])


def follow_error(frame: np.ndarray, rgb: tuple[int, int, int], truth_xy: np.ndarray) -> float:
    """Pixel distance from the object of colour `rgb` in `frame` to its true position, or to the
    nearest of several (P, 2) accepted ones; inf if not found."""
    found = locate_object(frame, rgb)
    if found is None:
        return float("inf")
    offsets = np.atleast_2d(truth_xy) - np.asarray(found)
    return float(np.hypot(offsets[:, 0], offsets[:, 1]).min())


def goal_reached(scene: Scene, goal: Scene, frame_side: int) -> bool:
    """Ground truth for goal-directed runs: every object within follow_tolerance pixels (at this
    frame side) of its place in `goal`."""
    tol = follow_tolerance(frame_side) / frame_side
    return all(np.hypot(o.x - g.x, (o.y - o.z) - (g.y - g.z)) <= tol
               for o, g in ((scene.object(g.name), g) for g in goal.objects))


def follow_tolerance(frame_side: int) -> float:
    """Largest follow_error, in pixels, that still counts as following at this frame side."""
    return FOLLOW_TOLERANCE_PER_64PX * frame_side / 64
