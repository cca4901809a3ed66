"""A frame-by-frame decoder of SVD's VAE latents: diffusers' `DecoderTiny` (TAESD's decoder).

SVD's temporal decoder mixes a clip's frames with 3-D convolutions at every level; at the tiny
model's size it is a quarter of a distilled request. This decoder decodes each frame alone, on
unit-variance latents, and is trained (stage "decoder", `foresight.training.stages.DecoderStage`)
to reproduce the temporal decoder's frames.
"""

from __future__ import annotations

from functools import partial

import torch
from diffusers.models.autoencoders.vae import DecoderTiny
from torch import nn

from foresight.config import FrameDecoderConfig


class FrameDecoder(nn.Module):
    """Unscaled latents (B, F, C, h, w) -> frames (B, F, 3, H, W) in about [-1, 1], unclamped.

    scaling_factor: the VAE's; latents are multiplied by it first, so the decoder sees the
    unit-variance latents diffusion works in (TAESD's convention).
    levels: the VAE's resolution levels; each level but the last upsamples 2x.
    """

    def __init__(self, config: FrameDecoderConfig, latent_channels: int, levels: int, scaling_factor: float) -> None:
        super().__init__()
        if len(config.blocks) != levels:
            raise ValueError(f"decoder.blocks has {len(config.blocks)} levels; the VAE has {levels} "
                             f"(one per level, e.g. {(3,) * (levels - 1) + (1,)})")
        self.config = config
        self.scaling_factor = float(scaling_factor)
        self.net = DecoderTiny(
            in_channels=latent_channels,
            out_channels=3,
            num_blocks=tuple(config.blocks),
            block_out_channels=(config.channels,) * levels,
            upsampling_scaling_factor=2,
            act_fn="relu",
            upsample_fn="nearest",
        )

    def enable_gradient_checkpointing(self) -> None:
        self.net._gradient_checkpointing_func = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        self.net.gradient_checkpointing = True

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        b, f = latents.shape[:2]
        dtype = next(self.net.parameters()).dtype
        frames = self.net(latents.flatten(0, 1).to(dtype) * self.scaling_factor)
        return frames.unflatten(0, (b, f))
