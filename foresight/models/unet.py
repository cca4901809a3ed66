"""The frozen SVD UNet with AID adapters and per-frame conditions."""

from __future__ import annotations

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import nn

from foresight.config import AdapterConfig
from foresight.models.adapters import AIDAdapters, spatio_temporal_transformers


class AdaptedUNet(nn.Module):
    """SVD's UNet taking one cross-attention context per frame, with AID adapters inside.

    Stock diffusers repeats one context (B, L, C) for every frame. AID gives frame i the ME tokens
    plus its own DE tokens, so this wrapper takes (B*F, L, C). The override is two forward
    pre-hooks: the UNet still receives (B, L, C) (frame 0's context, which is also what SVD's
    temporal layers read), and each spatio-temporal transformer gets the per-frame tensor back.
    """

    def __init__(self, unet: UNetSpatioTemporalConditionModel, adapters: AdapterConfig | None) -> None:
        super().__init__()
        self.unet = unet
        self.adapters = AIDAdapters(unet, adapters) if adapters is not None else None
        self._context: torch.Tensor | None = None
        if self.adapters is not None:
            self.adapters.attach(unet)
        for _, transformer in spatio_temporal_transformers(unet, ("down", "mid", "up")):
            transformer.register_forward_pre_hook(self._per_frame_context, with_kwargs=True)

    @property
    def config(self):
        return self.unet.config

    def _per_frame_context(self, module, args, kwargs):
        if self._context is None:
            return None
        return args, {**kwargs, "encoder_hidden_states": self._context}

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """sample (B, F, C_in, h, w); timestep (B,) or scalar; encoder_hidden_states (B*F, L, C)."""
        batch, frames = sample.shape[:2]
        if encoder_hidden_states.shape[0] != batch * frames:
            raise ValueError(
                f"encoder_hidden_states must be per frame, (B*F, L, C) = ({batch * frames}, L, C); "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        self._context = encoder_hidden_states
        try:
            first = encoder_hidden_states.unflatten(0, (batch, frames))[:, 0]
            return self.unet(sample, timestep, first, added_time_ids, return_dict=False)[0]
        finally:
            self._context = None
