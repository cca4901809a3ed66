"""Getting SVD's frozen parts: from a diffusers folder on local disk, or built small from config.

Nothing here ever contacts a hub: folders load with `local_files_only=True`, and the tiny
variant is built from the same diffusers/transformers classes with random weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

logger = logging.getLogger(__name__)

# part -> (class, files of which one must exist, weights file stems); order = load order
SVD_PARTS = {
    "unet": ("config.json", "diffusion_pytorch_model"),
    "vae": ("config.json", "diffusion_pytorch_model"),
    "image_encoder": ("config.json", "model"),
    "feature_extractor": ("preprocessor_config.json", None),
    "scheduler": ("scheduler_config.json", None),
}


@dataclass
class SVDComponents:
    """The frozen Stable Video Diffusion parts AID builds on."""

    unet: UNetSpatioTemporalConditionModel
    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    scheduler: EulerDiscreteScheduler

    def save_pretrained(self, path: str | Path) -> None:
        """Write the diffusers folder layout (the same one `load_svd` reads)."""
        path = Path(path)
        for part in SVD_PARTS:
            getattr(self, part).save_pretrained(path / part)
        (path / "model_index.json").write_text(
            '{"_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": "0.42.1",\n'
            ' "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],\n'
            ' "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],\n'
            ' "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],\n'
            ' "feature_extractor": ["transformers", "CLIPImageProcessor"],\n'
            ' "scheduler": ["diffusers", "EulerDiscreteScheduler"]}\n'
        )


def _weights_variant(folder: Path, stem: str) -> str | None:
    """'' for plain weights, 'fp16' when only the fp16 variant exists (as on the SVD hub repo)."""
    for suffix in (".safetensors", ".bin"):
        if (folder / f"{stem}{suffix}").is_file() or (folder / f"{stem}{suffix}.index.json").is_file():
            return ""
        if (folder / f"{stem}.fp16{suffix}").is_file():
            return "fp16"
    return None


def check_svd_folder(path: str | Path) -> dict[str, str | None]:
    """Raise FileNotFoundError naming every missing part; return each weighted part's variant."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"SVD folder {path} does not exist")
    problems, variants = [], {}
    for part, (config_file, stem) in SVD_PARTS.items():
        folder = path / part
        if not (folder / config_file).is_file():
            problems.append(f"{part}/{config_file}")
            continue
        if stem is not None:
            variant = _weights_variant(folder, stem)
            if variant is None:
                problems.append(f"{part}/{stem}.safetensors")
            variants[part] = variant or None
    if problems:
        raise FileNotFoundError(
            f"SVD folder {path} is incomplete, missing: {', '.join(problems)} "
            "(expected the diffusers layout of stabilityai/stable-video-diffusion-img2vid)"
        )
    return variants


def load_svd(path: str | Path, dtype: torch.dtype = torch.float32) -> SVDComponents:
    """Load a diffusers-format SVD folder from local disk; never downloads."""
    path = Path(path)
    variants = check_svd_folder(path)
    logger.info("loading SVD from %s", path)
    kw = dict(local_files_only=True, torch_dtype=dtype)
    return SVDComponents(
        unet=UNetSpatioTemporalConditionModel.from_pretrained(path / "unet", variant=variants["unet"], **kw),
        vae=AutoencoderKLTemporalDecoder.from_pretrained(path / "vae", variant=variants["vae"], **kw),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(
            path / "image_encoder", variant=variants["image_encoder"], **kw
        ),
        feature_extractor=CLIPImageProcessor.from_pretrained(path / "feature_extractor", local_files_only=True),
        scheduler=EulerDiscreteScheduler.from_pretrained(path / "scheduler", local_files_only=True),
    )


SVD_SIGMAS = (0.002, 700.0)  # (sigma_min, sigma_max) of SVD's scheduler config


@dataclass(frozen=True)
class TinySVDConfig:
    """Sizes of a small SVD-architecture model (same classes as the real one).

    vae_channels: one entry per VAE level; the VAE downsamples by 2 ** (levels - 1).
    sigma_max: where the scheduler's (and our sampler's) Karras schedule starts. SVD's 700 suits
    its latents; small unit-variance latents are pure noise long before, and a high start spends
    the few steps of a short schedule where nothing is decided.
    """

    unet_channels: tuple[int, ...] = (32, 64)
    unet_heads: tuple[int, ...] = (2, 4)
    layers_per_block: int = 1
    cross_attention_dim: int = 32
    time_embed_dim: int = 8
    vae_channels: tuple[int, ...] = (32, 64)
    image_encoder_width: int = 32
    image_encoder_layers: int = 1
    image_size: int = 32
    patch_size: int = 8
    sigma_max: float = SVD_SIGMAS[1]


def build_tiny_svd(config: TinySVDConfig = TinySVDConfig(), seed: int = 0) -> SVDComponents:
    """Random-initialised small SVD, deterministic for a seed."""
    torch.manual_seed(seed)
    levels = len(config.unet_channels)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * levels,
        up_block_types=("CrossAttnUpBlockSpatioTemporal",) * levels,
        block_out_channels=config.unet_channels,
        addition_time_embed_dim=config.time_embed_dim,
        projection_class_embeddings_input_dim=3 * config.time_embed_dim,
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        num_attention_heads=config.unet_heads,
        num_frames=8,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        latent_channels=4,
        layers_per_block=1,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=config.image_encoder_width,
            intermediate_size=2 * config.image_encoder_width,
            projection_dim=config.cross_attention_dim,
            num_hidden_layers=config.image_encoder_layers,
            num_attention_heads=2,
            image_size=config.image_size,
            patch_size=config.patch_size,
        )
    )
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": config.image_size}, crop_size={"height": config.image_size, "width": config.image_size}
    )
    scheduler = EulerDiscreteScheduler(
        prediction_type="v_prediction",
        use_karras_sigmas=True,
        sigma_min=SVD_SIGMAS[0],
        sigma_max=config.sigma_max,
        timestep_type="continuous",
        interpolation_type="linear",
    )
    return SVDComponents(unet, vae, image_encoder, feature_extractor, scheduler)
