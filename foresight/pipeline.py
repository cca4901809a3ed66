"""The Python API: load a model, predict future frames from context frames and instructions.

    from foresight.pipeline import load_pipeline
    pipe = load_pipeline("tiny")
    video = pipe.predict(frames, ["push the red block to the left"])  # uint8 (1, N-K, H, W, 3)
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict
from typing import Literal, Sequence

import numpy as np
import torch

from foresight.diffusion.edm import Denoiser
from foresight.diffusion.sampling import SOLVERS, TwoScaleGuidance, one_branch, sampling_sigmas
from foresight.dtypes import cpu_dtype_warning, dtype_name, resolve_dtype
from foresight.engines import Backend, OrtOptions, load_backend
from foresight.engines.torch_backend import TorchBackend
from foresight.model_dir import LoadedModel, load_model
from sim_bridge.common.imaging import fit_frames

logger = logging.getLogger(__name__)

# frames per VAE-decoder call (whole clips, at least one; see AIDModel.decode_latents): bounds the
# decoder's peak memory instead of decoding all M x (N + 2) frames of a request at once
DECODE_CHUNK_SIZE = 32


# PyTorch's threads beside ONNX Runtime on a CPU: ONNX Runtime's workers spin between its runs,
# and PyTorch's own workers on the same cores fought them: on 2 cores a tiny-turbo request took
# 147 ms with PyTorch on one thread against 155 ms on two (three pairs of 60 requests; the
# encoders 9.5 vs 14.5 ms). At SVD's size the encoders are a few seconds of a minutes-long request.
ENGINE_TORCH_THREADS = 1


def torch_threads_beside(backend: str, device: str | torch.device) -> int | None:
    """PyTorch's thread count where `backend` runs the graphs on `device`; None: leave it as set."""
    return ENGINE_TORCH_THREADS if backend == "onnxruntime" and torch.device(device).type == "cpu" else None


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(frames)).movedim(-1, -3).float() / 127.5 - 1


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


class ForesightPipeline:
    """Context frames + instructions -> predicted frames, with a seeded EDM sampler.

    loaded: the model with its card and the states it was trained with (foresight.model_dir);
    backend runs the UNet (engines.Backend; default PyTorch eager); backend_info says which one
    and why (from engines.load_backend), and `info()` reports it.
    """

    def __init__(self, loaded: LoadedModel, backend: Backend | None = None, backend_info: dict | None = None) -> None:
        model = loaded.model
        self.model = model.eval()
        self.card = loaded.card
        cfg = model.config
        self.decomposer = loaded.states
        self.height, self.width = cfg.height, cfg.width
        self.num_frames, self.context_frames = cfg.num_frames, cfg.context_frames
        self.defaults = cfg.sampler
        self.backend = backend or TorchBackend(model)
        self.backend_info = backend_info or {
            "name": self.backend.name,
            "reason": "given to ForesightPipeline" if backend else "default",
            "details": self.backend.describe(),
        }
        self.denoiser = Denoiser(self.backend.unet, dtype=model.dtype)

    def info(self) -> dict:
        cfg = self.model.config
        return {
            "card": self.card,
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "context_frames": self.context_frames,
            "defaults": asdict(self.defaults),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "num_states": cfg.num_states,
            "backend": self.backend_info,
            "versions": {"torch": torch.__version__},
        }

    def _check(self, frames: np.ndarray, instructions: Sequence[str], num_frames: int) -> np.ndarray:
        if isinstance(instructions, str):
            raise TypeError("instructions must be a list of strings, not one string")
        if not instructions or not all(isinstance(s, str) and s.strip() for s in instructions):
            raise ValueError(f"instructions must be non-empty strings, got {list(instructions)!r}")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim not in (4, 5) or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (K, H, W, 3) or (M, K, H, W, 3), got {frames.dtype} {frames.shape}")
        if frames.ndim == 4:
            frames = np.broadcast_to(frames, (len(instructions),) + frames.shape)
        if frames.shape[0] != len(instructions):
            raise ValueError(f"{frames.shape[0]} clips of frames for {len(instructions)} instructions")
        if frames.shape[1] != self.context_frames:
            raise ValueError(f"this model takes K={self.context_frames} context frames, got {frames.shape[1]}")
        if not self.context_frames < num_frames <= self.num_frames:
            raise ValueError(f"num_frames must be in ({self.context_frames}, {self.num_frames}], got {num_frames}")
        return fit_frames(frames, self.height, self.width)

    @torch.no_grad()
    def predict(
        self,
        frames: np.ndarray,
        instructions: Sequence[str],
        *,
        num_frames: int | None = None,
        steps: int | None = None,
        guidance_frame: float | None = None,
        guidance_text: float | None = None,
        guidance_interval: tuple[float, float] | None | Literal["config"] = "config",
        solver: str | None = None,
        seed: int | Sequence[int] = 0,
        decode_chunk_size: int | None = DECODE_CHUNK_SIZE,
        progress: bool = False,
    ) -> np.ndarray:
        """Predict the frames after the K context frames for every instruction.

        frames: uint8 (K, H, W, 3) shared by all instructions, or (M, K, H, W, 3) one clip per
        instruction; any size (scaled to cover the model resolution, then centre-cropped).
        guidance_interval: (low, high) sigma range for guidance, None for every step; by default
        the model config's ("config").
        solver: "euler" | "heun" | "dpmpp_2m" (None: the model config's); Heun calls the UNet
        2 * steps - 1 times, the others once per step.
        seed: one int (sample m uses seed + m) or one per instruction. Noise is drawn per sample,
        so a sample does not depend on the rest of the batch beyond float rounding.
        decode_chunk_size: most frames per VAE-decoder call, in whole clips (None: all at once);
        the frames do not depend on it.
        Returns uint8 (M, num_frames - K, height, width, 3).
        """
        start = time.perf_counter()
        num_frames = num_frames or self.num_frames
        sampler = self.defaults.resolve(steps, guidance_frame, guidance_text, guidance_interval, solver)
        frames = self._check(frames, instructions, num_frames)
        m, k = len(instructions), self.context_frames
        seeds = [seed + i for i in range(m)] if isinstance(seed, int) else list(seed)
        if len(seeds) != m:
            raise ValueError(f"{len(seeds)} seeds for {m} instructions")
        model = self.model
        # 1. per-sample noise: initial latents and the context frames' noise augmentation
        h, w = self.height // self.vae_factor, self.width // self.vae_factor
        latent_noise, aug_noise, generators = [], [], []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            latent_noise.append(torch.randn(num_frames, 4, h, w, generator=g))
            aug_noise.append(torch.randn(k, 3, self.height, self.width, generator=g))
            generators.append(g)
        # 2. conditions for the three guidance branches in one batched pass, or for the full
        # condition alone at unit scales (a distilled model's sampler)
        states = [self.decomposer(s, frames[i, 0]) for i, s in enumerate(instructions)]
        args = (frames_to_tensor(frames), instructions, states, num_frames, torch.stack(aug_noise))
        runtime = dict(dqformer=self.backend.dqformer, vae_encoder=self.backend.vae_encoder)
        if one_branch(sampler.guidance_frame, sampler.guidance_text):
            full = model.conditions(*args, **runtime)
            guided = functools.partial(self.denoiser, cond=full)
        else:
            cond = model.guidance_conditions(*args, **runtime)
            guided = TwoScaleGuidance(self.denoiser, cond, sampler.guidance_frame, sampler.guidance_text,
                                      sampler.guidance_interval)
        # 3. sample from sigma_max down to 0: float64 schedule, float32 state, the model's dtype inside
        sigmas = sampling_sigmas(sampler.solver, sampler.steps, model.sigma_min, model.sigma_max).to(model.device)
        x = (torch.stack(latent_noise) * float(sigmas[0])).to(model.device)
        fresh = {}
        if sampler.solver == "consistency":  # fresh noise at every level, from each request's own generator
            fresh["noise"] = lambda: torch.stack([torch.randn(num_frames, 4, h, w, generator=g)
                                                  for g in generators]).to(model.device)
        latents = SOLVERS[sampler.solver](guided, x, sigmas, disable=not progress, **fresh)
        # 4. decode the predicted frames
        video = tensor_to_frames(model.decode_latents(latents, self.backend.vae_decoder, decode_chunk_size, skip=k))
        logger.info("predicted %d x %d frames in %.2fs (%d %s steps)", m, num_frames - k, time.perf_counter() - start,
                    sampler.steps, sampler.solver)
        return video

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.model.vae.config.block_out_channels) - 1)


def load_pipeline(
    spec: str,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    backend: str = "auto",
    engines: str | None = None,
    threads: int = 0,
    compile: bool = False,
) -> ForesightPipeline:
    """'tiny', 'tiny-random' or a model folder -> a ready pipeline on `device`.

    dtype: what the model computes in, a torch dtype or "fp32" | "bf16" | "fp16"; the sampler's
    state stays float32 whatever it is. On CUDA, float32 matmuls and convolutions may use TF32.
    backend: "auto" | "tensorrt" | "onnxruntime" | "torch"; engines: an engine folder from
    export/build_engines.py. Engines that do not match the model are refused and logged, and the
    next backend is used (see foresight.engines.select); engines=None means PyTorch.
    threads: CPU threads for PyTorch and ONNX Runtime alike; 0 keeps each runtime's default. When
    ONNX Runtime runs the graphs on the CPU, PyTorch's share of a request (the image, text and VAE
    encoders) runs on one thread (see ENGINE_TORCH_THREADS).
    compile: `torch.compile` the UNet of the PyTorch backend; the first request compiles it
    (16-19 s for the tiny UNet on 2 CPU cores), so a server warms it up before it reports healthy.
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    dtype = resolve_dtype(dtype)
    if threads:
        torch.set_num_threads(threads)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    warning = cpu_dtype_warning(dtype_name(dtype)) if torch.device(device).type == "cpu" else None
    if warning:
        logger.warning(warning)
    loaded = load_model(spec, dtype=dtype)
    model = loaded.model.to(device=device, dtype=dtype)
    runner, info = load_backend(model, backend, engines, ort_options=OrtOptions(intra_op_threads=threads),
                                  compile=compile)
    beside = torch_threads_beside(runner.name, device)
    if beside is not None:
        torch.set_num_threads(beside)
        logger.info("%s runs the graphs: PyTorch's encoders get %d thread(s)", runner.name, beside)
    if "unet" in getattr(runner, "files", {}):
        # the engine runs the UNet (adapters inside): PyTorch's copy would only hold memory, 6 GB in
        # fp32 at SVD's size, beside the engine's own; a full-size ONNX Runtime node was killed at
        # 24 GB with both
        model.unet.to_empty(device="meta")
        logger.info("the %s engine runs the UNet: PyTorch's UNet weights released", runner.name)
    return ForesightPipeline(loaded, backend=runner, backend_info=info)
