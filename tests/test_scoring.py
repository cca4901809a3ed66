"""Instruction-following scoring: colour localisation, accepted outcomes, follow error."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from test_tabletop import SIZE, _fixed_scene

from sim_bridge.simulator.scoring import (
    accepted_tracks,
    follow_error,
    follow_tolerance,
    locate_object,
)
from sim_bridge.simulator.tabletop import (
    PALETTE,
    Task,
    apply_task,
    make_episode,
    run_task,
)


def test_next_to_without_a_side_accepts_either_side():
    scene = _fixed_scene()
    left = Task("put_next_to", "red block", "left", "blue disc")  # the disc sits at the left edge
    right = Task("put_next_to", "red block", "right", "blue disc")
    assert apply_task(scene, right) and scene.candidate_tasks().count(left) == 0
    unnamed = run_task(scene, right, 8, SIZE, "put the red block next to the blue disc")
    assert np.array_equal(accepted_tracks(unnamed), unnamed.object_positions["red block"][None])
    free = Task("put_next_to", "blue disc", "right", "red block")
    both = run_task(scene, free, 8, SIZE, "place the blue disc beside the red block")
    tracks = accepted_tracks(both)
    ref = both.object_positions["red block"][-1]
    assert tracks.shape == (2, 8, 2) and np.array_equal(tracks[0], both.object_positions["blue disc"])
    assert np.allclose(tracks[1, 0], tracks[0, 0])  # both start where the disc is
    assert np.allclose(tracks[1, -1], [2 * ref[0] - tracks[0, -1, 0], tracks[0, -1, 1]])  # mirrored about the block
    other = run_task(scene, dataclasses.replace(free, direction="left"), 8, SIZE)
    assert np.allclose(tracks[1], other.object_positions["blue disc"])
    for instruction in ("put the blue disc to the right of the red block", "the blue disc belongs on the right side of the red block"):
        named = run_task(scene, free, 8, SIZE, instruction)
        assert len(accepted_tracks(named)) == 1
    pushed = run_task(scene, Task("push", "red block", "left", amount=0.2), 8, SIZE)
    assert len(accepted_tracks(pushed)) == 1


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_locate_object_finds_every_object_within_2px(size, blur):
    for seed in range(12):
        episode = make_episode(seed, size, 8)
        task = episode.meta["task"]
        for t in (0, len(episode.frames) - 1):
            frame = episode.frames[t]
            if blur:
                frame = cv2.GaussianBlur(frame, (0, 0), blur * size / 64)
            for name, rgb in episode.object_colors.items():
                # At the end a stacked object hides part of the one below it, and a held one
                # (with the arm) may hide anything behind it.
                if t > 0 and (task["kind"] == "put_on" and name == task["ref"]
                              or task["kind"] == "pick_up" and name != task["target"]):
                    continue
                found = locate_object(frame, rgb)
                assert found is not None, (seed, t, name)
                error = np.hypot(*(np.array(found) - episode.object_positions[name][t]))
                assert error < 2.0, (seed, t, name, found, episode.object_positions[name][t])
            present = {name.split()[0] for name in episode.object_colors}
            for color in set(PALETTE) - present:
                assert locate_object(frame, PALETTE[color]) is None, (seed, color)


def test_locate_object_rejects_bad_frames():
    with pytest.raises(ValueError, match="uint8"):
        locate_object(np.zeros((8, 8, 3), np.float32), PALETTE["red"])


def test_follow_error_on_ground_truth_frames():
    ep = make_episode(5, size=64, num_frames=8)
    target = ep.target
    err = follow_error(ep.frames[-1], ep.object_colors[target], ep.object_positions[target][-1])
    assert err < 2.0
    wrong = follow_error(ep.frames[0], ep.object_colors[target], ep.object_positions[target][-1])
    assert wrong > follow_tolerance(64)  # the object moved: its first position is far from the last
    both = np.stack([ep.object_positions[target][-1], ep.object_positions[target][0]])
    assert follow_error(ep.frames[0], ep.object_colors[target], both) < 2.0  # the nearest accepted one counts
    blank = np.zeros((64, 64, 3), np.uint8)
    assert follow_error(blank, ep.object_colors[target], ep.object_positions[target][-1]) == float("inf")
    assert follow_tolerance(128) == 2 * follow_tolerance(64)

