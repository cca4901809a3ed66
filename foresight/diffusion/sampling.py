"""Samplers as small functions of (model, x, sigmas), and the two-scale guidance wrapper.

A sampler only calls `model(x, sigma)`; guidance lives in a wrapper, so the samplers read line by
line against their papers: Euler and Heun (Karras et al. 2022, Algorithm 1), DPM-Solver++(2M)
(Lu et al. 2022, Algorithm 2). `SOLVERS` names them for configs and requests; `unet_passes`
says how many model calls each makes for a schedule, the cost a comparison must hold equal.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from foresight.diffusion.edm import Denoiser, karras_sigmas
from foresight.models.aid import Conditions


def in_guidance_interval(sigma: float, interval: tuple[float, float] | None) -> bool:
    """Whether a step at noise level sigma runs all guidance branches; None means every step."""
    return interval is None or interval[0] < sigma <= interval[1]


def one_branch(scale_frame: float, scale_text: float) -> bool:
    """At s_V = s_T = 1 the guided denoiser is D(z, c_V, c_T) exactly: the full condition alone
    (a distilled model's sampler), one UNet branch instead of three."""
    return scale_frame == 1 and scale_text == 1


class TwoScaleGuidance(nn.Module):
    """InstructPix2Pix-style guidance with a frame scale s_V and a text scale s_T.

    D = D(z, 0, 0) + s_V (D(z, c_V, 0) - D(z, 0, 0)) + s_T (D(z, c_V, c_T) - D(z, c_V, 0)).
    The three branches run as ONE batched UNet call per step: conditions are stacked
    [unconditional ; frames only ; frames + text] along the batch. With an `interval`
    (low, high), steps at sigma outside low < sigma <= high run only D(z, c_V, c_T): a third
    of the UNet work, where guidance changes little (Kynkaanniemi et al. 2024).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        cond: Conditions,
        scale_frame: float,
        scale_text: float,
        interval: tuple[float, float] | None = None,
    ) -> None:
        """cond: conditions for 3B clips in branch order (`AIDModel.guidance_conditions`)."""
        super().__init__()
        self.denoiser = denoiser
        self.cond = cond
        self.full = cond.branch(2, 3)
        self.scale_frame = scale_frame
        self.scale_text = scale_text
        self.interval = interval

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if one_branch(self.scale_frame, self.scale_text) or not in_guidance_interval(float(sigma[0]), self.interval):
            return self.denoiser(x, sigma, self.full)
        out = self.denoiser(torch.cat([x] * 3), torch.cat([sigma] * 3), self.cond)
        d_uncond, d_frame, d_full = out.chunk(3)
        return d_uncond + self.scale_frame * (d_frame - d_uncond) + self.scale_text * (d_full - d_frame)


@torch.no_grad()
def sample_euler(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    disable: bool = True,
) -> torch.Tensor:
    """Euler steps of the probability-flow ODE (Karras et al. 2022, Algorithm 1 without Heun).

    x starts as sigmas[0] * standard normal noise, in float32 (or float64): the state keeps x's
    dtype whatever the model computes in, since the model's output is cast back to it. sigmas is
    float64 and ends at 0.
    """
    batch = x.shape[0]
    for i in tqdm(range(len(sigmas) - 1), disable=disable, desc="sampling"):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur.to(x.dtype).expand(batch)).to(x.dtype)
        d_cur = (x - denoised) / t_cur.to(x.dtype)  # dx/dt at t_cur
        x = x + (t_next - t_cur).to(x.dtype) * d_cur  # step to t_next
        if callback is not None:
            callback(i, denoised)
    return x


@torch.no_grad()
def sample_heun(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    disable: bool = True,
) -> torch.Tensor:
    """Heun's second-order steps of the probability-flow ODE (Karras et al. 2022, Algorithm 1,
    no churn): an Euler step, then the slope at its end averaged in; the last step, to sigma 0,
    stays Euler. 2n - 1 model calls for n steps. State dtype as in `sample_euler`."""
    batch = x.shape[0]
    for i in tqdm(range(len(sigmas) - 1), disable=disable, desc="sampling"):
        t_cur, t_next = sigmas[i].to(x.dtype), sigmas[i + 1].to(x.dtype)
        denoised = model(x, t_cur.expand(batch)).to(x.dtype)
        d_cur = (x - denoised) / t_cur  # dx/dt at t_cur (line 4)
        x_next = x + (t_next - t_cur) * d_cur  # Euler step (line 5)
        if sigmas[i + 1] > 0:  # second-order correction (lines 6-8)
            d_prime = (x_next - model(x_next, t_next.expand(batch)).to(x.dtype)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
        if callback is not None:
            callback(i, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    disable: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), in EDM's parametrisation (alpha = 1,
    lambda = -log sigma): each step is the exact solution of the ODE's linear part with the
    denoised estimate extrapolated from this step's and the previous one's; the first step and
    the last (to sigma 0) are first order. One model call per step."""
    batch = x.shape[0]
    denoised_prev, h_prev = None, None
    for i in tqdm(range(len(sigmas) - 1), disable=disable, desc="sampling"):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma.to(x.dtype).expand(batch)).to(x.dtype)
        if sigma_next == 0:
            x = denoised  # the ODE's end: the denoised estimate itself
        else:
            h = torch.log(sigma / sigma_next)  # lambda_next - lambda
            d = denoised
            if denoised_prev is not None:  # second order: D = (1 + 1/2r) D_i - 1/2r D_{i-1}, r = h_prev / h
                r = h_prev / h
                d = (1 + 1 / (2 * r)).to(x.dtype) * denoised - (1 / (2 * r)).to(x.dtype) * denoised_prev
            x = (sigma_next / sigma).to(x.dtype) * x - torch.expm1(-h).to(x.dtype) * d
            h_prev = h
        denoised_prev = denoised
        if callback is not None:
            callback(i, denoised)
    return x


@torch.no_grad()
def sample_consistency(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    disable: bool = True,
    noise: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; LCM, Luo et al. 2023): at
    each level a consistency model maps x straight to its clean estimate, and fresh noise takes
    that estimate to the next level; the last estimate is the sample. One model call per step.

    noise: draws standard normal noise of x's shape (the pipeline's per-request generators, so a
    seed gives the same sample in any batch); None uses torch's global generator.
    """
    batch = x.shape[0]
    for i in tqdm(range(len(sigmas) - 1), disable=disable, desc="sampling"):
        denoised = model(x, sigmas[i].to(x.dtype).expand(batch)).to(x.dtype)
        if sigmas[i + 1] > 0:
            fresh = noise() if noise is not None else torch.randn_like(x)
            x = denoised + sigmas[i + 1].to(x.dtype) * fresh.to(x)
        else:
            x = denoised
        if callback is not None:
            callback(i, denoised)
    return x


def sampling_sigmas(solver: str, steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The noise levels a solver visits, ending at 0. ODE solvers: Karras et al.'s `steps` levels
    from sigma_max to sigma_min. Consistency sampling: the first `steps` of `steps + 1` such
    levels, so no call is spent at sigma_min, where the denoiser returns its input (LCM's
    4-step schedule likewise stops at a quarter of the way, not at the end)."""
    if solver != "consistency":
        return karras_sigmas(steps, sigma_min, sigma_max)
    levels = karras_sigmas(steps + 1, sigma_min, sigma_max)
    return torch.cat([levels[:steps], levels.new_zeros(1)])


SOLVERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m,
           "consistency": sample_consistency}


def unet_passes(solver: str, steps: int) -> int:
    """Model calls a solver makes over `steps` steps of a schedule ending at 0."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    return 2 * steps - 1 if solver == "heun" else steps
