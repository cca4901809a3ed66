"""PyTorch eager (optionally torch.compile): the reference backend, always available."""

from __future__ import annotations

import torch
from torch import nn


class TorchBackend:
    """Calls the model's own modules; `compile=True` wraps the UNet in torch.compile (first call is slow)."""

    name = "torch"

    def __init__(self, model: nn.Module, compile: bool = False) -> None:
        self._unet = torch.compile(model.unet) if compile else model.unet
        self._dqformer = model.dqformer
        self._vae_decode = model.vae_decode
        self._vae_encode = model.vae_encode
        self.compiled = compile

    def unet(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        return self._unet(sample, timestep, encoder_hidden_states, added_time_ids)

    def vae_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(latents)

    def vae_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        return self._vae_encode(frames)

    def dqformer(self, t1, t1_mask, t2, t2_mask, v, num_frames: int | None = None) -> torch.Tensor:
        if self._dqformer is None:
            raise RuntimeError("this model has no DQFormer (a text-free model)")
        return self._dqformer(t1, t1_mask, t2, t2_mask, v, num_frames=num_frames)

    def describe(self) -> dict:
        return {"compiled": self.compiled}
