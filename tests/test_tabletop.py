"""Tabletop simulator: determinism, task semantics from ground truth, colour localisation, CLI."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from sim_bridge.data.episode_io import iter_episodes
from sim_bridge.simulator.instructions import PARAPHRASES, TEMPLATES, instruction_for
from sim_bridge.simulator.tabletop import (
    EXTRUDE,
    PUSH_DIRECTIONS,
    Scene,
    SceneObject,
    TableLook,
    Task,
    apply_task,
    main,
    make_episode,
    object_track,
    render,
    run_task,
)
from sim_bridge.simulator.tasks import TASK_KINDS

SIZE = 64


def _fixed_scene() -> Scene:
    """A red block in the middle with room to move every way, two objects out of its path."""
    look = TableLook.random(np.random.default_rng(0))
    return Scene((SceneObject("red", "block", 0.17, 0.5, 0.62),
                  SceneObject("blue", "disc", 0.17, 0.13, 0.87),
                  SceneObject("green", "triangle", 0.17, 0.87, 0.87, angle=10.0)), look)


def _check_task(episode, task: Task, scene: Scene, size: int) -> None:
    pos = episode.object_positions
    start, end = pos[task.target][0], pos[task.target][-1]
    for name, track in pos.items():
        if name != task.target:
            assert np.array_equal(track, np.repeat(track[:1], len(track), 0)), name
    final = Scene.from_dict(episode.meta["final_scene"])
    assert final == apply_task(scene, task)
    if task.kind == "push":
        direction = np.array(PUSH_DIRECTIONS[task.direction])
        moved = end - start
        assert moved @ direction > 0.15 * size
        assert abs(moved @ direction[::-1]) < 1e-6
    elif task.kind in ("put_on", "put_next_to"):
        ref = pos[task.ref][-1]
        if task.kind == "put_on":
            lift = EXTRUDE * scene.object(task.ref).size * size
            assert np.allclose(end, ref - [0, lift])
            assert final.object(task.target).on == task.ref
        else:
            assert abs(end[1] - ref[1]) < 1e-6
            side = -1 if task.direction == "left" else 1
            assert 0.1 * size < side * (end[0] - ref[0]) < 0.3 * size
        assert final.held is None
    elif task.kind == "pick_up":
        assert start[1] - end[1] > 0.1 * size
        assert final.held == task.target
    else:
        assert np.allclose(start, end)
        sign = 1 if task.direction == "clockwise" else -1
        turned = final.object(task.target).angle - scene.object(task.target).angle
        assert turned == pytest.approx(sign * task.amount)


def test_same_seed_same_bytes_other_seed_other_frames():
    a, b, c = make_episode(3, SIZE, 8), make_episode(3, SIZE, 8), make_episode(4, SIZE, 8)
    assert a.frames.tobytes() == b.frames.tobytes() and a.instruction == b.instruction
    assert a.frames.shape == (8, SIZE, SIZE, 3) and a.frames.dtype == np.uint8
    assert not np.array_equal(a.frames, c.frames)


def test_every_task_of_the_fixed_scene_does_what_it_says():
    scene = _fixed_scene()
    tasks = [t for t in scene.candidate_tasks() if t.target == "red block"]
    assert {t.kind for t in tasks} == set(TASK_KINDS)
    assert {t.direction for t in tasks if t.kind == "push"} == set(PUSH_DIRECTIONS)
    for task in tasks:
        episode = run_task(scene, task, 10, SIZE)
        assert episode.target == task.target and episode.instruction == task.instruction
        _check_task(episode, task, scene, SIZE)


@pytest.mark.parametrize("seed", range(40))
def test_random_episodes_do_what_they_say(seed):
    episode = make_episode(seed, SIZE, 8)
    scene = Scene.from_dict(episode.meta["initial_scene"])
    _check_task(episode, Task(**episode.meta["task"]), scene, SIZE)
    assert episode.meta["seed"] == seed
    assert set(episode.object_colors) == set(episode.object_positions)


def test_tasks_chain_from_the_final_scene():
    scene = _fixed_scene()
    picked = apply_task(scene, Task("pick_up", "red block"))
    follow_ups = picked.candidate_tasks()
    assert follow_ups and {t.kind for t in follow_ups} <= {"put_on", "put_next_to"}
    assert all(t.target == "red block" for t in follow_ups)
    task = Task("put_on", "red block", ref="blue disc")
    episode = run_task(picked, task, 10, SIZE)
    _check_task(episode, task, picked, SIZE)
    stacked = Scene.from_dict(episode.meta["final_scene"])
    assert not any(t.target == "blue disc" for t in stacked.candidate_tasks())


def test_object_track_is_the_rendered_track():
    scene = _fixed_scene()
    task = Task("put_next_to", "red block", "right", "blue disc")
    episode = run_task(scene, task, 8, SIZE)
    for name in ("red block", "blue disc"):
        assert np.array_equal(object_track(scene, task, name, 8, SIZE),
                              episode.object_positions[name])
    with pytest.raises(ValueError, match="off the table"):
        object_track(scene, Task("push", "blue disc", "left", amount=0.2), "blue disc", 8, SIZE)


def test_infeasible_task_is_refused_with_reason():
    scene = _fixed_scene()
    with pytest.raises(ValueError, match="disc looks the same"):
        run_task(scene, Task("rotate", "blue disc", "clockwise", amount=45.0))
    with pytest.raises(ValueError, match="off the table"):
        apply_task(scene, Task("push", "blue disc", "left", amount=0.2))
    with pytest.raises(KeyError, match="no object"):
        apply_task(scene, Task("pick_up", "pink block"))


def test_render_is_a_pure_function_of_the_scene():
    scene = _fixed_scene()
    assert np.array_equal(render(scene, 64), render(scene, 64))
    assert render(scene, 96).shape == (96, 96, 3)


def test_templates_and_paraphrases_are_disjoint():
    assert set(TEMPLATES) == set(PARAPHRASES) == set(TASK_KINDS)
    patterns = [p for ps in TEMPLATES.values() for p in ps]
    assert not set(patterns) & {p for ps in PARAPHRASES.values() for p in ps}
    rng = np.random.default_rng(0)
    trained, held_out = set(), set()
    for seed in range(20):
        for task in Scene.random(np.random.default_rng(seed)).candidate_tasks():
            for _ in range(6):
                trained.add(instruction_for(task, rng))
                held_out.add(instruction_for(task, rng, paraphrase=True))
            assert task.instruction == instruction_for(task)
    assert trained and held_out and not trained & held_out
    assert not any("{" in s or "None" in s for s in trained | held_out)


def test_cli_writes_n_readable_episodes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sim_bridge.simulator.tabletop")
    main(["--n", "3", "--seed", "5", "--out", str(tmp_path), "--size", "64", "--frames", "6"])
    episodes = list(iter_episodes(tmp_path))
    assert [e.meta["seed"] for _, e in episodes] == [5, 6, 7]
    assert all(e.frames.shape == (6, 64, 64, 3) for _, e in episodes)
    assert "wrote 3 episodes" in caplog.text
    main(["--n", "4", "--seed", "5", "--out", str(tmp_path), "--size", "64", "--frames", "6"])
    assert "wrote 1 episodes" in caplog.text and "kept 3 existing" in caplog.text
    assert len(list(iter_episodes(tmp_path))) == 4


def test_cli_runs_as_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sim_bridge.simulator.tabletop", "--n", "1", "--seed", "0", "--out",
         str(tmp_path), "--size", "64", "--frames", "4"], capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 episodes" in result.stderr
    assert len(list(iter_episodes(tmp_path))) == 1
