"""A closed loop in openpi-client's runtime shape: an environment, an agent, subscribers.

The loop only moves observations and actions between them, so a user swaps in their own
environment (a real robot, `sim_bridge.simulator.gym_env`) or agent (another planner or policy) without
touching the rest, and records what happens by adding a subscriber.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Environment(Protocol):
    def reset(self) -> None: ...
    def is_episode_complete(self) -> bool: ...
    def get_observation(self) -> dict: ...
    def apply_action(self, action: dict) -> None: ...


class Agent(Protocol):
    def get_action(self, observation: dict) -> dict: ...


class Subscriber(Protocol):
    def on_episode_start(self) -> None: ...
    def on_step(self, observation: dict, action: dict) -> None: ...
    def on_episode_end(self) -> None: ...


def run_episode(environment: Environment, agent: Agent,
                subscribers: Sequence[Subscriber] = (), max_steps: int | None = None) -> int:
    """Reset, then observe -> act -> apply until the environment says the episode is complete
    (or `max_steps`); returns the number of steps taken."""
    environment.reset()
    for subscriber in subscribers:
        subscriber.on_episode_start()
    steps = 0
    while not environment.is_episode_complete() and (max_steps is None or steps < max_steps):
        observation = environment.get_observation()
        action: Any = agent.get_action(observation)
        environment.apply_action(action)
        for subscriber in subscribers:
            subscriber.on_step(observation, action)
        steps += 1
    for subscriber in subscribers:
        subscriber.on_episode_end()
    return steps
