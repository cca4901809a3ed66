"""Parameter budget and memory of AID, computed from configs alone, so no weights are needed.

Counts use the meta device. Memory runs the model's modules on fake tensors (torch's
FakeTensorMode: shapes, dtypes and strides, no storage) under `LiveBytes`, which follows every
storage while it is alive; the peak of live bytes is what an allocator must hold, before its own
caching and fragmentation.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from foresight.config import AIDConfig, UNetLoRAConfig
from foresight.models.adapters import AIDAdapters
from foresight.models.decoder import FrameDecoder
from foresight.models.dqformer import DQFormer
from foresight.models.unet import AdaptedUNet
from foresight.pipeline import DECODE_CHUNK_SIZE

# stabilityai/stable-video-diffusion-img2vid: vae/config.json and image_encoder/config.json (the UNet's
# is diffusers' default); the text encoder is OpenCLIP ViT-H/14's text tower as Stable Diffusion 2
# ships it (CLIP text, width 1024: the DQFormer's default text_dim).
SVD_VAE = {"block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
           "layers_per_block": 2, "latent_channels": 4, "sample_size": 768}
SVD_IMAGE_ENCODER = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16,
                     "num_hidden_layers": 32, "patch_size": 14, "image_size": 224, "projection_dim": 1024,
                     "hidden_act": "gelu"}
CLIP_H_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
               "projection_dim": 1024, "hidden_act": "gelu", "max_position_embeddings": 77}


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


@dataclass(frozen=True)
class Architecture:
    """What shapes one AID model's memory: its AID config and the configs of its frozen parts."""

    name: str
    config: AIDConfig
    unet: dict
    vae: dict
    image_encoder: dict
    text_encoder: dict  # a transformers config as a dict, with its model_type


def real_architecture() -> Architecture:
    """SVD with AID's default config (256x256, 16 frames)."""
    return Architecture("svd", AIDConfig(), {}, SVD_VAE, SVD_IMAGE_ENCODER, CLIP_H_TEXT | {"model_type": "clip_text_model"})


def folder_architecture(name: str) -> Architecture:
    """'tiny' or a model folder: the configs it holds (no weights are read)."""
    from foresight.model_dir import model_folder, read_model_dir, resolve_text_encoder

    spec = read_model_dir(model_folder(name))
    svd = spec.svd
    text = AutoConfig.from_pretrained(resolve_text_encoder(spec.text_encoder), local_files_only=True)
    return Architecture(
        name,
        spec.aid,
        dict(UNetSpatioTemporalConditionModel.load_config(svd / "unet")),
        dict(AutoencoderKLTemporalDecoder.load_config(svd / "vae")),
        CLIPVisionConfig.from_pretrained(svd / "image_encoder").to_dict(),
        text.to_dict(),
    )


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _text_model(config: dict) -> torch.nn.Module:
    text_config = CLIPTextConfig(**config) if config["model_type"] == "clip_text_model" else AutoConfig.for_model(**config)
    model = AutoModel.from_config(text_config)
    return getattr(model, "text_model", None) or model


@dataclass
class Modules:
    unet: AdaptedUNet
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    text: torch.nn.Module
    dqformer: DQFormer | None
    decoder: FrameDecoder | None = None  # the config's frame decoder, where it has one


def build_modules(arch: Architecture, frozen_dtype: torch.dtype, trainable_dtype: torch.dtype) -> Modules:
    """The model's modules with random weights, in the current tensor mode (fake, for memory)."""
    with _default_dtype(frozen_dtype):
        unet = UNetSpatioTemporalConditionModel.from_config(arch.unet) if arch.unet else UNetSpatioTemporalConditionModel()
        vae = AutoencoderKLTemporalDecoder.from_config(arch.vae)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**arch.image_encoder))
        text = _text_model(arch.text_encoder)
        dec = arch.config.decoder
        decoder = None if dec is None else FrameDecoder(dec, vae.config.latent_channels,
                                                        len(vae.config.block_out_channels), vae.config.scaling_factor)
    with _default_dtype(trainable_dtype):
        adapted = AdaptedUNet(unet, arch.config.adapters, dtype=trainable_dtype)
        dq = arch.config.dqformer
        dqformer = None if dq is None else DQFormer(dq, arch.config.num_frames)
    return Modules(adapted, vae, image_encoder, text, dqformer, decoder)


def lora_parameters(unet: torch.nn.Module, lora: UNetLoRAConfig) -> int:
    """Parameters of `lora` on `unet`: rank x (in + out) for every linear layer it targets (as
    peft's target_modules match: the name or a dotted suffix)."""
    return sum(lora.rank * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in lora.targets))


def weight_bytes(modules: Modules) -> dict[str, int]:
    def size(module: torch.nn.Module | None) -> int:
        if module is None:
            return 0
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])

    return {
        "unet": size(modules.unet.unet),
        "adapters": size(modules.unet.adapters),
        "dqformer": size(modules.dqformer),
        "vae": size(modules.vae),
        "frame_decoder": size(modules.decoder),
        "image_encoder": size(modules.image_encoder),
        "text_encoder": size(modules.text),
    }


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages that ops create while this mode is active.

    Each new storage is counted once (views and in-place results share their input's) and uncounted by
    a weakref callback when its last reference goes, as torch's MemTracker does; without
    MemTracker's module hooks, which refuse frozen parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, tuple[weakref.ref, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:  # views: not new
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._refs:
            return
        size = storage.nbytes()
        self._refs[key] = (weakref.ref(storage, lambda _, key=key: self._free(key)), size)
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, key: int) -> None:
        _, size = self._refs.pop(key)
        self.live -= size


def live_peak(step: Callable[[], None]) -> int:
    """Peak bytes of the tensors `step` creates and holds at once (not those made before it)."""
    with LiveBytes() as tracker:
        step()
    return tracker.peak


def context_tokens(config: AIDConfig) -> int:
    """Cross-attention tokens per frame: SVD's image token, the ME tokens, the frame's DE tokens."""
    dq = config.dqformer
    if dq is None:
        return 1
    return 1 + dq.condition_tokens(config.text_max_length)


def request_memory(arch: Architecture, batch: int, dtype: torch.dtype,
                   decode_chunk: int | None = DECODE_CHUNK_SIZE) -> dict:
    """Weights and activation peaks of one predict request: `batch` instructions (M), the three
    guidance branches batched (3M clips), N frames at the config's size, weights in `dtype`.

    Stages run one after another, so the request's peak is the weights plus the largest stage;
    each stage counts its inputs and what the request holds meanwhile (conditions, sampler
    state in float32, decoded frames). decode_chunk: the pipeline's `decode_chunk_size`, frames
    per VAE decode call counting each clip's two repeated end latents, in whole clips and at least
    one (None: all M clips at once). A config with a frame decoder decodes with it (no repeats).
    """
    cfg = arch.config
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    m, n, k, ns = batch, cfg.num_frames, cfg.context_frames, cfg.num_states
    with FakeTensorMode(), torch.no_grad():
        mods = build_modules(arch, dtype, dtype)
        for module in (mods.unet, mods.vae, mods.image_encoder, mods.text, mods.dqformer, mods.decoder):
            if module is not None:
                module.requires_grad_(False)  # inference: MemTracker then tracks no gradients
        weights = weight_bytes(mods)
        f = 2 ** (len(mods.vae.config.block_out_channels) - 1)
        h, w = cfg.height // f, cfg.width // f
        width = mods.unet.config.cross_attention_dim
        tokens = context_tokens(cfg)
        per_clip = cfg.decoded_frames(n)
        decoded = m * per_clip
        clips_per_call = m if decode_chunk is None else min(m, max(1, decode_chunk // per_clip))
        chunk = clips_per_call * per_clip
        size = mods.image_encoder.config.image_size

        def text() -> None:
            ids = torch.zeros(m * (1 + ns) + 1, cfg.text_max_length, dtype=torch.long)  # unique sentences
            mods.text(input_ids=ids, attention_mask=torch.ones_like(ids))
            if mods.dqformer is not None:
                dq = mods.dqformer.config
                t1 = torch.zeros(3 * m, cfg.text_max_length, dq.text_dim, dtype=dtype)
                t2 = torch.zeros(3 * m, ns * cfg.text_max_length, dq.text_dim, dtype=dtype)
                v = torch.zeros(3 * m, (size // mods.image_encoder.config.patch_size) ** 2 + 1, dq.vision_dim,
                                dtype=dtype)
                mask1, mask2 = torch.ones(t1.shape[:2], dtype=torch.bool), torch.ones(t2.shape[:2], dtype=torch.bool)
                mods.dqformer(t1, mask1, t2, mask2, v, num_frames=n)

        def encode() -> None:
            mods.vae.encode(torch.zeros(3 * m * k, 3, cfg.height, cfg.width, dtype=dtype))
            mods.image_encoder(pixel_values=torch.zeros(3 * m, 3, size, size, dtype=dtype), output_hidden_states=True)

        def unet() -> None:
            state = torch.zeros(m, n, 4, h, w)  # the sampler's float32 latents
            cond = torch.zeros(3 * m, n, 4, h, w, dtype=dtype)
            context = torch.zeros(3 * m * n, tokens, width, dtype=dtype)
            sample = torch.cat([torch.cat([state.to(dtype)] * 3), cond], dim=2)
            time_ids = torch.zeros(3 * m, 3, dtype=dtype)
            mods.unet(sample, torch.ones(3 * m, dtype=dtype), context, time_ids)

        def decode() -> None:
            frames = torch.empty(decoded, 3, cfg.height, cfg.width, dtype=dtype)  # the request's output
            if mods.decoder is None:
                mods.vae.decode(torch.zeros(chunk, 4, h, w, dtype=dtype), num_frames=n + 2)
            else:
                mods.decoder(torch.zeros(clips_per_call, n, 4, h, w, dtype=dtype))
            del frames

        stages = {}
        for name, step in tqdm(list({"text": text, "encode": encode, "unet": unet, "decode": decode}.items()),
                               desc="memory by stage", leave=False):
            stages[name] = live_peak(step)
    top = max(stages, key=stages.get)
    return {
        "model": arch.name, "height": cfg.height, "width": cfg.width, "num_frames": n, "batch": m,
        "clips_per_unet_call": 3 * m, "dtype": str(dtype).removeprefix("torch."), "decode_chunk": chunk,
        "weights_bytes": weights, "weights_total_bytes": sum(weights.values()),
        "activation_peak_bytes": stages, "peak_stage": top,
        "request_peak_bytes": sum(weights.values()) + stages[top],
    }


def training_memory(arch: Architecture, batch: int, checkpointing: bool, distill: bool = False) -> dict:
    """Peak memory of one AID training step: the frozen backbone stored in bf16 and run under bf16
    autocast, adapters and DQFormer in float32 with float32 gradients and AdamW's two states,
    `batch` clips of N frames; gradient checkpointing of the UNet's blocks or not.

    distill: a `distill` stage's step (`foresight.training.distill`): the config's UNet LoRA trains
    too, the teacher's and the EMA target's copies of every trained tensor are held, and before
    the student's step the teacher runs its three guidance branches (3 x batch clips) and the
    target one, without gradients. The LoRA is counted by its size (weights, gradients, AdamW
    states, copies; peft's layers cannot be built on fake tensors): its activations, rank r beside
    layer widths of 320 and more, are left out.

    The step is measured in steady state (after a first step created AdamW's states); its peak
    holds activations, gradients and the optimizer's temporaries. Latents and text features come
    in as inputs (a latent cache, frozen encoders outside the step); all weights count.
    """
    cfg = arch.config
    with FakeTensorMode():
        mods = build_modules(arch, torch.bfloat16, torch.float32)
        lora = 0
        if distill:
            if cfg.lora is None:
                raise ValueError("a distill step needs the config's UNet LoRA (model.aid.lora)")
            lora = lora_parameters(mods.unet.unet, cfg.lora)
        mods.unet.unet.requires_grad_(False)
        if checkpointing:
            mods.unet.unet.enable_gradient_checkpointing()
        trainable = [*mods.unet.adapters.parameters(), *mods.dqformer.parameters()]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        f = 2 ** (len(mods.vae.config.block_out_channels) - 1)
        b, n, h, w = batch, cfg.num_frames, cfg.height // f, cfg.width // f
        dq = mods.dqformer.config
        size = mods.image_encoder.config.image_size

        def teacher_and_target() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
                for clips in (3 * b, b):
                    context = torch.zeros(clips * n, context_tokens(cfg), dq.width, dtype=torch.bfloat16)
                    mods.unet(torch.zeros(clips, n, 8, h, w, dtype=torch.bfloat16), torch.ones(clips), context,
                              torch.zeros(clips, 3))

        def step() -> None:
            if distill:
                teacher_and_target()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t1 = torch.zeros(b, cfg.text_max_length, dq.text_dim)
                t2 = torch.zeros(b, cfg.num_states * cfg.text_max_length, dq.text_dim)
                v = torch.zeros(b, (size // mods.image_encoder.config.patch_size) ** 2 + 1, dq.vision_dim)
                mask1, mask2 = torch.ones(t1.shape[:2], dtype=torch.bool), torch.ones(t2.shape[:2], dtype=torch.bool)
                m_cond = mods.dqformer(t1, mask1, t2, mask2, v, num_frames=n)
                image_token = torch.zeros(b * n, 1, m_cond.shape[-1], dtype=m_cond.dtype)
                sample = torch.zeros(b, n, 8, h, w, dtype=torch.bfloat16)
                out = mods.unet(sample, torch.ones(b), torch.cat([image_token, m_cond], dim=1), torch.zeros(b, 3))
                loss = out.float().square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # AdamW's states exist from here on, as in every later step
        activations = live_peak(step)
        weights = weight_bytes(mods)
        optimizer_states = sum(t.numel() * t.element_size() for state in optimizer.state.values()
                               for t in state.values() if isinstance(t, torch.Tensor))
        # the LoRA in float32: weights, gradients (in the step's peak), AdamW's two states
        weights["lora"] = 4 * lora
        optimizer_states += 2 * 4 * lora
        activations += 4 * lora
        copies = 2 * (4 * lora + sum(p.numel() * p.element_size() for p in trainable)) if distill else 0
    held = sum(weights.values()) + optimizer_states + copies
    return {"model": arch.name, "height": cfg.height, "width": cfg.width, "num_frames": cfg.num_frames,
            "batch": batch, "gradient_checkpointing": checkpointing, "stage": "distill" if distill else "aid",
            "weights_bytes": sum(weights.values()), "lora_bytes": weights["lora"],
            "teacher_and_target_bytes": copies, "optimizer_state_bytes": optimizer_states,
            "step_peak_bytes": activations, "peak_bytes": held + activations}


def architecture(name: str, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None) -> Architecture:
    """'svd' (the real config; 256x256x16 unless given) or 'tiny' / a model folder (its own
    config, resized where given)."""
    arch = real_architecture() if name == "svd" else folder_architecture(name)
    cfg = arch.config
    size = {"height": height or cfg.height, "width": width or cfg.width, "num_frames": num_frames or cfg.num_frames}
    return replace(arch, config=replace(cfg, **size))
