"""The tabletop simulator as a Gymnasium environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from sim_bridge.simulator.gym_env import ENV_ID, TabletopEnv
from sim_bridge.simulator.tabletop import run_task


def test_passes_check_env():
    check_env(gym.make(ENV_ID, size=32, num_frames=3).unwrapped)


def test_registered_and_goal_reached_by_the_hidden_task():
    env = gym.make(ENV_ID, size=32, num_frames=4)
    obs, info = env.reset(seed=7)
    assert obs["image"].shape == (32, 32, 3) and obs["arm"].shape == (5,)
    assert info["action_mask"].sum() == len(info["candidates"]) > 0
    assert info["goal_instruction"] in info["candidates"]  # the goal's task is feasible now
    unwrapped = env.unwrapped
    scene = unwrapped.scene
    action = info["candidates"].index(info["goal_instruction"])
    task = unwrapped.tasks[action]
    obs, reward, terminated, truncated, info = env.step(action)
    assert reward == 1.0 and terminated and not truncated
    assert np.array_equal(info["frames"], run_task(scene, task, 4, 32).frames)
    assert np.array_equal(obs["image"], info["goal"])


def test_masked_action_changes_nothing_and_budget_truncates():
    env = TabletopEnv(size=32, num_frames=2, max_candidates=64, max_steps=2)
    obs, info = env.reset(seed=3)
    invalid = int(np.flatnonzero(info["action_mask"] == 0)[0])
    after, reward, terminated, truncated, info = env.step(invalid)
    assert np.array_equal(after["image"], obs["image"]) and reward == 0.0 and not truncated
    _, _, terminated, truncated, _ = env.step(invalid)
    assert truncated and not terminated
    same = TabletopEnv(size=32, num_frames=2, max_candidates=64)
    assert same.reset(seed=3)[1]["candidates"] == env.reset(seed=3)[1]["candidates"]
