"""The frozen SVD UNet with AID adapters and per-frame conditions."""

from __future__ import annotations

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import nn

from foresight.config import AdapterConfig, UNetLoRAConfig
from foresight.models.adapters import AIDAdapters


def add_lora(unet: UNetSpatioTemporalConditionModel, lora: UNetLoRAConfig) -> None:
    """A peft LoRA on the UNet's `lora.targets` (peft's `inject_adapter_in_model`, what diffusers'
    `add_adapter` calls; SVD's UNet class lacks that mixin): B starts at zero, so the UNet computes
    what it did; its weights are named `...<target>.lora_A/B.default.weight`."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=lora.rank, lora_alpha=lora.alpha or lora.rank,
                                       target_modules=list(lora.targets), init_lora_weights=True), unet)


def lora_layers(unet: nn.Module) -> list[nn.Module]:
    """The UNet's LoRA-wrapped layers (none without a LoRA)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: no model of this install carries a LoRA
        return []
    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


class AdaptedUNet(nn.Module):
    """SVD's UNet taking one cross-attention context per frame, with AID adapters inside.

    Stock diffusers takes one context (B, L, C) and repeats it for every frame before the blocks.
    AID gives frame i the ME tokens plus its own DE tokens, so `forward` takes (B*F, L, C) and
    hands it to the blocks as it is; otherwise it is the stock forward. The adapters run as
    forward hooks on the UNet's modules (see foresight.models.adapters); the UNet's own code,
    state-dict keys and weights stay untouched. The adapters follow the UNet's dtype and device.
    """

    def __init__(
        self, unet: UNetSpatioTemporalConditionModel, adapters: AdapterConfig | None, dtype: torch.dtype | None = None,
        lora: UNetLoRAConfig | None = None,
    ) -> None:
        """dtype: the adapters' own, by default the UNet's (a memory estimate of training keeps them float32
        beside a half-precision UNet); they are moved only where they differ, so fake tensors stay put.
        lora: a LoRA on the UNet's own layers (a distilled model's), see `add_lora`."""
        super().__init__()
        if lora is not None:
            add_lora(unet, lora)
        self.unet = unet
        self.adapters = None
        if adapters is not None:
            self.adapters = AIDAdapters(unet, adapters)
            target = (unet.device, dtype or unet.dtype)
            if any((p.device, p.dtype) != target for p in self.adapters.parameters()):
                self.adapters.to(*target)
            self.adapters.attach(unet)

    @property
    def config(self):
        return self.unet.config

    def merge_lora(self) -> None:
        """Fold the LoRA into the UNet's weights (W += scale * B A): the same function, no extra
        matmuls, and an exported graph of the plain UNet. `unmerge_lora` takes it back out."""
        for layer in lora_layers(self.unet):
            if not layer.merged:
                layer.merge()

    def unmerge_lora(self) -> None:
        for layer in lora_layers(self.unet):
            if layer.merged:
                layer.unmerge()

    @property
    def lora_merged(self) -> bool:
        return any(layer.merged for layer in lora_layers(self.unet))

    # Adapted from diffusers.models.unets.unet_spatio_temporal_condition.UNetSpatioTemporalConditionModel.forward
    # (diffusers 0.42) with encoder_hidden_states taken per frame instead of repeated per frame, a tensor
    # timestep, and a tensor returned.
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """sample (B, F, C_in, h, w); timestep (B,) or scalar tensor; encoder_hidden_states (B*F, L, C);
        added_time_ids (B, 3) -> (B, F, C_out, h, w)."""
        unet = self.unet
        batch_size, num_frames = sample.shape[:2]
        if encoder_hidden_states.shape[0] != batch_size * num_frames:
            raise ValueError(
                f"encoder_hidden_states must be per frame, (B*F, L, C) = ({batch_size * num_frames}, L, C); "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        upsample_size = None

        # 1. time
        timesteps = timestep.reshape(-1).to(sample.device).expand(batch_size)
        emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=sample.dtype))
        time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape((batch_size, -1)).to(emb.dtype)
        emb = emb + unet.add_embedding(time_embeds)
        # flatten batch and frames: sample (B*F, C, h, w), emb (B*F, C); the context already is per frame
        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)

        # 2. pre-process
        sample = unet.conv_in(sample)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)
        blocks = dict(temb=emb, image_only_indicator=image_only_indicator)

        # 3. down
        down_block_res_samples = (sample,)
        for block in unet.down_blocks:
            context = {"encoder_hidden_states": encoder_hidden_states} if getattr(block, "has_cross_attention", False) else {}
            sample, res_samples = block(hidden_states=sample, **blocks, **context)
            down_block_res_samples += res_samples

        # 4. mid
        sample = unet.mid_block(hidden_states=sample, encoder_hidden_states=encoder_hidden_states, **blocks)

        # 5. up
        for i, block in enumerate(unet.up_blocks):
            res_samples = down_block_res_samples[-len(block.resnets):]
            down_block_res_samples = down_block_res_samples[: -len(block.resnets)]
            if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]
            context = {"encoder_hidden_states": encoder_hidden_states} if getattr(block, "has_cross_attention", False) else {}
            sample = block(
                hidden_states=sample, res_hidden_states_tuple=res_samples, upsample_size=upsample_size, **blocks, **context
            )

        # 6. post-process
        sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))

        # 7. back to (B, F, C, h, w)
        return sample.reshape(batch_size, num_frames, *sample.shape[1:])
