"""diffusers' stock StableVideoDiffusionPipeline against our node, on equal-size weights.

Same resolution, frames and steps; the stock pipeline keeps its default guidance
(min/max_guidance_scale 1 -> 3: two branches per step), decodes all frames in one chunk and
returns numpy. The node answers the same job through ZeroMQ with its three guidance branches.
A profile of one request of each (UNet calls timed by forward hooks) says where the time goes.
"""

from __future__ import annotations

import inspect
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableVideoDiffusionPipeline
from torch import nn

from bench.core import INSTRUCTIONS, Plan, measure_side_by_side
from bench.node import client, predict
from foresight.diffusion.sampling import in_guidance_interval, sampling_sigmas
from foresight.pipeline import ForesightPipeline, frames_to_tensor


def encoder_image(frame: np.ndarray, pipe: StableVideoDiffusionPipeline) -> torch.Tensor:
    """The context frame as the stock pipeline's tensor input: (1, 3, s, s) in [0, 1] at the image encoder's size.

    A PIL image would be resized to 224 for CLIP, which a small-config encoder (32 px) rejects;
    a tensor skips that resize, and the pipeline still scales it to height x width for the VAE.
    """
    size = pipe.image_encoder.config.image_size
    x = (frames_to_tensor(frame[None]) + 1) / 2
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def run_stock(pipe: StableVideoDiffusionPipeline, image: torch.Tensor, height: int, width: int,
              num_frames: int, steps: int) -> np.ndarray:
    return pipe(
        image.to(pipe.device), height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
        decode_chunk_size=num_frames, output_type="np", generator=torch.Generator().manual_seed(0),
    ).frames


def stock_guidance() -> dict[str, float]:
    """The stock pipeline's default guidance scales, read off its signature rather than restated."""
    params = inspect.signature(StableVideoDiffusionPipeline.__call__).parameters
    return {name: params[name].default for name in ("min_guidance_scale", "max_guidance_scale")}


@contextmanager
def unet_profile(unet: nn.Module) -> Iterator[dict]:
    """Count and time the calls of a UNet module, the clip-passes (batch entries) they run, the
    largest batch and the context length it sees."""
    stats = {"calls": 0, "seconds": 0.0, "samples": 0, "batch": 0, "context_tokens": None}
    started: list[float] = []

    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        stats["samples"] += int(args[0].shape[0])
        stats["batch"] = max(stats["batch"], int(args[0].shape[0]))
        stats["context_tokens"] = None if context is None else int(context.shape[1])
        started.append(time.perf_counter())

    def after(module: nn.Module, args: tuple, output: object) -> None:
        stats["calls"] += 1
        stats["seconds"] += time.perf_counter() - started.pop()

    handles = [unet.register_forward_pre_hook(before, with_kwargs=True), unet.register_forward_hook(after)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def top_ops(run: Callable[[], object], n: int = 6) -> list[dict]:
    """The operators with the most self CPU time in one request (torch.profiler), with their share."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total} for e in events[:n]]


def profile(run: Callable[[], object], unet: nn.Module) -> dict:
    """One request: total time, time in the UNet, the rest (encoders, conditions, VAE decode); then the top operators."""
    with unet_profile(unet) as stats:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    return stats | {"total_s": total, "other_s": total - stats["seconds"],
                    "per_call_s": stats["seconds"] / max(stats["calls"], 1), "top_ops": top_ops(run)}


def guided_steps(pipe: ForesightPipeline, steps: int) -> int:
    """Steps that run all three guidance branches; the rest run one."""
    sigmas = sampling_sigmas(pipe.defaults.solver, steps, pipe.model.sigma_min, pipe.model.sigma_max)[:-1]
    return sum(in_guidance_interval(float(s), pipe.defaults.guidance_interval) for s in sigmas)


def compare(pipe: ForesightPipeline, stock: StableVideoDiffusionPipeline, endpoints: dict[str, str],
            default_steps: int, plan: Plan) -> dict:
    """Stock pipeline at equal steps against the node (each backend) at equal and at default steps."""
    h, w, n = pipe.height, pipe.width, pipe.num_frames
    frames = np.random.default_rng(0).integers(0, 256, (pipe.context_frames, h, w, 3), dtype=np.uint8)
    image = encoder_image(frames[0], stock)
    text = [INSTRUCTIONS[0]]
    eq = plan.equal_steps
    out = {"height": h, "width": w, "num_frames": n, "equal_steps": eq, "default_steps": default_steps,
           "stock_guidance": stock_guidance(),
           "node_guidance": {"frame": pipe.defaults.guidance_frame, "text": pipe.defaults.guidance_text,
                             "interval": pipe.defaults.guidance_interval}}
    cases = {"stock": lambda: run_stock(stock, image, h, w, n, eq)}
    with ExitStack() as stack:
        for backend, endpoint in endpoints.items():
            node = stack.enter_context(client(endpoint))
            for steps in dict.fromkeys((eq, default_steps)):
                cases[f"{backend}@{steps}"] = lambda node=node, steps=steps: predict(node, frames, text, steps)
        timings = measure_side_by_side(cases, plan.runs, plan.warmup, f"stock SVD pipeline ({eq} steps) and nodes")
    out["stock"] = timings.pop("stock")
    out["node"] = {}
    for case, t in timings.items():
        backend, steps = case.split("@")
        out["node"][case] = {"backend": backend, "steps": int(steps), "timing": t,
                             "guided_steps": guided_steps(pipe, int(steps)),
                             "ratio_to_stock": t.median / out["stock"].median}
    out["profile"] = {
        "stock": profile(lambda: run_stock(stock, image, h, w, n, eq), stock.unet),
        "ours_torch": profile(lambda: pipe.predict(frames, text, steps=eq), pipe.model.unet),
    }
    return out
