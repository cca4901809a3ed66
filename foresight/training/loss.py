"""One AID training step: EDM denoising loss on adapters + DQFormer, with condition dropout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from foresight.diffusion.edm import Denoiser, edm_loss, sample_training_sigmas
from foresight.models.aid import AIDModel


@dataclass(frozen=True)
class DropoutConfig:
    """InstructPix2Pix-style dropout so both guidance branches are learned:
    text alone, frames alone, or both dropped, each with its own probability."""

    text: float = 0.05
    frames: float = 0.05
    both: float = 0.05

    def sample(self, batch: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(batch, generator=generator)
        drop_text = u < self.text
        drop_frames = (u >= self.text) & (u < self.text + self.frames)
        both = (u >= self.text + self.frames) & (u < self.text + self.frames + self.both)
        return drop_frames | both, drop_text | both


def aid_loss(
    model: AIDModel,
    video: torch.Tensor,
    instructions: Sequence[str],
    states: Sequence[Sequence[str]],
    dropout: DropoutConfig = DropoutConfig(),
    generator: torch.Generator | None = None,
    latents: tuple[torch.Tensor, torch.Tensor] | None = None,
    p_mean: float = 0.7,
    p_std: float = 1.6,
    motion_weight: float = 0.0,
) -> torch.Tensor:
    """Loss for a batch of clips; video (B, N, 3, H, W) in [-1, 1], the first K frames are context.

    latents: optionally the precomputed (diffusion latents (B, N, 4, h, w), noise-augmented
    context latents (B, K, 4, h, w)); the frozen VAE then never runs in the training loop.
    Gradients reach only `model.trainable_parameters()`: the UNet, VAE and encoders are frozen.
    motion_weight: extra weight on latent pixels that change from the first frame, up to
    1 + motion_weight where they change by 1 (unit-variance latents) or more. What the
    instruction decides (which object moves, and where) covers a few percent of a frame; the
    plain loss is dominated by the static scene.
    """
    b, k = video.shape[0], model.config.context_frames
    video = video.to(model.device, model.dtype)
    if latents is None:
        aug = torch.randn(video[:, :k].shape, generator=generator).to(video)
        latents = model.encode_latents(video), model.encode_context(video[:, :k], aug)
    x0, context_latents = (t.to(model.device, model.dtype) for t in latents)
    drop_frames, drop_text = dropout.sample(b, generator)
    cond = model.conditions(video[:, :k], instructions, states, video.shape[1], None, drop_frames, drop_text,
                            context_latents=context_latents)
    sigma = sample_training_sigmas(b, generator, p_mean, p_std).to(model.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    weight_map = None
    if motion_weight:
        weight_map = 1 + motion_weight * (x0 - x0[:, :1]).abs().mean(2, keepdim=True).clamp(max=1.0)
    return edm_loss(Denoiser(model.unet), x0, cond, sigma, noise, target_frames=slice(k, None),
                    weight_map=weight_map)

