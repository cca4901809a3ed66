"""Task kinds and seed ranges of the tabletop simulator, defined once for every user.

Seeds pick a scene, a task and its wording (`tabletop.make_episode(seed)`); the ranges below are
disjoint so no evaluation, demo or planner episode is ever seen in training.
"""

from __future__ import annotations

TASK_KINDS = ("push", "put_on", "put_next_to", "pick_up", "rotate")
# What the models are trained and evaluated on, and what the planner offers: rotate is left out
# (a 45-degree turn of a small object is a few pixels at 64x64).
TRAINED_KINDS = ("push", "put_on", "put_next_to", "pick_up")

TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEEDS = range(1_000_000, 2_000_000)
DEMO_SEEDS = range(2_000_000, 2_500_000)
PLANNER_SEEDS = range(2_500_000, 3_000_000)
