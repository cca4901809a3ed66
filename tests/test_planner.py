"""The planner's plumbing through a real node front, with a stand-in model that knows the simulator
(so a correct planner must reach the goal) and records what each request carried."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
from foresight_client.client import ForesightClient
from test_replay import TIMEOUT_S, Echo, Node

from sim_bridge.apps.planner import (
    FIRST_SEED,
    PLANNER_KINDS,
    PlannerConfig,
    candidates,
    format_table,
    instruction,
    make_goal,
    rank,
    run_planner,
)
from sim_bridge.apps.replay import NodeGeometry
from sim_bridge.simulator.tabletop import Scene, run_task

GEOMETRY = NodeGeometry("oracle", 64, 64, num_frames=8, context_frames=1)


class Oracle(Echo):
    """Predicts by running the simulator from a known scene; records every request's instructions."""

    def __init__(self, scene: Scene) -> None:
        super().__init__()
        self.scene = scene
        self.requests: list[list[str]] = []

    def predict(self, frames, instructions, **options):
        self.requests.append(list(instructions))
        tasks = {instruction(t): t for t in self.scene.candidate_tasks()}
        return np.stack([run_task(self.scene, tasks[text], 8, 64).frames[1:] for text in instructions])


def test_candidates_are_bounded_trained_kinds_with_the_true_task():
    goal = make_goal(FIRST_SEED, GEOMETRY)
    rng = np.random.default_rng(0)
    tasks = candidates(goal.scene, rng, 4, include=goal.task)
    assert len(tasks) == 4 and goal.task in tasks and len(set(tasks)) == 4
    assert all(t.kind in PLANNER_KINDS for t in candidates(goal.scene, rng, 100))
    assert len({instruction(t) for t in goal.scene.candidate_tasks()}) == len(goal.scene.candidate_tasks())


def test_rank_by_objects_then_by_pixels():
    goal = make_goal(FIRST_SEED, GEOMETRY)
    colors = {o.name: o.rgb for o in goal.scene.objects}
    start = run_task(goal.scene, goal.task, 2, 64).frames[0]
    distances, measure = rank(np.stack([start, goal.image]), goal.image, colors)
    assert measure == "object_px" and distances[1] == 0 < distances[0]
    blank = np.full_like(goal.image, 128)
    distances, measure = rank(np.stack([blank, goal.image]), goal.image, colors)
    assert measure == "pixel_mse" and distances[1] == 0 < distances[0]


def test_planner_end_to_end_one_request_per_decision(tmp_path):
    goal = make_goal(FIRST_SEED, GEOMETRY)
    oracle = Oracle(goal.scene)
    config = PlannerConfig(max_candidates=4, budget=2, steps=2, random_trials=3)
    with Node(oracle) as endpoint, ForesightClient(endpoint, TIMEOUT_S, 0) as client:
        summary = run_planner(client, [FIRST_SEED], tmp_path, config)
    # a perfect world model finds the goal at the first step, from one request of 4 instructions
    assert summary["planner_success_rate"] == 1.0 and summary["first_step_true_task_rate"] == 1.0
    assert len(oracle.requests) == 1
    (step,) = summary["episodes"][0]["steps"]
    assert oracle.requests[0] == step["candidates"] and len(step["candidates"]) == 4
    assert instruction(goal.task) in step["candidates"] and step["measure"] == "object_px"
    assert 0.0 <= summary["random_success_rate"] <= 1.0
    assert summary["decisions"] == 1 and summary["planning_time_s"] == step["latency_s"] > 0
    assert "planning time" in format_table(summary)
    assert json.loads((tmp_path / "planner_summary.json").read_text())["goals"] == 1
    gif = iio.imread(tmp_path / summary["episodes"][0]["media"]["gif"], index=None)
    assert gif.shape[0] == 8 and gif.shape[2] > 3 * gif.shape[1] - 20  # 3 panels side by side


def test_runtime_takes_a_users_own_agent_and_subscriber():
    from sim_bridge.apps.planner import GoalEnvironment, StepRecorder
    from sim_bridge.apps.runtime import run_episode

    class TrueTask:
        def get_action(self, observation):
            return {"index": observation["tasks"].index(observation["goal"].task)}

    class Count:
        def on_episode_start(self):
            self.events = ["start"]

        def on_step(self, observation, action):
            self.events.append(action["index"])

        def on_episode_end(self):
            self.events.append("end")

    goal = make_goal(FIRST_SEED, GEOMETRY)
    environment = GoalEnvironment(goal, GEOMETRY, PlannerConfig(budget=3))
    count, recorder = Count(), StepRecorder(goal)
    assert run_episode(environment, TrueTask(), [count, recorder]) == 1  # then the goal is seen
    assert count.events[0] == "start" and count.events[-1] == "end" and len(count.events) == 3
    assert recorder.steps[0]["chose_true_task"] and environment.is_episode_complete()
