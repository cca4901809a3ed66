"""The backend interface: what the pipeline calls instead of the PyTorch UNet, VAE encoder and decoder, and DQFormer.

Graph input/output names live here because they are the contract between the exporter (which
writes graphs with these names) and the backends (which feed them); the exporter imports them
from here, never the reverse.
"""

from __future__ import annotations

from typing import Protocol

import torch

UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "added_time_ids")
UNET_OUTPUTS = ("denoised_v",)
DQFORMER_INPUTS = ("t1", "t1_mask", "t2", "t2_mask", "v")
DQFORMER_OUTPUTS = ("conditions",)
VAE_DECODER_INPUTS = ("latents",)
VAE_DECODER_OUTPUTS = ("frames",)
VAE_ENCODER_INPUTS = ("frames",)
VAE_ENCODER_OUTPUTS = ("latents",)
GRAPH_IO = {
    "unet": (UNET_INPUTS, UNET_OUTPUTS),
    "vae_decoder": (VAE_DECODER_INPUTS, VAE_DECODER_OUTPUTS),
    "vae_encoder": (VAE_ENCODER_INPUTS, VAE_ENCODER_OUTPUTS),
    "dqformer": (DQFORMER_INPUTS, DQFORMER_OUTPUTS),
}


class EngineRefused(RuntimeError):
    """An engine folder (or one graph in it) that must not be used; the message says why."""


class Backend(Protocol):
    """Runs the exported parts of AID. Inputs and outputs are torch tensors on the model's device."""

    name: str

    def unet(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """sample (B, F, C_in, h, w), timestep (B,), encoder_hidden_states (B*F, L, C), added_time_ids (B, 3)."""
        ...

    def dqformer(
        self,
        t1: torch.Tensor,
        t1_mask: torch.Tensor,
        t2: torch.Tensor,
        t2_mask: torch.Tensor,
        v: torch.Tensor,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """Same signature as `DQFormer.forward`: -> per-frame conditions (B*F, L, C)."""
        ...

    def vae_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, F, 4, h, w) -> frames (B, F, 3, H, W), unclamped (`AIDModel.vae_decode`)."""
        ...

    def vae_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, K, 3, H, W) -> the VAE's unscaled latent mode (B, K, 4, h, w) (`AIDModel.vae_encode`)."""
        ...

    def describe(self) -> dict:
        """JSON-ready facts about this backend (providers, files, precision) for `info`."""
        ...


def first_frames(conditions: torch.Tensor, batch: int, num_frames: int | None) -> torch.Tensor:
    """A DQFormer graph always yields all N frames (B*N, L, C); keep the first `num_frames` of each clip.

    Exact, because DQFormer computes every frame independently of how many are kept.
    """
    if num_frames is None:
        return conditions
    per_clip = conditions.unflatten(0, (batch, -1))
    if not 0 < num_frames <= per_clip.shape[1]:
        raise ValueError(f"num_frames must be in [1, {per_clip.shape[1]}], got {num_frames}")
    return per_clip[:, :num_frames].flatten(0, 1)
