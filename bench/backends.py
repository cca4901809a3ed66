"""ONNX Runtime (or TensorRT on a GPU) against PyTorch eager: one UNet step and one whole request.

Engines are exported once into a temporary folder through the exporter's API, so what is
measured is exactly what `export/build_engines.py` ships. Both backends get the same thread
count, so the ratio compares runtimes, not thread pools, and run interleaved, so it compares
them under the same machine conditions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from foresight.engines import Backend, OrtOptions, load_backend
from foresight.engines.torch_backend import TorchBackend
from foresight.export.build_engines import BuildConfig, build_engines
from foresight.export.onnx_export import graph_shapes, random_inputs

from bench.core import INSTRUCTIONS, Plan, measure_side_by_side, random_frames
from foresight.model_dir import LoadedModel
from foresight.models.aid import AIDModel
from foresight.pipeline import ForesightPipeline

log = logging.getLogger("bench")


def build(spec: str, out: Path, device: str, max_hypotheses: int) -> Path:
    """Export and check the engines (fp16 TensorRT on a GPU, fp32 ONNX on a CPU) into `out`."""
    precision = "fp16" if device.startswith("cuda") else "fp32"
    log.info("exporting %s engines for %s into %s", precision, spec, out)
    build_engines(BuildConfig(model=spec, out=out, precision=precision, max_batch=max_hypotheses, seed=0))
    return out


def engine_backend(model: AIDModel, engines: Path, threads: int) -> tuple[Backend, dict]:
    """The best engine backend for the model's device; refuses to fall back to PyTorch silently."""
    backend, info = load_backend(model, "auto", engines, ort_options=OrtOptions(intra_op_threads=threads))
    if backend.name == "torch":
        raise RuntimeError(f"the engines in {engines} cannot be used: {info['skipped']}")
    return backend, info


def sync_for(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else None


def compare(loaded: LoadedModel, engine: Backend, steps: int, plan: Plan, device: str) -> dict:
    """Per UNet step (the three guidance branches in one call) and per request, engine vs eager."""
    model = loaded.model
    cfg = model.config
    eager = TorchBackend(model)
    sync = sync_for(device)
    x = random_inputs("unet", graph_shapes(model, cfg.height, cfg.width), 3, cfg.num_frames, model.dtype,
                      model.device, torch.Generator().manual_seed(0))
    with torch.no_grad():
        step = measure_side_by_side({"torch": lambda: eager.unet(**x), engine.name: lambda: engine.unet(**x)},
                                    plan.unet_runs, plan.warmup + 1, "UNet step", sync)
        step_diff = (eager.unet(**x).float() - engine.unet(**x).float()).abs().max().item()
    frames = random_frames(cfg.context_frames, cfg.height, cfg.width)
    text = [INSTRUCTIONS[0]]
    pipes = {"torch": ForesightPipeline(loaded), engine.name: ForesightPipeline(loaded, backend=engine)}
    requests = measure_side_by_side(
        {name: (lambda pipe=pipe: pipe.predict(frames, text, steps=steps)) for name, pipe in pipes.items()},
        plan.runs, plan.warmup, "request")
    videos = [pipe.predict(frames, text, steps=steps).astype(int) for pipe in pipes.values()]
    return {
        "engine": engine.name,
        "unet_batch": 3,
        "steps": steps,
        "step": step,
        "step_speedup": step["torch"].median / step[engine.name].median,
        "step_max_abs_diff": step_diff,
        "request": requests,
        "request_speedup": requests["torch"].median / requests[engine.name].median,
        "request_max_uint8_diff": int(np.abs(videos[0] - videos[1]).max()),
    }
