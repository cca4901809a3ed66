"""The tabletop simulator as a Gymnasium environment, `foresight/Tabletop-v0`.

An episode starts from a random scene and a goal one hidden task away (as the planner demo's
goals). The observation is what a robot has: the camera image and the arm state (gripper x, y,
z, finger opening, wrist twist). An action picks one instruction among `info["candidates"]`
(the feasible tasks of the trained kinds, phrased as in training, in a random order; the first
offer includes the goal's task, as the planner demo's does), with `info["action_mask"]` marking
the valid indices; one step runs that scripted skill and returns its frames in `info["frames"]`. An index beyond the candidates leaves the scene as it is. The
reward is 1 when every object stands where the goal has it (within `follow_tolerance`), which
also ends the episode; `max_steps` truncates it. `info["goal"]` is the goal image.

    import gymnasium as gym, sim_bridge.simulator.gym_env
    env = gym.make("foresight/Tabletop-v0", size=64)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim_bridge.simulator.instructions import unambiguous_instruction
from sim_bridge.simulator.scoring import goal_reached
from sim_bridge.simulator.tabletop import (
    Scene,
    Task,
    apply_task,
    random_task,
    render,
    run_task,
)
from sim_bridge.simulator.tasks import TRAINED_KINDS

ENV_ID = "foresight/Tabletop-v0"
ARM_LOW = np.array([0.0, 0.0, 0.0, 0.0, -180.0], np.float32)
ARM_HIGH = np.array([1.0, 1.0, 1.0, 1.0, 180.0], np.float32)


class TabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, size: int = 64, num_frames: int = 8, max_candidates: int = 16,
                 max_steps: int = 4, kinds: tuple[str, ...] = TRAINED_KINDS,
                 render_mode: str | None = "rgb_array") -> None:
        if max_candidates < 1 or max_steps < 1:
            raise ValueError(f"max_candidates and max_steps must be >= 1, got "
                             f"{max_candidates!r}, {max_steps!r}")
        self.size, self.num_frames, self.kinds = size, num_frames, tuple(kinds)
        self.max_candidates, self.max_steps = max_candidates, max_steps
        self.render_mode = render_mode
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "arm": spaces.Box(ARM_LOW, ARM_HIGH, dtype=np.float32)})
        self.action_space = spaces.Discrete(max_candidates)
        self.scene: Scene | None = None

    def _observe(self) -> dict[str, np.ndarray]:
        g = self.scene.gripper
        arm = np.clip(np.array([g.x, g.y, g.z, g.opening, g.twist], np.float32), ARM_LOW, ARM_HIGH)
        return {"image": render(self.scene, self.size), "arm": arm}

    def _offer(self, include: Task | None = None) -> None:
        """Up to max_candidates feasible tasks in a random order, `include` among them."""
        tasks = [t for t in self.scene.candidate_tasks() if t.kind in self.kinds and t != include]
        order = self.np_random.permutation(len(tasks))[: self.max_candidates - (include is not None)]
        self.tasks = [tasks[i] for i in order]
        if include is not None:
            self.tasks.insert(int(self.np_random.integers(len(self.tasks) + 1)), include)

    def _info(self, frames: np.ndarray | None = None) -> dict[str, Any]:
        mask = np.zeros(self.max_candidates, np.int8)
        mask[: len(self.tasks)] = 1
        info = {"candidates": [unambiguous_instruction(t) for t in self.tasks], "action_mask": mask,
                "goal": self.goal_image.copy(), "goal_instruction": unambiguous_instruction(self.goal_task)}
        if frames is not None:
            info["frames"] = frames
        return info

    def reset(self, *, seed: int | None = None,
              options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.scene = Scene.random(self.np_random)
        self.goal_task = random_task(self.scene, self.np_random, self.kinds)
        self.goal = apply_task(self.scene, self.goal_task)
        self.goal_image = render(self.goal, self.size)
        self.steps = 0
        self._offer(include=self.goal_task)
        return self._observe(), self._info()

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        if self.scene is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an index in 0..{self.max_candidates - 1}, "
                             f"got {action!r}")
        if action < len(self.tasks):
            task = self.tasks[int(action)]
            frames = run_task(self.scene, task, self.num_frames, self.size).frames
            self.scene = apply_task(self.scene, task)
        else:  # a masked index: nothing happens
            frames = np.repeat(render(self.scene, self.size)[None], self.num_frames, axis=0)
        self.steps += 1
        success = goal_reached(self.scene, self.goal, self.size)
        self._offer()
        return (self._observe(), float(success), success, self.steps >= self.max_steps and not success,
                self._info(frames))

    def render(self) -> np.ndarray:
        return render(self.scene, self.size)


gym.register(id=ENV_ID, entry_point="sim_bridge.simulator.gym_env:TabletopEnv")
