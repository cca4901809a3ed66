"""Latency as frames, resolution and sampling steps grow, with the growth fitted and named.

Measured in process with PyTorch eager (the node adds a constant, see the overhead section). Frames and resolution
need a model built for them (DE queries are sized for N frames), so each point gets a variant of
the model's architecture with fresh adapters and DQFormer; their weights do not change the time.
The frames and resolution series run at a few steps: the steps series shows time is linear in
steps, so fewer steps change the scale of those series, not their shape.
"""

from __future__ import annotations

from tqdm import tqdm

from bench.core import INSTRUCTIONS, Plan, fit_growth, measure, random_frames
from bench.models import ModelSource
from foresight.model_dir import LoadedModel
from foresight.models.aid import AIDModel
from foresight.pipeline import ForesightPipeline


def _time(model: AIDModel, steps: int, plan: Plan, label: str) -> dict:
    pipe = ForesightPipeline(LoadedModel.of(model))  # an architecture variant for timing: template states
    frames = random_frames(pipe.context_frames, pipe.height, pipe.width)
    timing = measure(lambda: pipe.predict(frames, [INSTRUCTIONS[0]], steps=steps), plan.scaling_runs, plan.warmup, label)
    return {"timing": timing, "steps": steps, "num_frames": pipe.num_frames, "height": pipe.height, "width": pipe.width}


def series(source: ModelSource, model: AIDModel, default_steps: int, plan: Plan, device: str) -> dict:
    """Three series (frames, side, steps), each a list of points and a growth fit."""
    text = source.text_encoder()
    cfg = model.config
    fixed = plan.scaling_fixed_steps
    points: dict[str, list[tuple[int, dict]]] = {"frames": [], "side": [], "steps": []}
    work = [("frames", n) for n in plan.scaling_frames] + [("side", s) for s in plan.scaling_sides]
    for axis, value in tqdm(work, desc="scaling: frames, resolution", leave=False):
        changes = {"num_frames": value} if axis == "frames" else {"height": value, "width": value}
        variant = source.variant(text, device, **changes)
        points[axis].append((value, _time(variant, fixed, plan, f"{axis} {value}")))
        del variant
    for steps in plan.scaling_steps:
        points["steps"].append((steps, _time(model, steps, plan, f"steps {steps}")))
    out = {"base": {"num_frames": cfg.num_frames, "height": cfg.height, "width": cfg.width,
                    "fixed_steps": fixed, "default_steps": default_steps}}
    for axis, pts in points.items():
        xs = [x for x, _ in pts]
        growth = fit_growth(xs, [p["timing"].median for _, p in pts])
        out[axis] = {"points": [{"x": x} | p for x, p in pts], "growth": growth}
    return out
