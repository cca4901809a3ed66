"""Goal-image planning with the node as the world model, in the tabletop simulator.

A goal image is made by executing a hidden random task from a random scene. At each decision
point the planner sends the current frames with several candidate instructions in ONE request,
picks the candidate whose predicted last frame is closest to the goal, and executes it in the
simulator; it stops when what it sees matches the goal or the step budget is spent.

Candidates are the feasible tasks of the trained kinds (push, put_on, put_next_to, pick_up; no
rotate), phrased with the canonical training template; a bounded random subset is offered, with
the hidden task included at the first step (goals are one task away).

The loop is `runtime.run_episode` (openpi-client's shape): `GoalEnvironment` (the simulator from
the goal's start scene), `PolicyAgent` (the node planner or the random baseline) and
`StepRecorder` (a subscriber); any of them can be swapped for the user's own.

Distance to the goal: every object is found by its colour (`locate_object`) in both images and
the mean pixel offset is taken; when any object is missing in any prediction or in the goal, all
candidates of that decision are ranked by pixel MSE instead, so one decision never mixes units.
Success is judged on the simulator's state, not on pixels: every object within
`follow_tolerance` of where it stands in the goal scene.

The baseline chooses uniformly at random among the same candidate sets (several trials per goal,
as it costs no requests), with the same stopping rule and budget.

With `--rerun FILE.rrd` each goal is also logged into a Rerun recording (`log_goal`; the layout of
`sim_bridge.common.rerun_log`), so every candidate's predicted future can be scrubbed beside the one
chosen, the frames the simulator then executed and the goal.

CLI: python -m sim_bridge.apps.planner --endpoint tcp://127.0.0.1:5555 --seeds N --out DIR
     [--rerun FILE.rrd]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from foresight_client.client import DEFAULT_ENDPOINT, ForesightClient
from tqdm import tqdm

from sim_bridge.apps.replay import NodeGeometry, mean_or_none
from sim_bridge.apps.runtime import run_episode
from sim_bridge.common.atomic_files import atomic_path, write_json
from sim_bridge.common.imaging import contact_sheet, fit_frames, write_gif, write_png
from sim_bridge.common.logs import setup_logging
from sim_bridge.common.rerun_log import RerunLog, episode_path, recording_to, rrd_path
from sim_bridge.common.tables import markdown_table
from sim_bridge.simulator.instructions import unambiguous_instruction as instruction
from sim_bridge.simulator.scoring import follow_tolerance, goal_reached, locate_object
from sim_bridge.simulator.tabletop import (
    Scene,
    Task,
    apply_task,
    random_task,
    render,
    run_task,
)
from sim_bridge.simulator.tasks import PLANNER_SEEDS, TRAINED_KINDS

log = logging.getLogger("sim_bridge.apps.planner")  # the same name when run with -m

PLANNER_KINDS = TRAINED_KINDS  # what the model was trained on
FIRST_SEED = PLANNER_SEEDS.start  # goal seeds: disjoint from training, evaluation and demo


@dataclass(frozen=True)
class PlannerConfig:
    """How the planner searches; stored in its summary."""

    max_candidates: int = 5  # instructions per request (the node takes at most 16)
    budget: int = 2  # decision steps per goal
    steps: int | None = None  # sampler steps per request; None: the node's default
    sample_seed: int = 0  # one noise seed for every candidate: they differ only by instruction
    random_trials: int = 8  # random-baseline runs per goal


@dataclass(frozen=True)
class Goal:
    """A start scene, the hidden task that leads to the goal, and the goal as the camera sees it."""

    seed: int
    scene: Scene
    task: Task
    final: Scene
    image: np.ndarray


def observe(scene: Scene, geometry: NodeGeometry) -> np.ndarray:
    """The camera frame of `scene` at the node's resolution."""
    side = max(geometry.height, geometry.width)
    return fit_frames(render(scene, side)[None], geometry.height, geometry.width)[0]


def make_goal(seed: int, geometry: NodeGeometry) -> Goal:
    rng = np.random.default_rng(seed)
    scene = Scene.random(rng)
    task = random_task(scene, rng, PLANNER_KINDS)
    final = apply_task(scene, task)
    return Goal(seed, scene, task, final, observe(final, geometry))


def candidates(scene: Scene, rng: np.random.Generator, limit: int,
               include: Task | None = None) -> list[Task]:
    """Up to `limit` feasible tasks of PLANNER_KINDS in a random order, `include` among them."""
    tasks = [t for t in scene.candidate_tasks() if t.kind in PLANNER_KINDS]
    others = [t for t in tasks if t != include]
    chosen = [others[i] for i in rng.permutation(len(others))[: limit - (include is not None)]]
    if include is not None:
        chosen.insert(int(rng.integers(len(chosen) + 1)), include)
    return chosen


def object_offsets(frame: np.ndarray, goal: np.ndarray,
                   colors: dict[str, tuple[int, int, int]]) -> np.ndarray | None:
    """Pixel distance of each object between `frame` and `goal`, found by colour; None when an
    object is not found in one of them."""
    offsets = []
    for rgb in colors.values():
        a, b = locate_object(frame, rgb), locate_object(goal, rgb)
        if a is None or b is None:
            return None
        offsets.append(np.hypot(a[0] - b[0], a[1] - b[1]))
    return np.array(offsets)


def rank(finals: np.ndarray, goal: np.ndarray,
         colors: dict[str, tuple[int, int, int]]) -> tuple[list[float], str]:
    """Distance of each predicted last frame to the goal, and which measure was used."""
    offsets = [object_offsets(f, goal, colors) for f in finals]
    if all(o is not None for o in offsets):
        return [float(o.mean()) for o in offsets], "object_px"
    mse = [float(np.mean((f.astype(np.float64) - goal.astype(np.float64)) ** 2)) for f in finals]
    return mse, "pixel_mse"


def reached(scene: Scene, goal: Goal, geometry: NodeGeometry) -> bool:
    """Ground truth: every object within follow_tolerance pixels of its place in the goal scene."""
    return goal_reached(scene, goal.final, max(geometry.height, geometry.width))


# A policy picks one of the candidate tasks from the context frames; it returns the index and
# what it wants recorded (e.g. the predictions it compared).
Policy = Callable[[np.ndarray, list[Task], Goal], tuple[int, dict]]


def node_policy(client: ForesightClient, config: PlannerConfig) -> Policy:
    """Ask the node for every candidate's future in one request; take the closest to the goal."""
    def choose(context: np.ndarray, tasks: list[Task], goal: Goal) -> tuple[int, dict]:
        colors = {o.name: o.rgb for o in goal.scene.objects}
        start = time.perf_counter()
        preds = client.predict(context, [instruction(t) for t in tasks], steps=config.steps,
                               seed=[config.sample_seed] * len(tasks))
        latency = time.perf_counter() - start
        distances, measure = rank(preds[:, -1], goal.image, colors)
        index = int(np.argmin(distances))
        return index, {"distances": distances, "measure": measure, "latency_s": latency,
                       "predictions": preds}
    return choose


def random_policy(rng: np.random.Generator) -> Policy:
    def choose(context: np.ndarray, tasks: list[Task], goal: Goal) -> tuple[int, dict]:
        return int(rng.integers(len(tasks))), {}
    return choose


class GoalEnvironment:
    """The simulator from a goal's start scene, as a runtime Environment. An observation holds
    the K context frames, the candidate tasks of this step and the goal; an action is
    {"index": chosen candidate, **anything to record}. The episode is complete when the camera
    shows the goal, no candidate is left or config.budget steps are spent. The candidate sets
    depend only on (goal seed, trial, step) and the current scene, so every agent sees the same
    first set. With `record`, executed frames are rendered (for media) and kept in the action."""

    def __init__(self, goal: Goal, geometry: NodeGeometry, config: PlannerConfig,
                 trial: int = 0, record: bool = False) -> None:
        self.goal, self.geometry, self.config = goal, geometry, config
        self.trial, self.record = trial, record
        self.colors = {o.name: o.rgb for o in goal.scene.objects}
        self.tol = follow_tolerance(max(geometry.height, geometry.width))

    def reset(self) -> None:
        self.scene = self.goal.scene
        self.history = [observe(self.scene, self.geometry)] * self.geometry.context_frames
        self.step = 0

    def _tasks(self) -> list[Task]:
        rng = np.random.default_rng([self.goal.seed, self.trial, self.step])
        return candidates(self.scene, rng, self.config.max_candidates,
                          self.goal.task if self.step == 0 else None)

    def is_episode_complete(self) -> bool:
        if self.step >= self.config.budget:
            return True
        seen = object_offsets(self.history[-1], self.goal.image, self.colors)
        return (seen is not None and seen.max() <= self.tol) or not self._tasks()

    def get_observation(self) -> dict:
        return {"context": np.stack(self.history[-self.geometry.context_frames:]),
                "tasks": self._tasks(), "goal": self.goal}

    def apply_action(self, action: dict) -> None:
        task = self.get_observation()["tasks"][action["index"]]
        if self.record:
            side = max(self.geometry.height, self.geometry.width)
            action["frames"] = fit_frames(run_task(self.scene, task, self.geometry.num_frames,
                                                   side).frames,
                                          self.geometry.height, self.geometry.width)
        self.scene = apply_task(self.scene, task)
        self.history += (list(action["frames"]) if self.record
                         else [observe(self.scene, self.geometry)])
        self.step += 1


class PolicyAgent:
    """A Policy (node planner or random choice) as a runtime Agent."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def get_action(self, observation: dict) -> dict:
        index, info = self.policy(observation["context"], observation["tasks"],
                                  observation["goal"])
        return {"index": index, **info}


class StepRecorder:
    """A runtime Subscriber keeping one record per decision step."""

    def __init__(self, goal: Goal) -> None:
        self.goal = goal
        self.steps: list[dict[str, Any]] = []

    def on_episode_start(self) -> None:
        self.steps = []

    def on_step(self, observation: dict, action: dict) -> None:
        tasks = observation["tasks"]
        task = tasks[action["index"]]
        info = {k: v for k, v in action.items() if k not in ("index", "frames")}
        self.steps.append({"candidates": [instruction(t) for t in tasks],
                           "chosen": instruction(task),
                           "true_task_offered": self.goal.task in tasks,
                           "chose_true_task": task == self.goal.task,
                           "context": observation["context"], "frames": action.get("frames"),
                           **info})

    def on_episode_end(self) -> None:
        pass


def pursue(goal: Goal, policy: Policy, geometry: NodeGeometry, config: PlannerConfig,
           trial: int = 0, record: bool = False) -> dict:
    """Run `policy` towards `goal` for up to config.budget steps through the runtime loop."""
    environment = GoalEnvironment(goal, geometry, config, trial, record)
    recorder = StepRecorder(goal)
    run_episode(environment, PolicyAgent(policy), [recorder])
    return {"seed": goal.seed, "goal_instruction": instruction(goal.task),
            "success": reached(environment.scene, goal, geometry), "steps": recorder.steps}


def _plain(step: dict) -> dict:
    """A step record without its arrays, for JSON."""
    return {k: v for k, v in step.items() if not isinstance(v, np.ndarray) and v is not None}


def write_episode_media(out: Path, goal: Goal, result: dict) -> dict[str, str]:
    """GIF: executed frames | chosen prediction | goal. PNG: each candidate's prediction per step."""
    panels, rows = [], []
    for step in result["steps"]:
        context, frames = step["context"], step["frames"]
        chosen = step["predictions"][step["candidates"].index(step["chosen"])]
        predicted = np.concatenate([context, chosen])
        for j in range(len(frames)):
            panels.append(np.concatenate([frames[j], _gap(frames[j]), predicted[j], _gap(frames[j]),
                                          goal.image], axis=1))
        rows += [np.concatenate([context, p, goal.image[None]]) for p in step["predictions"]]
    if not panels:  # goal already seen before any step
        panels = [np.concatenate([goal.image, _gap(goal.image), goal.image], axis=1)]
    video = np.stack(panels)
    scale = max(1, 192 // goal.image.shape[0])
    name = f"goal_{goal.seed}"
    with atomic_path(out / f"{name}.gif") as tmp:
        write_gif(tmp, video, fps=4, scale=scale)
    media = {"gif": f"{name}.gif"}
    if rows:
        with atomic_path(out / f"{name}_candidates.png") as tmp:
            write_png(tmp, contact_sheet(rows))
        media["candidates_png"] = f"{name}_candidates.png"
    return media


def _gap(frame: np.ndarray) -> np.ndarray:
    return np.full((frame.shape[0], 2, 3), 255, np.uint8)


def log_goal(recording: RerunLog, goal: Goal, result: dict) -> None:
    """One goal as episode `goal_<seed>` of a Rerun recording. Decision step s covers frames
    s*N .. s*N+N-1, as in the GIF: `context` (K frames), then `predicted` (the chosen candidate)
    and `candidates/<instruction>` (every candidate's prediction) beside `executed` (the N frames
    the simulator rendered for the chosen task). `goal` is the goal image, `goal_instruction` the
    hidden task, `instruction` the chosen instruction per step; per step the metrics `distance`
    (the chosen prediction's to the goal), `latency_s` and `chose_true_task`, and `success` at
    the step after the last."""
    path = episode_path(f"goal_{goal.seed}")
    recording.image([*path, "goal"], goal.image)
    recording.text([*path, "goal_instruction"], result["goal_instruction"])
    for s, step in enumerate(result["steps"]):
        first, k = s * len(step["frames"]), len(step["context"])
        index = step["candidates"].index(step["chosen"])
        recording.frames([*path, "context"], step["context"], first)
        recording.frames([*path, "predicted"], step["predictions"][index], first + k)
        for text, predicted in zip(step["candidates"], step["predictions"]):
            recording.frames([*path, "candidates", text], predicted, first + k)
        recording.frames([*path, "executed"], step["frames"], first)
        recording.text([*path, "instruction"], step["chosen"], step=s)
        recording.scalars([*path, "metrics"], s,
                          {"distance": step["distances"][index], "latency_s": step["latency_s"],
                           "chose_true_task": step["chose_true_task"]})
    recording.scalars([*path, "metrics"], len(result["steps"]), {"success": result["success"]})


def run_planner(client: ForesightClient, seeds: Sequence[int],
                out_dir: str | os.PathLike | None = None,
                config: PlannerConfig = PlannerConfig(), recording: RerunLog | None = None) -> dict:
    """Plan towards the goal of each seed with the node, and with random choice among the same
    candidates; returns (and writes to out_dir/planner_summary.json) the success rates. With
    `recording`, each goal the node pursued is logged there (`log_goal`)."""
    if not 1 <= config.max_candidates <= 16:
        raise ValueError(f"max_candidates must be in 1..16 (one request), "
                         f"got {config.max_candidates!r}")
    geometry = NodeGeometry.from_info(client.info())
    out = None if out_dir is None else Path(out_dir)
    policy = node_policy(client, config)
    episodes = []
    for seed in tqdm(seeds, desc="planner", unit="goal"):
        goal = make_goal(seed, geometry)
        result = pursue(goal, policy, geometry, config, record=True)
        randoms = [pursue(goal, random_policy(np.random.default_rng([seed, trial])), geometry,
                          config, trial)["success"] for trial in range(config.random_trials)]
        result["random_success_rate"] = float(np.mean(randoms))
        if out is not None:
            result["media"] = write_episode_media(out, goal, result)
        if recording is not None:
            log_goal(recording, goal, result)
        result["steps"] = [_plain(s) for s in result["steps"]]
        episodes.append(result)
    latencies = [s["latency_s"] for e in episodes for s in e["steps"]]
    summary = {
        "node": dataclasses.asdict(geometry), "config": dataclasses.asdict(config),
        "seeds": list(seeds), "goals": len(episodes),
        "planner_success_rate": mean_or_none([e["success"] for e in episodes]),
        "random_success_rate": mean_or_none([e["random_success_rate"] for e in episodes]),
        "first_step_true_task_rate": mean_or_none([e["steps"][0]["chose_true_task"]
                                            for e in episodes if e["steps"]]),
        # the time the robot waited on foresight: every decision's request, end to end
        "decisions": len(latencies), "planning_time_s": float(sum(latencies)),
        "mean_request_s": mean_or_none(latencies),
        "episodes": episodes,
    }
    if out is not None:
        write_json(out / "planner_summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    """Per-goal outcome as a markdown table, then the two success rates."""
    rows = [(e["seed"], "yes" if e["success"] else "no", f"{e['random_success_rate']:.2f}",
             len(e["steps"]), e["goal_instruction"]) for e in summary["episodes"]]
    table = markdown_table(("goal seed", "planner", "random", "steps", "goal instruction"), rows)
    return (f"{table}\nsuccess rate: planner {summary['planner_success_rate']:.2f}, random among the "
            f"same candidates {summary['random_success_rate']:.2f} "
            f"({summary['goals']} goals, {summary['config']['max_candidates']} candidates, "
            f"budget {summary['config']['budget']})\n"
            f"planning time: {summary['planning_time_s']:.1f} s over {summary['decisions']} requests"
            + (f" ({summary['mean_request_s']:.2f} s each)" if summary["decisions"] else ""))


def main(argv: list[str] | None = None) -> None:
    """Plan towards simulated goal images with a running foresight node; compare with random."""
    parser = argparse.ArgumentParser(prog="python -m sim_bridge.apps.planner", description=main.__doc__)
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="node endpoint (%(default)s)")
    parser.add_argument("--seeds", type=int, default=10, help="number of goals")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED, help="seed of the first goal")
    parser.add_argument("--out", type=Path, required=True, help="folder for the summary and GIFs")
    parser.add_argument("--candidates", type=int, default=PlannerConfig.max_candidates)
    parser.add_argument("--budget", type=int, default=PlannerConfig.budget, help="steps per goal")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: node's)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--rerun", type=rrd_path, default=None, metavar="FILE.rrd",
                        help="also write a Rerun recording: every candidate's prediction, the "
                             "executed frames and the goal per step (needs rerun-sdk)")
    args = parser.parse_args(argv)
    setup_logging()
    config = PlannerConfig(max_candidates=args.candidates, budget=args.budget, steps=args.steps)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    with (recording_to(args.rerun, "foresight-planner") as recording,
          ForesightClient(args.endpoint, timeout_s=args.timeout) as client):
        summary = run_planner(client, list(seeds), args.out, config, recording)
    print(format_table(summary))
    print(f"summary: {args.out / 'planner_summary.json'}; GIFs: {args.out}"
          + (f"; Rerun: {args.rerun}" if args.rerun else ""))


if __name__ == "__main__":
    main()
