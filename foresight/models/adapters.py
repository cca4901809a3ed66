"""AID's three adapters and their injection into a diffusers SVD UNet.

The adapters live in their own module tree and run through forward hooks, so the diffusers UNet
keeps its code, its state-dict keys and its frozen weights untouched. Every adapter ends in a
zero-initialised projection: at initialisation the adapted UNet computes exactly what SVD does.

Placement (the paper gives none; ours): the spatial adapter runs beside the self-attention of
every spatial transformer block; the short- and long-term temporal adapters refine the output of
every spatio-temporal transformer (the place where SVD mixes frames), on the selected block groups.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
)
from torch import nn

from foresight.config import AdapterConfig


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SpatialAdapter(nn.Module):
    """W_up(GELU(W_down x)) on tokens (..., C); added beside spatial self-attention."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.down = nn.Linear(channels, hidden)
        self.up = _zero(nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class ShortTermAdapter(nn.Module):
    """W_up(DWConv3D(W_down x)): a depthwise conv over (frames, h, w) for fine local motion."""

    def __init__(self, channels: int, ratio: int, kernel_size: tuple[int, int, int]) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.down = nn.Conv2d(channels, hidden, 1)
        padding = tuple(k // 2 for k in kernel_size)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size, padding=padding, groups=hidden)
        self.up = _zero(nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (B*F, C, H, W) -> residual of the same shape."""
        h = self.down(x)
        bf, c, height, width = h.shape
        h = h.reshape(-1, num_frames, c, height, width).transpose(1, 2)
        h = F.gelu(self.conv(h))
        h = h.transpose(1, 2).reshape(bf, c, height, width)
        return self.up(h)


class LongTermAdapter(nn.Module):
    """W_up(TemporalSelfAttn(W_down x)): every pixel attends across all frames of the clip."""

    def __init__(self, channels: int, ratio: int, heads: int) -> None:
        super().__init__()
        hidden = max(heads, (channels // ratio) // heads * heads)
        self.heads = heads
        self.down = nn.Conv2d(channels, hidden, 1)
        self.norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.up = _zero(nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (B*F, C, H, W) -> residual of the same shape."""
        h = self.down(x)
        bf, c, height, width = h.shape
        # (B*F, c, H, W) -> (B*H*W, F, c): one sequence of frames per pixel
        h = h.reshape(-1, num_frames, c, height * width).permute(0, 3, 1, 2).reshape(-1, num_frames, c)
        frame_ids = torch.arange(num_frames, device=h.device)
        h = h + get_timestep_embedding(frame_ids, c, flip_sin_to_cos=True, downscale_freq_shift=0).to(h.dtype)
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        h = self.out(a)
        h = h.reshape(-1, height * width, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, height, width)
        return self.up(h)


def _key(name: str) -> str:
    return name.replace(".", "_")


def _group(name: str) -> str:
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(name.split(".")[0], "")


def spatio_temporal_transformers(unet: nn.Module, placement: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """The UNet's spatio-temporal transformers in the given block groups, in forward order."""
    return [
        (name, m)
        for name, m in unet.named_modules()
        if isinstance(m, TransformerSpatioTemporalModel) and _group(name) in placement
    ]


class AIDAdapters(nn.Module):
    """All adapters of one UNet, keyed by the module they attach to."""

    def __init__(self, unet: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.spatial = nn.ModuleDict()
        self.short_term = nn.ModuleDict()
        self.long_term = nn.ModuleDict()
        for name, transformer in spatio_temporal_transformers(unet, config.placement):
            channels = transformer.in_channels
            if config.short_term:
                self.short_term[_key(name)] = ShortTermAdapter(channels, config.ratio, config.kernel_size)
            if config.long_term:
                self.long_term[_key(name)] = LongTermAdapter(channels, config.ratio, config.long_term_heads)
            if config.spatial:
                for i, block in enumerate(transformer.transformer_blocks):
                    self.spatial[_key(f"{name}.transformer_blocks.{i}")] = SpatialAdapter(
                        block.attn1.query_dim, config.ratio
                    )

    def attach(self, unet: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Register the hooks that run these adapters inside `unet`; returns their handles.

        Hooks are partials of bound methods (not closures), so `copy.deepcopy` of a model
        rebinds them to the copied adapters.
        """
        handles = []
        for name, transformer in spatio_temporal_transformers(unet, self.config.placement):
            key = _key(name)
            if key in self.short_term or key in self.long_term:
                hook = functools.partial(self._temporal_hook, key)
                handles.append(transformer.register_forward_hook(hook, with_kwargs=True))
            for i, block in enumerate(transformer.transformer_blocks):
                block_key = _key(f"{name}.transformer_blocks.{i}")
                if block_key in self.spatial:
                    handles.append(block.attn1.register_forward_hook(functools.partial(self._spatial_hook, block_key)))
        return handles

    def _spatial_hook(self, key: str, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.spatial[key](args[0])

    def _temporal_hook(self, key: str, module: nn.Module, args: tuple, kwargs: dict, output):
        x = output[0] if isinstance(output, tuple) else output.sample
        num_frames = kwargs["image_only_indicator"].shape[-1]
        for adapters in (self.short_term, self.long_term):
            if key in adapters:
                x = x + adapters[key](x, num_frames)
        return (x,) + tuple(output[1:]) if isinstance(output, tuple) else type(output)(sample=x)
