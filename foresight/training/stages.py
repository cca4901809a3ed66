"""What each training stage trains, its loss, and what it writes: one nn.Module per stage.

- vae:  the tiny recipe's AutoencoderKLTemporalDecoder (L1 + L2 + a tiny KL); writes `vae/`.
- base: the text-free image-to-video prior (UNet + image encoder), SVD's conditioning; writes `svd/`.
- aid:  the frozen SVD with adapters + DQFormer (+ cross-attention where configured); writes
        `model/`, an AID model folder that references the SVD folder instead of copying it.
- distill: consistency distillation of an AID model folder into a one-branch few-step student
        (its AID weights + a UNet LoRA; `foresight.training.distill`); writes `model/` as aid does.
- decoder: a frame-by-frame decoder (`AIDConfig.decoder`) for an AID model folder, trained to
        reproduce the VAE's temporal decoder; writes `model/`, the folder's model with it.

A stage's `forward(video, instructions, states, generator)` returns the loss, so the trainer
wraps it in DDP as it is. Its parameters with `requires_grad` are exactly what trains and what a
checkpoint holds; everything else is frozen.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from foresight.loading import SVDComponents, build_tiny_svd, load_svd
from foresight.model_dir import read_model_dir, resolve_text_encoder, save_model_dir
from foresight.models.aid import AIDModel
from foresight.models.encoders import TextEncoder
from foresight.training.config import TrainConfig
from foresight.training.distill import consistency_distillation_loss
from foresight.training.loss import DropoutConfig, aid_loss

logger = logging.getLogger(__name__)


def base_svd(cfg: TrainConfig) -> SVDComponents:
    """The SVD the stage starts from: a folder, or the tiny one built from config (seeded)."""
    svd = load_svd(cfg.path(cfg.model.svd)) if cfg.model.svd else build_tiny_svd(cfg.model.tiny_svd, seed=cfg.seed)
    if cfg.model.vae:
        from diffusers import AutoencoderKLTemporalDecoder

        svd.vae = AutoencoderKLTemporalDecoder.from_pretrained(cfg.path(cfg.model.vae), local_files_only=True)
    return svd


def _dropout(cfg: TrainConfig) -> DropoutConfig:
    loss = cfg.loss
    return DropoutConfig(text=loss.dropout_text, frames=loss.dropout_frames, both=loss.dropout_both)


class VAEStage(nn.Module):
    """Reconstruction of single frames, decoded as clips by the temporal decoder."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.vae = base_svd(cfg).vae.requires_grad_(True).train()
        self.num_frames = cfg.model.aid.num_frames

    def forward(self, video: torch.Tensor, instructions: Sequence[str], states: Sequence[Sequence[str]],
                generator: torch.Generator) -> torch.Tensor:
        x = video.flatten(0, 1).to(self.vae.device)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x)
        recon = self.vae.decode(z, num_frames=self.num_frames).sample
        return (recon - x).abs().mean() + ((recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    @torch.no_grad()
    def calibrate(self, video: torch.Tensor) -> float:
        """Set scaling_factor to 1 / std of the latents of `video` (B, N, 3, H, W).

        SVD's EDM preconditioning assumes unit-variance latents (sigma_data = 1), as Stable
        Diffusion chose 0.18215 for its VAE. Keeping 0.18215 on the tiny VAE left latents with
        std 0.22: most training noise levels then hid the frames completely.
        """
        frames = video.flatten(0, 1).to(self.vae.device, self.vae.dtype)
        z = torch.cat([self.vae.encode(chunk).latent_dist.mode() for chunk in frames.split(32)])
        scale = 1.0 / z.float().std().item()
        self.vae.register_to_config(scaling_factor=scale)
        logger.info("vae: scaling_factor set to %.4f", scale)
        return scale

    def write_output(self, cfg: TrainConfig, folder: Path) -> Path:
        self.vae.save_pretrained(folder / "vae")
        return folder / "vae"


class BaseStage(nn.Module):
    """The text-free base: SVD's single image token as context, UNet and image encoder train."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        base_cfg = replace(cfg.model.aid, adapters=None, dqformer=None, train_cross_attention=False)
        self.model = AIDModel(base_svd(cfg), None, base_cfg)
        self.model.unet.unet.requires_grad_(True).train()
        self.model.vision.encoder.requires_grad_(True).train()
        self.loss, self.dropout = cfg.loss, DropoutConfig(text=0.0, frames=cfg.loss.dropout_frames, both=0.0)

    def forward(self, video: torch.Tensor, instructions: Sequence[str], states: Sequence[Sequence[str]],
                generator: torch.Generator) -> torch.Tensor:
        return aid_loss(self.model, video, instructions, [[]] * len(instructions), self.dropout, generator,
                        p_mean=self.loss.p_mean, p_std=self.loss.p_std, motion_weight=self.loss.motion_weight)

    def enable_gradient_checkpointing(self) -> None:
        self.model.unet.unet.enable_gradient_checkpointing()

    def write_output(self, cfg: TrainConfig, folder: Path) -> Path:
        self.model.svd_components().save_pretrained(folder / "svd")
        return folder / "svd"


class AIDStage(nn.Module):
    """AID on a frozen SVD: adapters + DQFormer (+ spatial cross-attention when configured)."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        if not cfg.model.svd:
            raise ValueError("the aid stage needs model.svd, a diffusers SVD folder (the base it adapts)")
        aid = cfg.model.aid
        text = TextEncoder(resolve_text_encoder(cfg.model.text_encoder), aid.text_max_length)
        torch.manual_seed(cfg.seed)
        self.model = AIDModel(base_svd(cfg), text, aid)
        if cfg.model.init:
            continue_from(self.model, cfg.path(cfg.model.init))
        self.loss, self.dropout = cfg.loss, _dropout(cfg)
        self.train()

    def train(self, mode: bool = True) -> AIDStage:
        """Only what trains changes mode; the frozen encoders and backbone stay in eval (no dropout)."""
        super().train(mode)
        for frozen in (self.model.unet.unet, self.model.vae, self.model.vision, self.model.text):
            frozen.eval()
        return self

    def forward(self, video: torch.Tensor, instructions: Sequence[str], states: Sequence[Sequence[str]],
                generator: torch.Generator) -> torch.Tensor:
        return aid_loss(self.model, video, instructions, states, self.dropout, generator,
                        p_mean=self.loss.p_mean, p_std=self.loss.p_std, motion_weight=self.loss.motion_weight)

    def enable_gradient_checkpointing(self) -> None:
        self.model.unet.unet.enable_gradient_checkpointing()

    def write_output(self, cfg: TrainConfig, folder: Path) -> Path:
        text_encoder = cfg.model.text_encoder
        if not text_encoder.startswith("bundled:"):
            text_encoder = str(cfg.path(text_encoder))
        states = cfg.model.states if cfg.model.states in ("template", "none") else str(cfg.path(cfg.model.states))
        save_model_dir(self.model, folder / "model", svd=str(cfg.path(cfg.model.svd)), text_encoder=text_encoder,
                       states=states)
        return folder / "model"


def continue_from(model: AIDModel, folder: Path) -> None:
    """Start from a model folder's trained weights; parts it lacks keep their initialisation."""
    weights = folder / "aid.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"model.init: {folder} has no aid.safetensors to continue from")
    state = load_file(str(weights))
    fresh = {k: v for k, v in model.aid_state_dict().items() if k not in state}
    model.load_aid_weights(state | fresh)
    names = sorted(fresh)
    if len(names) > 5:  # a whole new part (a frame decoder): by part, not by tensor
        parts = sorted({k.split(".")[0] for k in names})
        names = [f"{p}.* ({sum(k.startswith(p + '.') for k in fresh)} tensors)" for p in parts]
    logger.info("continuing from %s (%d tensors); newly initialised: %s", folder, len(state),
                ", ".join(names) or "nothing")


class DistillStage(AIDStage):
    """The `distill` stage: the student is the teacher's AID model (`model.init`) with the config's
    UNet LoRA (`model.aid.lora`, zero at the start: the student starts as the teacher); everything
    `trainable_parameters` names trains. The target network is the trainer's EMA of those weights
    (`use_target`), which checkpoints already hold; the teacher's weights are those the run starts
    from (or `distill.teacher`'s, when the run continues a student's distillation), read again on
    resume. The teacher samples as its folder says (s_V, s_T, guidance interval) unless `distill`
    sets the scales.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        if not cfg.model.init:
            raise ValueError("the distill stage needs model.init: the AID model folder it distills (the teacher)")
        if cfg.model.aid.lora is None:
            raise ValueError("the distill stage needs model.aid.lora: the student's LoRA on the UNet")
        d = cfg.distill
        init = read_model_dir(cfg.path(cfg.model.init))
        if d.teacher is None and init.aid.lora is not None:
            raise ValueError(f"model.init: {cfg.model.init} is already distilled (it has a UNet LoRA); to continue "
                             "its distillation, name the folder it was distilled from in distill.teacher")
        super().__init__(cfg)
        teacher = init if d.teacher is None else read_model_dir(cfg.path(d.teacher))
        if teacher.aid.lora is not None:
            raise ValueError(f"distill.teacher: {d.teacher} has a UNet LoRA; the teacher is an undistilled AID model")
        if Path(teacher.svd).resolve() != cfg.path(cfg.model.svd).resolve():
            logger.warning("the teacher's folder names the SVD base %s; it runs here on model.svd %s",
                           teacher.svd, cfg.model.svd)
        self.guidance = teacher.aid.sampler.resolve(guidance_frame=d.guidance_frame, guidance_text=d.guidance_text)
        self.params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        self.teacher = self._teacher_weights(cfg.path(d.teacher)) if d.teacher else {
            n: p.detach().clone() for n, p in self.params.items()}
        self.config = d
        self._ema, self._order = None, []
        logger.info("distilling %s into %s: teacher s_V %.2f, s_T %.2f, interval %s; grid of %d levels, skip %d",
                    d.teacher or cfg.model.init, cfg.model.init if d.teacher else "a new LoRA",
                    self.guidance.guidance_frame, self.guidance.guidance_text, self.guidance.guidance_interval,
                    d.teacher_steps, d.skip)

    def _teacher_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        """The trainable tensors as the teacher folder has them, its LoRA's product zero (B = 0): its
        weights go through the model, then the student's come back."""
        model = self.model
        student = {k: v.detach().clone() for k, v in model.aid_state_dict().items()}
        state = load_file(str(folder / "aid.safetensors"))
        missing = [k for k in student.keys() - state.keys() if ".lora_" not in k and not k.startswith("decoder.")]
        if missing:
            raise ValueError(f"distill.teacher: {folder} lacks what the student trains: {sorted(missing)[:5]}")
        model.load_aid_weights({k: state[k] if k in state else torch.zeros_like(v) if ".lora_B." in k else v
                                for k, v in student.items()})
        teacher = {n: p.detach().clone() for n, p in self.params.items()}
        model.load_aid_weights(student)
        return teacher

    def use_target(self, ema, params: list[nn.Parameter]) -> None:
        """The trainer's EMA of `params` (the same tensors as `self.params`) is the target network;
        read at every step, since loading a checkpoint replaces the EMA's tensors."""
        names = {id(p): n for n, p in self.params.items()}
        self._ema, self._order = ema, [names[id(p)] for p in params]

    def forward(self, video: torch.Tensor, instructions: Sequence[str], states: Sequence[Sequence[str]],
                generator: torch.Generator) -> torch.Tensor:
        if self._ema is None:
            raise RuntimeError("the distill stage needs its target network: the trainer's EMA (ema_decay > 0)")
        target = dict(zip(self._order, self._ema.shadow_params))
        c, g = self.config, self.guidance
        return consistency_distillation_loss(
            self.model, self.params, self.teacher, target, video, instructions, states, generator,
            c.teacher_steps, c.skip, g.guidance_frame, g.guidance_text, g.guidance_interval, c.huber_c,
            self.loss.motion_weight)


class DecoderStage(AIDStage):
    """The `decoder` stage: the frame decoder of `model.init`'s model trains alone, on latents drawn
    from the VAE's posterior of training clips, to give the VAE's temporal decoder's frames
    (L1 + L2); nothing else changes (`resolve_config` made the job's model the folder's)."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.model.aid.decoder is None:
            raise ValueError("the decoder stage needs model.aid.decoder: the frame decoder it trains")
        super().__init__(cfg)
        self.model.requires_grad_(False)
        self.model.decoder.requires_grad_(True)

    def train(self, mode: bool = True) -> DecoderStage:
        super().train(mode)
        self.model.eval()
        self.model.decoder.train(mode)
        return self

    def forward(self, video: torch.Tensor, instructions: Sequence[str], states: Sequence[Sequence[str]],
                generator: torch.Generator) -> torch.Tensor:
        model = self.model
        x = video.to(model.device, model.dtype)
        with torch.no_grad():
            posterior = model.vae.encode(x.flatten(0, 1)).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x)
            z = z.unflatten(0, x.shape[:2])
            target = model.temporal_decode(z).float()
        pred = model.decoder(z).float()
        return (pred - target).abs().mean() + ((pred - target) ** 2).mean()

    def enable_gradient_checkpointing(self) -> None:
        self.model.decoder.enable_gradient_checkpointing()

    def write_output(self, cfg: TrainConfig, folder: Path) -> Path:
        spec = read_model_dir(cfg.path(cfg.model.init))
        save_model_dir(self.model, folder / "model", svd=str(spec.svd), text_encoder=spec.text_encoder,
                       states=spec.states)
        return folder / "model"


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """The job as it runs: a decoder job's model is its `model.init` folder's (SVD, text encoder,
    AID config, with the job's `aid.decoder`), its clips described by templates (the decoder
    never reads them); a distill job keeps its `model.init` folder's frame decoder where it names
    none; every other job as written."""
    if cfg.stage == "distill" and cfg.model.init and cfg.model.aid.decoder is None:
        decoder = read_model_dir(cfg.path(cfg.model.init)).aid.decoder
        return replace(cfg, model=replace(cfg.model, aid=replace(cfg.model.aid, decoder=decoder)))
    if cfg.stage != "decoder":
        return cfg
    if not cfg.model.init:
        raise ValueError("the decoder stage needs model.init: the AID model folder whose decoder it trains")
    spec = read_model_dir(cfg.path(cfg.model.init))
    if spec.text_encoder is None:
        raise ValueError(f"model.init: {cfg.model.init} is a text-free base; the decoder stage takes an AID model")
    aid = replace(spec.aid, decoder=cfg.model.aid.decoder)
    return replace(cfg, model=replace(cfg.model, svd=str(spec.svd), vae="", text_encoder=spec.text_encoder, states="template",
                                      aid=aid))


STAGE_MODULES = {"vae": VAEStage, "base": BaseStage, "aid": AIDStage, "distill": DistillStage,
                 "decoder": DecoderStage}


def build_stage(cfg: TrainConfig) -> VAEStage | BaseStage | AIDStage | DistillStage | DecoderStage:
    return STAGE_MODULES[cfg.stage](cfg)
