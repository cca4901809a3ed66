"""ONNX Runtime: CUDA (+ its TensorRT provider) with IO binding on GPU, the CPU provider otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from foresight.engines.base import first_frames

logger = logging.getLogger(__name__)

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}
_TORCH = {np.float32: torch.float32, np.float16: torch.float16, np.bool_: torch.bool}
_LEVELS = ("disable", "basic", "extended", "all")


def missing_reason() -> str | None:
    """None when ONNX Runtime can be used, else why not."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime is not installed ({e}); pip install onnxruntime (CPU) or onnxruntime-gpu"
    return None


@dataclass(frozen=True)
class OrtOptions:
    """Session settings. intra_op_threads 0 = ONNX Runtime's default (one per physical core); the
    first backend of a process sets it for all (see make_process_pool).

    providers None = the best present for the device: TensorRT EP, CUDA EP, CPU on a GPU; CPU otherwise.
    """

    intra_op_threads: int = 0
    optimization: str = "all"
    providers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.optimization not in _LEVELS:
            raise ValueError(f"optimization must be one of {_LEVELS}, got {self.optimization!r}")
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")


def make_process_pool(threads: int) -> int | None:
    """Create ONNX Runtime's process-wide intra-op pool with `threads`; None if it exists already.

    Every session runs on this one pool: separate per-session pools cost time on a small CPU, as
    the UNet's threads keep spinning after its run and take the cores from the VAE decoder's
    threads (its decode took 1.5x as long). ONNX Runtime holds the pool itself and refuses to
    replace it, so the first backend of a process sets its size and later ones run on it, with
    their own `intra_op_threads` not applied (logged).
    """
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    try:
        ort.set_global_thread_pool_sizes(threads, 1)
    except Fail as e:
        logger.info("ONNX Runtime's process-wide thread pool exists already (%s); intra_op_threads=%d not applied", e, threads)
        return None
    return threads


LARGE_GRAPH_BYTES = 2 * 1024**3  # graphs whose weights alone fill a few GB: a model of SVD's size


def is_large(path: Path) -> bool:
    """True for a graph whose weights (the file and its external data) exceed LARGE_GRAPH_BYTES."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0) > LARGE_GRAPH_BYTES


def _session(path: Path, device: torch.device, options: OrtOptions, cache_dir: Path, lean: bool):
    """lean: the model is of SVD's size; on a CPU, hold no memory beyond what each run needs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.optimization]
    so.use_per_session_threads = False  # the process-wide pool (make_process_pool)
    so.log_severity_level = 3
    if device.type == "cpu" and lean:
        # MLAS keeps prepacked copies of the weights beside the graph's own: at SVD's size (6.1 GB
        # of fp32 weights) a node serving one request was killed at 24 GB; without them it fits.
        # The arena grows by powers of two and keeps its peak: the full-size VAE decoder's (a small
        # graph with 7 GB of activations) held 7.8 GB after the request and drove one request from
        # 17.7 to 21.7 GB; without it the decode takes longer (72 s vs 37 s) and returns it all
        so.add_session_config_entry("session.disable_prepacking", "1")
        so.enable_cpu_mem_arena = False
    present = ort.get_available_providers()
    if options.providers is not None:
        wanted = list(options.providers)
    elif device.type == "cuda":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        wanted = ["CPUExecutionProvider"]
    providers = []
    for name in wanted:
        if name not in present:
            logger.info("ONNX Runtime provider %s is not present (have %s)", name, present)
            continue
        if name == "TensorrtExecutionProvider":  # GPU path: untested here
            providers.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}))
        elif name == "CUDAExecutionProvider":  # GPU path: untested here
            providers.append((name, {"device_id": device.index or 0}))
        else:
            providers.append(name)
    if device.type == "cuda" and not any(p[0] == "CUDAExecutionProvider" for p in providers if isinstance(p, tuple)):
        raise RuntimeError(f"ONNX Runtime has no CUDA provider here ({present}); install onnxruntime-gpu")
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


class _Graph:
    """One session with its I/O names and dtypes."""

    def __init__(self, path: Path, device: torch.device, options: OrtOptions, cache_dir: Path, lean: bool) -> None:
        self.session = _session(path, device, options, cache_dir, lean)
        self.inputs = {i.name: _NUMPY[i.type] for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self.output, self.output_dtype, self.output_dims = out.name, _NUMPY[out.type], out.shape
        self.device = device

    def __call__(self, tensors: dict[str, torch.Tensor], out_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.device.type == "cuda":
            return self._run_bound(tensors, out_shape).to(dtype)
        feed = {name: tensors[name].detach().cpu().numpy().astype(np_dtype, copy=False) for name, np_dtype in self.inputs.items()}
        out = self.session.run([self.output], feed)[0]
        return torch.from_numpy(out).to(dtype)

    def _run_bound(self, tensors: dict[str, torch.Tensor], out_shape: tuple[int, ...]) -> torch.Tensor:
        """GPU path (untested here): bind torch CUDA memory directly, no host copies."""
        index = self.device.index or 0
        binding = self.session.io_binding()
        keep = []
        for name, np_dtype in self.inputs.items():
            t = tensors[name].to(self.device, _TORCH[np_dtype]).contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", index, np_dtype, tuple(t.shape), t.data_ptr())
        out = torch.empty(out_shape, dtype=_TORCH[self.output_dtype], device=self.device)
        binding.bind_output(self.output, "cuda", index, self.output_dtype, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        return out


class OnnxRuntimeBackend:
    """The UNet, VAE-decoder, VAE-encoder and DQFormer graphs of an engine folder, run by ONNX Runtime.

    num_frames: N, the frame count the DQFormer graph always produces (its DE queries).
    """

    name = "onnxruntime"

    def __init__(
        self,
        files: dict[str, Path],
        num_frames: int,
        device: str | torch.device = "cpu",
        options: OrtOptions = OrtOptions(),
    ) -> None:
        self.device = torch.device(device)
        self.options = options
        self.num_frames = num_frames
        cache_dir = Path(next(iter(files.values()))).parent / "ort_trt_cache"
        # None: the pool an earlier backend of this process made, of a size ONNX Runtime does not report
        self.intra_op_threads = make_process_pool(options.intra_op_threads)

        # any subset of the graphs: the exporter checks them one session at a time
        paths = {name: Path(path) for name, path in files.items()}
        self.lean = any(is_large(path) for path in paths.values())
        self._graphs = {name: _Graph(path, self.device, options, cache_dir, self.lean) for name, path in paths.items()}
        self.files = {k: str(v) for k, v in files.items()}

    def _graph(self, name: str) -> _Graph:
        if name not in self._graphs:
            what = "a text-free model" if name == "dqformer" else f"loaded with {sorted(self._graphs)}"
            raise RuntimeError(f"this backend has no {name} graph ({what})")
        return self._graphs[name]

    def unet(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        unet = self._graph("unet")
        out_channels = unet.output_dims[2]
        shape = (*sample.shape[:2], out_channels, *sample.shape[3:])
        timestep = timestep.reshape(-1).expand(sample.shape[0])
        tensors = dict(
            sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states, added_time_ids=added_time_ids
        )
        return unet(tensors, shape, sample.dtype).to(sample.device)

    def vae_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        b, f, _, h, w = latents.shape
        decoder = self._graph("vae_decoder")
        channels, factor = decoder.output_dims[2], decoder.output_dims[3] // h
        shape = (b, f, channels, h * factor, w * factor)
        return decoder(dict(latents=latents), shape, latents.dtype).to(latents.device)

    def vae_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        encoder = self._graph("vae_encoder")
        shape = (*frames.shape[:2], *encoder.output_dims[2:])  # the latent size is fixed by the export
        return encoder(dict(frames=frames), shape, frames.dtype).to(frames.device)

    def dqformer(self, t1, t1_mask, t2, t2_mask, v, num_frames: int | None = None) -> torch.Tensor:
        dqformer = self._graph("dqformer")
        batch = t1.shape[0]
        shape = (batch * self.num_frames, *dqformer.output_dims[1:])
        out = dqformer(dict(t1=t1, t1_mask=t1_mask, t2=t2, t2_mask=t2_mask, v=v), shape, t1.dtype)
        return first_frames(out.to(t1.device), batch, num_frames)

    def describe(self) -> dict:
        first = next(iter(self._graphs.values()))
        return {
            "providers": first.session.get_providers(),
            "files": self.files,
            "io_dtypes": {name: str(dtype.__name__) for name, dtype in first.inputs.items()},
            "intra_op_threads": self.intra_op_threads,
            "optimization": self.options.optimization,
            "lean": self.lean,
        }
