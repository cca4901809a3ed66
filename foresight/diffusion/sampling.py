"""Samplers as small functions of (model, x, sigmas), and the two-scale guidance wrapper.

A sampler only calls `model(x, sigma, **extra_args)`; guidance lives in a wrapper, so the
samplers read line by line against Karras et al. (2022), Algorithm 1/2.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from foresight.diffusion.edm import Denoiser
from foresight.models.aid import Conditions


def in_guidance_interval(sigma: float, interval: tuple[float, float] | None) -> bool:
    """Whether a step at noise level sigma runs all guidance branches; None means every step."""
    return interval is None or interval[0] < sigma <= interval[1]


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
        if not in_guidance_interval(float(sigma[0]), self.interval):
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
