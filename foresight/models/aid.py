"""AIDModel: frozen SVD + adapters + DQFormer, and how conditions for one clip are built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from foresight.config import AIDConfig
from foresight.loading import SVDComponents
from foresight.models.decoder import FrameDecoder
from foresight.models.dqformer import DQFormer
from foresight.models.encoders import TextEncoder, VisionEncoder
from foresight.models.unet import AdaptedUNet


@dataclass
class Conditions:
    """Everything the UNet needs besides the noisy latents, for B clips of F frames.

    cond_latents (B, F, 4, h, w): VAE latents of the K context frames, zeros after them.
    context (B*F, L, C): per-frame cross-attention tokens [image token ; ME ; DE_i].
    added_time_ids (B, 3): SVD's [fps - 1, motion_bucket_id, noise_aug_strength].
    """

    cond_latents: torch.Tensor
    context: torch.Tensor
    added_time_ids: torch.Tensor

    def branch(self, index: int, count: int) -> Conditions:
        """The index-th of `count` equal groups of clips stacked along the batch."""
        return Conditions(*(t.chunk(count)[index] for t in (self.cond_latents, self.context, self.added_time_ids)))

    def select(self, clips: torch.Tensor) -> Conditions:
        """The conditions of the clips at indices `clips` (1-D), in that order."""
        b = self.cond_latents.shape[0]
        context = self.context.unflatten(0, (b, -1))[clips].flatten(0, 1)
        return Conditions(self.cond_latents[clips], context, self.added_time_ids[clips])


class AIDModel(nn.Module):
    """AID around a frozen SVD. Only `trainable_parameters()` ever receive gradients."""

    def __init__(self, svd: SVDComponents, text_encoder: TextEncoder | None, config: AIDConfig) -> None:
        super().__init__()
        dq = config.dqformer
        if dq is not None:
            cross_dim = svd.unet.config.cross_attention_dim
            if dq.width != cross_dim:
                raise ValueError(f"DQFormer width {dq.width} must equal the UNet's cross-attention width {cross_dim}")
            if text_encoder is None or dq.text_dim != text_encoder.width:
                width = None if text_encoder is None else text_encoder.width
                raise ValueError(f"DQFormer text_dim {dq.text_dim} != text encoder width {width}")
        self.config = config
        self.unet = AdaptedUNet(svd.unet, config.adapters, lora=config.lora)
        self.vae = svd.vae
        fe = svd.feature_extractor
        self.vision = VisionEncoder(svd.image_encoder, fe.image_mean, fe.image_std)
        self.text = text_encoder
        # the trained parts follow the frozen backbone's dtype and device
        self.dqformer = None if dq is None else DQFormer(dq, config.num_frames).to(svd.unet.device, svd.unet.dtype)
        self.sigma_min = float(svd.scheduler.config.sigma_min)
        self.sigma_max = float(svd.scheduler.config.sigma_max)
        self.feature_extractor = svd.feature_extractor
        self.scheduler = svd.scheduler
        self.decoder = self._frame_decoder(config)
        self.unet.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    def _frame_decoder(self, config: AIDConfig) -> FrameDecoder | None:
        """The configured frame decoder, frozen like the VAE (its own stage trains it)."""
        if config.decoder is None:
            return None
        vae = self.vae.config
        decoder = FrameDecoder(config.decoder, vae.latent_channels, len(vae.block_out_channels), vae.scaling_factor)
        return decoder.to(self.vae.device, self.vae.dtype).requires_grad_(False)

    def svd_components(self) -> SVDComponents:
        """The frozen SVD parts, e.g. to save them as a diffusers folder."""
        return SVDComponents(self.unet.unet, self.vae, self.vision.encoder, self.feature_extractor, self.scheduler)

    # ---- parameters -------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Adapters + DQFormer (+ the UNet's spatial cross-attention when configured, + its LoRA)."""
        params = [] if self.dqformer is None else list(self.dqformer.parameters())
        if self.unet.adapters is not None:
            params += list(self.unet.adapters.parameters())
        if self.config.train_cross_attention:
            params += [p for n, p in self.unet.unet.named_parameters() if ".attn2." in n]
        if self.config.lora is not None:
            params += [p for n, p in self.unet.unet.named_parameters() if ".lora_" in n]
        return params

    def aid_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights only: what an AID checkpoint holds on top of SVD (the frame decoder's
        too, `decoder.*`, though only its own stage trains it)."""
        state = {} if self.dqformer is None else {f"dqformer.{k}": v for k, v in self.dqformer.state_dict().items()}
        if self.decoder is not None:
            state |= {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        if self.unet.adapters is not None:
            state |= {f"adapters.{k}": v for k, v in self.unet.adapters.state_dict().items()}
        if self.config.train_cross_attention:
            state |= {f"unet.{k}": v for k, v in self.unet.unet.state_dict().items() if ".attn2." in k}
        if self.config.lora is not None:
            state |= {f"unet.{k}": v for k, v in self.unet.unet.state_dict().items() if ".lora_" in k}
        return state

    def save_aid_weights(self, path: str | Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.aid_state_dict().items()}, str(path))

    def load_aid_weights(self, path: str | Path | dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load adapter/DQFormer weights (a file or a state dict); every expected tensor must be present
        with its shape. strict=False skips tensors of parts this config leaves out (knock-outs)."""
        is_file = isinstance(path, (str, Path))
        state, source = (load_file(str(path)), path) if is_file else (path, "the state dict")
        expected = self.aid_state_dict()
        missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
        if missing or (unexpected and strict):
            raise ValueError(
                f"{source} does not match this AID config: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        state = {k: v for k, v in state.items() if k in expected}
        for key, value in state.items():
            if value.shape != expected[key].shape:
                raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
        merged = self.unet.lora_merged  # a merged LoRA comes out of the UNet's weights before it changes
        self.unet.unmerge_lora()
        with torch.no_grad():
            for key, value in state.items():
                expected[key].copy_(value)
        if merged:
            self.unet.merge_lora()

    # ---- conditions -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @torch.no_grad()
    def encode_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, F, 3, H, W) in [-1, 1] -> scaled latents (B, F, 4, h, w), the diffusion space."""
        return self.vae_encode(frames) * self.vae.config.scaling_factor

    def vae_encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, F, 3, H, W) -> the VAE's unscaled latent mode (B, F, 4, h, w): the VAE-encoder graph."""
        return self.vae.encode(frames.flatten(0, 1).to(self.dtype)).latent_dist.mode().unflatten(0, frames.shape[:2])

    @torch.no_grad()
    def encode_context(
        self,
        context_frames: torch.Tensor,
        noise: torch.Tensor | None = None,
        vae_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """SVD's condition latents: noise-augmented frames (B, K, 3, H, W), unscaled VAE mode.

        vae_encoder replaces `self.vae_encode` (an engine backend's VAE-encoder graph)."""
        frames = context_frames.to(self.device, torch.float32)
        if noise is not None:
            frames = frames + self.config.noise_aug_strength * noise.to(frames)
        return (vae_encoder or self.vae_encode)(frames.to(self.dtype))

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, F, 4, h, w) -> frames (B, F, 3, H, W), unclamped: the VAE-decoder graph.

        The frame decoder decodes where the model has one (`AIDConfig.decoder`), else the VAE's
        temporal decoder (`temporal_decode`).
        """
        if self.decoder is not None:
            return self.decoder(latents)
        return self.temporal_decode(latents)

    def temporal_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """SVD's temporal decoder: unscaled latents (B, F, 4, h, w) -> frames (B, F, 3, H, W), unclamped.

        The clip is decoded with its first and last latent repeated once, then those two frames
        are dropped: the temporal decoder's time convolutions zero-pad the clip's ends, and the
        tiny model's VAE rendered its end frames blurred and green-tinted there (L1 on held-out
        clips: last frame 0.145, middle frames 0.087; with the repeats 0.083).
        """
        padded = torch.cat([latents[:, :1], latents, latents[:, -1:]], dim=1)
        b, f = padded.shape[:2]
        frames = self.vae.decode(padded.flatten(0, 1).to(self.dtype), num_frames=f).sample.unflatten(0, (b, f))
        return frames[:, 1:-1]

    @torch.no_grad()
    def decode_latents(
        self,
        latents: torch.Tensor,
        vae_decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        decode_chunk_size: int | None = None,
        skip: int = 0,
    ) -> torch.Tensor:
        """Scaled latents (B, F, 4, h, w) -> frames (B, F - skip, 3, H, W) in [-1, 1].

        vae_decode replaces `self.vae_decode` (an engine backend's VAE-decoder graph).
        decode_chunk_size: at most this many frames per decoder call (with the temporal decoder,
        counting the two repeated end latents of each clip), in whole clips and at least one: the
        temporal decoder mixes a clip's frames, so clips are never split and the result equals
        decoding all at once. None decodes every clip in one call.
        skip: leading frames of each clip left out (the context frames a prediction does not
        return). A frame decoder never decodes them; the temporal decoder decodes the whole clip,
        since its time convolutions see them, and they are dropped after.
        """
        if decode_chunk_size is not None and decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be >= 1 frame, got {decode_chunk_size}")
        if not 0 <= skip < latents.shape[1]:
            raise ValueError(f"skip must be in [0, {latents.shape[1] - 1}], got {skip}")
        decode = vae_decode or self.vae_decode
        z = latents / self.vae.config.scaling_factor
        per_frame = self.config.decoder is not None
        if per_frame:
            z = z[:, skip:]
        per_clip = self.config.decoded_frames(z.shape[1])
        clips = len(z) if decode_chunk_size is None else max(1, decode_chunk_size // per_clip)
        frames = torch.cat([decode(chunk) for chunk in z.split(clips)]).clamp(-1, 1)
        return frames if per_frame else frames[:, skip:]

    def text_features(self, sentences: Sequence[str], states: Sequence[Sequence[str]]):
        """t1 from instructions; t2 from each clip's state descriptions, concatenated along tokens."""
        t1, m1 = self.text(list(sentences))
        flat = [s for clip in states for s in clip]
        t2, m2 = self.text(flat)
        per_clip = len(states[0])
        return t1, m1, t2.unflatten(0, (-1, per_clip)).flatten(1, 2), m2.unflatten(0, (-1, per_clip)).flatten(1, 2)

    def conditions(
        self,
        context_frames: torch.Tensor,
        instructions: Sequence[str],
        states: Sequence[Sequence[str]],
        num_frames: int | None = None,
        noise: torch.Tensor | None = None,
        drop_frames: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        context_latents: torch.Tensor | None = None,
        dqformer: Callable[..., torch.Tensor] | None = None,
        image_features: tuple[torch.Tensor, torch.Tensor] | None = None,
        vae_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Conditions:
        """Build the UNet's conditions for B clips.

        context_frames (B, K, 3, H, W) in [-1, 1]; noise: SVD's noise augmentation of the context
        frames, (B, K, 3, H, W) standard normal (zeros if None); drop_frames / drop_text (B,) bool
        replace the frame condition (latents, image features) by zeros and the text by the
        empty sentence: the "0" branches of the two guidance scales and of condition dropout.
        context_latents (B, K, 4, h, w): the already encoded noise-augmented context frames
        (training precomputes them once); `noise` is then unused.
        dqformer: a runtime backend's DQFormer (same signature); defaults to the module.
        image_features: the vision encoder's (features, image token) of the first context frames,
        already computed. vae_encoder: a runtime backend's VAE encoder (`encode_context`).
        """
        cfg = self.config
        frames = cfg.num_frames if num_frames is None else num_frames
        b, k = context_frames.shape[:2]
        dev, dtype = self.device, self.dtype
        context_frames = context_frames.to(dev, torch.float32)
        # 1. context latents in the condition channels of the first K frames, the rest masked
        if context_latents is None:
            context_latents = self.encode_context(context_frames, noise, vae_encoder)
        z = context_latents.to(dev, dtype)
        cond = torch.zeros(b, frames, *z.shape[2:], device=dev, dtype=dtype)
        cond[:, :k] = z
        # 2. image features of the first context frame; the encoder preprocesses in float32 (its
        # antialiased resize has no half-precision CPU kernel) and runs in the model's dtype
        v, image_token = self.vision(context_frames[:, 0]) if image_features is None else image_features
        if drop_frames is not None:
            keep = (~drop_frames).to(dev, dtype)
            cond = cond * keep.view(-1, 1, 1, 1, 1)
            v = v * keep.view(-1, 1, 1)
            image_token = image_token * keep.view(-1, 1, 1)
        image_token = image_token.to(dtype).repeat_interleave(frames, dim=0)
        time_ids = torch.tensor(
            [cfg.fps - 1, cfg.motion_bucket_id, cfg.noise_aug_strength], device=dev, dtype=dtype
        ).expand(b, 3)
        if self.dqformer is None:  # the text-free base: SVD's own single-token context
            return Conditions(cond, image_token, time_ids)
        # 3. text features; dropped text becomes the empty sentence
        if drop_text is not None:
            instructions = ["" if d else s for s, d in zip(instructions, drop_text.tolist())]
            states = [[""] * len(s) if d else list(s) for s, d in zip(states, drop_text.tolist())]
        t1, m1, t2, m2 = self.text_features(instructions, states)
        # 4. MCondition per frame, after SVD's own image token
        m = (dqformer or self.dqformer)(t1.to(dtype), m1, t2.to(dtype), m2, v.to(dtype), num_frames=frames)
        return Conditions(cond, torch.cat([image_token, m], dim=1), time_ids)

    def guidance_conditions(
        self,
        context_frames: torch.Tensor,
        instructions: Sequence[str],
        states: Sequence[Sequence[str]],
        num_frames: int | None = None,
        noise: torch.Tensor | None = None,
        dqformer: Callable[..., torch.Tensor] | None = None,
        vae_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Conditions:
        """Conditions for the three guidance branches of B clips, stacked as
        [unconditional ; frames only ; frames + text] (3B clips), built in one batched pass.

        The context frames are encoded once (VAE and vision encoder) and shared by the branches,
        which differ only in what they drop."""
        b = context_frames.shape[0]
        flags = torch.arange(3 * b) // b  # 0, 1, 2 = branch index
        frames = context_frames.to(self.device, torch.float32)
        latents = self.encode_context(frames, noise, vae_encoder)
        v, image_token = self.vision(frames[:, 0])
        return self.conditions(
            frames.repeat(3, 1, 1, 1, 1),
            list(instructions) * 3,
            list(states) * 3,
            num_frames,
            drop_frames=flags == 0,
            drop_text=flags < 2,
            context_latents=latents.repeat(3, 1, 1, 1, 1),
            dqformer=dqformer,
            image_features=(v.repeat(3, 1, 1), image_token.repeat(3, 1, 1)),
        )
