"""SVD's EDM preconditioning (v-prediction, sigma_data = 1) and its denoising loss."""

from __future__ import annotations

import torch
from torch import nn

from foresight.models.aid import Conditions


class Denoiser(nn.Module):
    """D(x; sigma, c) = c_skip x + c_out F(c_in x; c_noise, c), the SVD parameterisation.

    For v-prediction with sigma_data = 1: c_skip = 1 / (s^2 + 1), c_out = -s / sqrt(s^2 + 1),
    c_in = 1 / sqrt(s^2 + 1), c_noise = log(s) / 4 (what diffusers' EulerDiscreteScheduler
    with timestep_type="continuous" feeds SVD's UNet).
    """

    def __init__(self, unet: nn.Module, dtype: torch.dtype | None = None) -> None:
        """dtype: what the UNet computes in (the model's); None = the dtype of x."""
        super().__init__()
        self.unet = unet
        self.dtype = dtype

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """x (B, F, 4, h, w) noisy latents, sigma (B,) -> denoised latents, same shape and dtype as x.

        The preconditioning runs in x's dtype; only the UNet's inputs are cast to `dtype` and its
        output back, as EDM's sampler does with a half-precision network.
        """
        dtype = self.dtype or x.dtype
        s = sigma.to(x.dtype).view(-1, 1, 1, 1, 1)
        c_skip = 1 / (s**2 + 1)
        c_out = -s / (s**2 + 1).sqrt()
        c_in = 1 / (s**2 + 1).sqrt()
        c_noise = sigma.log().to(x.dtype) / 4
        model_in = torch.cat([(c_in * x).to(dtype), cond.cond_latents.to(dtype)], dim=2)
        out = self.unet(model_in, c_noise.to(dtype), cond.context.to(dtype), cond.added_time_ids.to(dtype))
        return c_skip * x + c_out * out.to(x.dtype)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (eq. 5) noise levels in float64, with the final 0 appended."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sample_training_sigmas(
    batch: int, generator: torch.Generator | None, p_mean: float = 0.7, p_std: float = 1.6
) -> torch.Tensor:
    """log(sigma) ~ N(P_mean, P_std^2), the SVD fine-tuning setting (VPP, SVD-XT)."""
    return (torch.randn(batch, generator=generator, dtype=torch.float64) * p_std + p_mean).exp()


def edm_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    cond: Conditions,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    target_frames: slice | None = None,
    weight_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """E[lambda(sigma) ||D(x0 + sigma n; sigma, c) - x0||^2], lambda = (sigma^2 + 1) / sigma^2.

    target_frames restricts the loss to the frames to predict (the context frames are given);
    weight_map (broadcastable to x0) weights latent pixels.
    """
    s = sigma.to(x0.dtype).view(-1, 1, 1, 1, 1)
    denoised = denoiser(x0 + s * noise, sigma, cond)
    weight = (s**2 + 1) / s**2
    err = weight * (denoised - x0) ** 2
    if weight_map is not None:
        err = err * weight_map
    if target_frames is not None:
        err = err[:, target_frames]
    return err.mean()

