"""TensorRT engines run on torch CUDA tensors (GPU path: written for TensorRT 11, untested here).

Engines are strongly typed: their I/O dtypes are those of the ONNX graph they were built from
(float16 everywhere for fp16 engines, float32 for fp32; masks are bool). Inputs are cast to the
engine's dtypes and outputs back to the caller's. Every call is enqueued on the current torch
stream with set_tensor_address + execute_async_v3, so it orders with surrounding torch work.
"""

from __future__ import annotations

from pathlib import Path

import torch
from foresight.engines.base import first_frames


def missing_reason() -> str | None:
    """None when TensorRT engines can run here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return f"tensorrt is not installed ({e})"
    return None


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    return {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
    }[trt_dtype]


class _Engine:
    """One deserialized engine; optional CUDA graph replay per input-shape signature."""

    def __init__(self, path: Path, device: torch.device, cuda_graph: bool) -> None:
        import tensorrt as trt

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path} (built by another TensorRT version or GPU?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in names if self.engine.get_tensor_mode(n) == mode}
        self.outputs = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in names if self.engine.get_tensor_mode(n) != mode}
        self.context = self.engine.create_execution_context()
        self.device = device
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}

    def _bind(self, context, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, t in tensors.items():
            if not context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"{name} {tuple(t.shape)} is outside the engine's optimization profile (see the manifest)")
            context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name, dtype in self.outputs.items():
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device=self.device)
            context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        return outputs

    def __call__(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        tensors = {n: tensors[n].to(self.device, dtype).contiguous() for n, dtype in self.inputs.items()}
        if self.cuda_graph:
            return self._replay(tensors)
        outputs = self._bind(self.context, tensors)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return next(iter(outputs.values()))

    def _replay(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fixed shapes: capture execute_async_v3 once per shape signature, then replay it.

        Each signature gets its own execution context, because changing shapes or addresses on
        a context invalidates graphs captured from it.
        """
        key = tuple((n, tuple(t.shape)) for n, t in tensors.items())
        if key not in self._graphs:
            context = self.engine.create_execution_context()
            static_in = {n: t.clone() for n, t in tensors.items()}
            static_out = self._bind(context, static_in)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                context.execute_async_v3(side.cuda_stream)  # warm-up: TensorRT allocates lazily
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
            self._graphs[key] = (context, graph, static_in, static_out)
        _, graph, static_in, static_out = self._graphs[key]
        for name, t in tensors.items():
            static_in[name].copy_(t)
        graph.replay()
        return next(iter(static_out.values())).clone()


class TensorRTBackend:
    """The UNet, VAE-decoder, VAE-encoder and DQFormer engines of an engine folder.

    num_frames: N, the frame count the DQFormer engine always produces. cuda_graph: replay
    captured CUDA graphs (pays off for the UNet at fixed request shapes).
    """

    name = "tensorrt"

    def __init__(self, files: dict[str, Path], num_frames: int, device: str | torch.device = "cuda", cuda_graph: bool = False) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TensorRT engines run on a CUDA device, got {self.device}")
        self.num_frames = num_frames
        # any subset of the engines: the exporter checks them one at a time
        self._engines = {name: _Engine(Path(path), self.device, cuda_graph and name != "vae_decoder")
                         for name, path in files.items()}
        self.files = {k: str(v) for k, v in files.items()}
        self.cuda_graph = cuda_graph

    def _engine(self, name: str) -> _Engine:
        if name not in self._engines:
            what = "a text-free model" if name == "dqformer" else f"loaded with {sorted(self._engines)}"
            raise RuntimeError(f"this backend has no {name} engine ({what})")
        return self._engines[name]

    def unet(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        timestep = timestep.reshape(-1).expand(sample.shape[0])
        tensors = dict(
            sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states, added_time_ids=added_time_ids
        )
        return self._engine("unet")(tensors).to(sample.dtype)

    def vae_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        return self._engine("vae_decoder")(dict(latents=latents)).to(latents.dtype)

    def vae_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        return self._engine("vae_encoder")(dict(frames=frames)).to(frames.dtype)

    def dqformer(self, t1, t1_mask, t2, t2_mask, v, num_frames: int | None = None) -> torch.Tensor:
        out = self._engine("dqformer")(dict(t1=t1, t1_mask=t1_mask, t2=t2, t2_mask=t2_mask, v=v)).to(t1.dtype)
        return first_frames(out, t1.shape[0], num_frames)

    def describe(self) -> dict:
        import tensorrt as trt

        return {
            "tensorrt": trt.__version__,
            "gpu": torch.cuda.get_device_name(self.device),
            "files": self.files,
            "io_dtypes": {n: str(d).removeprefix("torch.")
                          for n, d in next(iter(self._engines.values())).inputs.items()},
            "cuda_graph": self.cuda_graph,
        }
