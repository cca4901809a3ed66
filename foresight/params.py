"""Parameter budget of AID on the real SVD architecture, counted without any weights (meta device)."""

from __future__ import annotations

import torch
from diffusers import UNetSpatioTemporalConditionModel

from foresight.config import AIDConfig
from foresight.models.adapters import AIDAdapters
from foresight.models.dqformer import DQFormer


def count_real_config(config: AIDConfig | None = None, num_frames: int = 16) -> dict[str, int | float]:
    """UNet, adapter and DQFormer sizes for stabilityai/stable-video-diffusion's UNet config."""
    config = config or AIDConfig(num_frames=num_frames)
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel()  # the defaults are SVD's config
        adapters = AIDAdapters(unet, config.adapters)
        dqformer = DQFormer(config.dqformer, config.num_frames)

    def n(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    counts: dict[str, int | float] = {
        "unet": n(unet),
        "spatial_adapters": n(adapters.spatial),
        "short_term_adapters": n(adapters.short_term),
        "long_term_adapters": n(adapters.long_term),
        "adapters": n(adapters),
        "dqformer": n(dqformer),
    }
    counts["trainable"] = counts["adapters"] + counts["dqformer"]
    counts["trainable_share"] = round(counts["trainable"] / counts["unet"], 5)
    return counts
