"""The distilled student's UNet time against its teacher's at the Bridge shape: the `svd-bridge`
preset's sampler against `svd-bridge-turbo`'s, on the real SVD UNet with AID's adapters (random
weights built from config, bf16, 256x256, 16 frames).

    python -m bench.distilled_scale                  # CPU: about 4 minutes on 2 cores, 7 GiB
    python -m bench.distilled_scale --device cuda    # also a stage of `python3 -m bench.gpu_check`

Section 8 of `python -m bench` times the embedded `tiny-turbo` against `tiny`, whose default
guides 2 of its 8 steps, on a CPU where the tiny UNet's three-clip call costs only about 2.4
one-clip calls. At the users' scale the ratio is set by the two presets' samplers and by what a
three-clip call costs against a one-clip call at full size; this measures the second (side by
side, interleaved) and counts the first by running each preset's solver on a stand-in model.
Only the UNet is counted: the encoders, the DQFormer and the VAE run once per request on either
side (the student decodes with its own frame decoder where it has one).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

from bench.backends import sync_for
from bench.core import Timing, measure_side_by_side
from foresight.config import AIDConfig, SamplerSettings
from foresight.diffusion.sampling import SOLVERS, in_guidance_interval, one_branch, sampling_sigmas
from foresight.loading import SVD_SIGMAS
from foresight.training.config import load_jobs
from sim_bridge.common.logs import setup_logging

TEACHER, STUDENT = "svd-bridge", "svd-bridge-turbo"


def real_unet_step_inputs(device: str, batch: int = 3, frames: int = 16, size: int = 256):
    """The real config's UNet (SVD's defaults + AID adapters) and one guided step's inputs, bf16."""
    from diffusers import UNetSpatioTemporalConditionModel

    from foresight.models.unet import AdaptedUNet

    config = AIDConfig(height=size, width=size, num_frames=frames)
    dtype = torch.bfloat16
    with torch.device(device):
        unet = AdaptedUNet(UNetSpatioTemporalConditionModel().to(dtype), config.adapters).eval()
        tokens = 1 + config.dqformer.condition_tokens(config.text_max_length)  # image token ; ME ; DE_i
        g = torch.Generator(device).manual_seed(0)
        inputs = (torch.randn(batch, frames, 8, size // 8, size // 8, generator=g, dtype=dtype),
                  torch.zeros(batch, dtype=dtype),
                  torch.randn(batch * frames, tokens, unet.config.cross_attention_dim, generator=g, dtype=dtype),
                  torch.tensor([[6.0, 127.0, 0.02]] * batch, dtype=dtype))
    return unet, inputs


def call_clips(sampler: SamplerSettings, sigma_min: float, sigma_max: float) -> list[int]:
    """Clips in each UNet call of a one-instruction request: 3 where the guidance branches run (in
    the guidance interval, scales not both 1), 1 elsewhere. Found by running the solver itself on a
    stand-in model, so Heun's extra calls and the interval's edges count as the pipeline's do."""
    sigmas = sampling_sigmas(sampler.solver, sampler.steps, sigma_min, sigma_max)
    clips = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        guided = not one_branch(sampler.guidance_frame, sampler.guidance_text) and in_guidance_interval(
            float(sigma[0]), sampler.guidance_interval)
        clips.append(3 if guided else 1)
        return torch.zeros_like(x)

    x = torch.zeros(1, 1, dtype=torch.float64)
    extra = {"noise": lambda: torch.zeros_like(x)} if sampler.solver == "consistency" else {}
    SOLVERS[sampler.solver](model, x, sigmas, **extra)
    return clips


def time_calls(unet: torch.nn.Module, inputs: tuple, runs: int, sync=None) -> dict[int, Timing]:
    """One-clip and three-clip UNet calls, side by side: `inputs` are a three-clip call's."""
    sample, timestep, context, time_ids = inputs
    frames = sample.shape[1]
    with torch.no_grad():
        return measure_side_by_side(
            {1: lambda: unet(sample[:1], timestep[:1], context[:frames], time_ids[:1]),
             3: lambda: unet(sample, timestep, context, time_ids)},
            runs=runs, warmup=1, label="UNet call, 1 and 3 clips", sync=sync)


def per_request(one_clip_s: float, three_clips_s: float, teacher: str = TEACHER, student: str = STUDENT) -> dict:
    """Each preset's UNet calls per request and their time at these call times; the student's over the teacher's."""
    out = {}
    for who, preset in (("teacher", teacher), ("student", student)):
        sampler = load_jobs(preset)[-1].model.aid.sampler
        clips = call_clips(sampler, *SVD_SIGMAS)
        out[who] = {"preset": preset, **asdict(sampler), "calls": len(clips), "clip_passes": sum(clips),
                    "unet_s": sum(one_clip_s if c == 1 else three_clips_s for c in clips)}
    return {"one_clip_s": one_clip_s, "three_clips_s": three_clips_s, "three_over_one": three_clips_s / one_clip_s,
            **out, "ratio": out["student"]["unet_s"] / out["teacher"]["unet_s"]}


def unet_ratio(device: str = "cpu", runs: int = 2, teacher: str = TEACHER, student: str = STUDENT) -> dict:
    """Time the real UNet's calls on `device`, then `per_request` for the two presets."""
    unet, inputs = real_unet_step_inputs(device, batch=3)
    sync = sync_for(device)
    timings = time_calls(unet, inputs, runs, sync)
    shape = {"size": inputs[0].shape[-1] * 8, "frames": inputs[0].shape[1], "dtype": "bf16"}
    return {"device": torch.cuda.get_device_name() if sync else "cpu", "shape": shape,
            **per_request(timings[1].median, timings[3].median, teacher, student)}


def describe(result: dict) -> str:
    t, s = result["teacher"], result["student"]
    return "\n".join([
        f"UNet at {result['shape']['size']}x{result['shape']['size']}x{result['shape']['frames']} "
        f"({result['shape']['dtype']}, {result['device']}): 1 clip {result['one_clip_s']:.2f} s, "
        f"3 clips {result['three_clips_s']:.2f} s ({result['three_over_one']:.2f}x)",
        f"teacher {t['preset']}: {t['calls']} calls ({t['solver']}, {t['clip_passes']} clip-passes) {t['unet_s']:.1f} s",
        f"student {s['preset']}: {s['calls']} calls ({s['solver']}, {s['clip_passes']} clip-passes) {s['unet_s']:.1f} s",
        f"student / teacher, UNet per request: {result['ratio']:.3f}x",
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.distilled_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=2, help="timed calls of each size after one warm-up")
    parser.add_argument("--teacher", default=TEACHER, help="a training preset or config whose AID sampler is the teacher's")
    parser.add_argument("--student", default=STUDENT, help="the distilled preset or config")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    setup_logging()
    result = unet_ratio(args.device, args.runs, args.teacher, args.student)
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return result


if __name__ == "__main__":
    main()
