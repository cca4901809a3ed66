"""Latent consistency distillation of an AID model into a one-branch few-step student.

Recipe (LCM, Luo et al. 2023; AnimateLCM for SVD, Wang et al. 2024), on EDM's parametrisation,
where the denoiser D(x; sigma) is already a consistency function's form (c_skip -> 1, c_out -> 0
as sigma -> 0):
1. a clip's clean latents x0, a teacher level pair (s_hi, s_lo) `skip` levels apart on the
   teacher's Karras grid, x_hi = x0 + s_hi * noise;
2. the teacher (the AID weights the run started from, no LoRA) takes one guided Euler step of the
   probability-flow ODE from s_hi to s_lo, at its own s_V and s_T: guidance folds into the target;
3. the target network (an EMA of the student's weights) denoises x_lo at s_lo with the full
   condition alone;
4. the student (AID weights + a LoRA on the frozen UNet) denoises x_hi at s_hi with the full
   condition alone; loss = pseudo-Huber(student - target) on the predicted frames.
Teacher, target and student are one module whose trainable tensors are swapped in and out
(`swapped`): the frozen UNet, VAE and encoders exist once. The stage that trains with it is
`foresight.training.stages.DistillStage`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from foresight.diffusion.edm import Denoiser, karras_sigmas
from foresight.diffusion.sampling import TwoScaleGuidance, in_guidance_interval, one_branch
from foresight.models.aid import AIDModel, Conditions


@contextmanager
def swapped(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run with `values` in place of `params` (same names), then put the parameters' own back."""
    own = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(values[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(own[n])


def pseudo_huber(diff: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(d^2 + c^2) - c per element (Song & Dhariwal 2023): L2 near 0, L1 far out."""
    return (diff.float() ** 2 + c**2).sqrt() - c


def teacher_euler_step(denoiser: Denoiser, cond: Conditions, x: torch.Tensor, sigma: torch.Tensor,
                       sigma_next: torch.Tensor, scale_frame: float, scale_text: float,
                       interval: tuple[float, float] | None) -> torch.Tensor:
    """One Euler step of the teacher's guided probability-flow ODE from `sigma` to `sigma_next`,
    per clip: clips whose sigma lies in the guidance interval take the two-scale guided
    denoiser, the others the full condition alone, as the teacher's sampler does at that level.
    cond: the three branches' conditions of the B clips (`AIDModel.guidance_conditions`)."""
    b = x.shape[0]
    denoised = denoiser(x, sigma, cond.branch(2, 3))
    unit = one_branch(scale_frame, scale_text)
    inside = torch.tensor([not unit and in_guidance_interval(float(s), interval) for s in sigma])
    if inside.any():
        idx = inside.nonzero().flatten().to(x.device)
        guided = TwoScaleGuidance(denoiser, cond.select(torch.cat([idx, idx + b, idx + 2 * b])), scale_frame, scale_text)
        denoised[idx] = guided(x[idx], sigma[idx])
    view = (-1,) + (1,) * (x.dim() - 1)
    return x + (sigma_next - sigma).view(view) * (x - denoised) / sigma.view(view)


def consistency_distillation_loss(
    model: AIDModel,
    params: dict[str, nn.Parameter],
    teacher: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    video: torch.Tensor,
    instructions: Sequence[str],
    states: Sequence[Sequence[str]],
    generator: torch.Generator,
    teacher_steps: int,
    skip: int,
    scale_frame: float,
    scale_text: float,
    interval: tuple[float, float] | None,
    huber_c: float,
    motion_weight: float = 0.0,
) -> torch.Tensor:
    """One batch's loss; `params` are the student's trainable parameters by name, `teacher` and
    `target` the values to swap in for the teacher's and the target network's passes.
    motion_weight: as in `aid_loss`, extra weight on latent pixels that change from the first frame.
    """
    b, k = video.shape[0], model.config.context_frames
    video = video.to(model.device, model.dtype)
    aug = torch.randn(video[:, :k].shape, generator=generator).to(video)
    with torch.no_grad():
        x0 = model.encode_latents(video)
    grid = karras_sigmas(teacher_steps, model.sigma_min, model.sigma_max)[:-1].to(model.device)
    n = torch.randint(0, teacher_steps - skip, (b,), generator=generator).to(model.device)
    s_hi, s_lo = grid[n].to(x0.dtype), grid[n + skip].to(x0.dtype)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_hi = x0 + s_hi.view(-1, 1, 1, 1, 1) * noise
    denoiser = Denoiser(model.unet)
    context = video[:, :k]
    with torch.no_grad(), swapped(params, teacher):
        x_lo = teacher_euler_step(denoiser, model.guidance_conditions(context, instructions, states, noise=aug),
                                  x_hi, s_hi, s_lo, scale_frame, scale_text, interval)
    with torch.no_grad(), swapped(params, target):
        full = model.conditions(context, instructions, states, noise=aug)
        y = denoiser(x_lo, s_lo, full)
    pred = denoiser(x_hi, s_hi, model.conditions(context, instructions, states, noise=aug))
    err = pseudo_huber(pred - y, huber_c)
    if motion_weight:
        err = err * (1 + motion_weight * (x0 - x0[:, :1]).abs().mean(2, keepdim=True).clamp(max=1.0))
    return err[:, k:].mean()
