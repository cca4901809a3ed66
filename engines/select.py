"""Choosing a backend: the best one that is installed and whose engines match the loaded model.

`auto` tries TensorRT, then ONNX Runtime, then PyTorch; every skip is logged with its reason and
kept in the returned info, so `info` can say which backend runs and why. A named backend that
cannot be used falls back down the same chain (a slower answer beats no answer on a robot) with
a warning. Engines are never used unchecked (see foresight.engines.manifest).
"""

from __future__ import annotations

import logging
from pathlib import Path

from foresight.engines import onnxruntime_backend, tensorrt_backend
from foresight.engines.base import Backend, EngineRefused
from foresight.engines.manifest import (
    check_graph,
    gpu_name,
    graph_modules,
    read_manifest,
)
from foresight.engines.onnxruntime_backend import OnnxRuntimeBackend, OrtOptions
from foresight.engines.tensorrt_backend import TensorRTBackend
from foresight.engines.torch_backend import TorchBackend
from torch import nn

logger = logging.getLogger(__name__)

CHAIN = ("tensorrt", "onnxruntime", "torch")
BACKENDS = ("auto",) + CHAIN


def _engine_files(
    kind: str, model: nn.Module, engines: Path, manifest: dict, fingerprints: dict
) -> dict[str, Path]:
    entries = {g: check_graph(manifest, engines, g, kind, model, fingerprints) for g in graph_modules(model)}
    # the TensorRT engine file is the first listed; ONNX graphs may carry an external-data file after it
    return {g: engines / next(iter(e["files"])) for g, e in entries.items()}


def _tensorrt(model: nn.Module, engines: Path, manifest: dict, fingerprints: dict, cuda_graph: bool) -> Backend:
    reason = tensorrt_backend.missing_reason()
    if reason:
        raise EngineRefused(reason)
    if model.device.type != "cuda":
        raise EngineRefused(f"the model is on {model.device}, TensorRT needs it on a CUDA device")
    import tensorrt as trt

    if manifest["versions"].get("tensorrt") != trt.__version__:
        raise EngineRefused(f"engines built with TensorRT {manifest['versions'].get('tensorrt')}, running {trt.__version__}; rebuild")
    if manifest.get("gpu") != gpu_name():
        raise EngineRefused(f"engines built on {manifest.get('gpu')}, running on {gpu_name()}; rebuild")
    files = _engine_files("tensorrt", model, engines, manifest, fingerprints)
    return TensorRTBackend(files, model.config.num_frames, model.device, cuda_graph=cuda_graph)


def _onnxruntime(model: nn.Module, engines: Path, manifest: dict, fingerprints: dict, options: OrtOptions) -> Backend:
    reason = onnxruntime_backend.missing_reason()
    if reason:
        raise EngineRefused(reason)
    files = _engine_files("onnx", model, engines, manifest, fingerprints)
    return OnnxRuntimeBackend(files, model.config.num_frames, model.device, options)


def load_backend(
    model: nn.Module,
    backend: str = "auto",
    engines: str | Path | None = None,
    ort_options: OrtOptions = OrtOptions(),
    cuda_graph: bool = False,
    compile: bool = False,
) -> tuple[Backend, dict]:
    """-> (backend, info). info: name, requested, reason, skipped {backend: why}, engines, details.

    With engines=None there is nothing to load, so `auto` means PyTorch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if engines is None and backend in ("tensorrt", "onnxruntime"):
        raise ValueError(f"backend {backend!r} needs an engine folder (engines=...); build one with export/build_engines.py")
    chain = CHAIN if backend == "auto" else CHAIN[CHAIN.index(backend):]
    skipped: dict[str, str] = {}
    manifest, manifest_problem, fingerprints = None, "no engine folder given", {}
    if engines is not None:
        engines = Path(engines)
        try:
            manifest = read_manifest(engines)
        except EngineRefused as e:
            manifest_problem = str(e)
    for name in chain:
        if name == "torch":
            chosen: Backend = TorchBackend(model, compile=compile)
            reason = "requested" if backend == "torch" else (
                "no engine folder given" if engines is None else "no usable engines (see skipped)"
            )
            break
        try:
            if manifest is None:
                raise EngineRefused(manifest_problem)
            if name == "tensorrt":
                chosen = _tensorrt(model, engines, manifest, fingerprints, cuda_graph)
            else:
                chosen = _onnxruntime(model, engines, manifest, fingerprints, ort_options)
        except EngineRefused as e:
            skipped[name] = str(e)
        except Exception as e:  # a runtime that fails to load a checked file: report it, then fall back
            skipped[name] = f"failed to load: {type(e).__name__}: {e}"
        else:
            reason = "requested" if backend == name else f"best available ({', '.join(skipped) or 'first choice'} skipped)"
            break
    for name, why in skipped.items():
        logger.info("backend %s skipped: %s", name, why)
    if engines is not None and chosen.name == "torch" and backend != "torch":
        logger.warning("engine folder %s not used (%s); running PyTorch", engines, "; ".join(skipped.values()))
    logger.info("backend: %s (%s)", chosen.name, reason)
    info = {
        "name": chosen.name,
        "requested": backend,
        "reason": reason,
        "skipped": skipped,
        "engines": None if engines is None else str(engines),
        "precision": None if manifest is None or chosen.name == "torch" else manifest.get("precision"),
        "details": chosen.describe(),
    }
    return chosen, info
