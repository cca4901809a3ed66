"""TensorRT engine builds from ONNX graphs (GPU path: written for TensorRT 11, untested here).

TensorRT 11 networks are strongly typed and the FP16 builder flag is gone: an engine computes in
the dtypes of its ONNX graph, so FP16 engines are built from the FP16 graphs the exporter writes.
Builds reuse a timing cache kept in the engine folder, which makes rebuilds much faster.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def build_engine(onnx_path: Path, engine_path: Path, profile: Profile, timing_cache: Path) -> None:
    """Parse `onnx_path` (external data beside it is found), build one optimization profile, write the plan."""
    import tensorrt as trt

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 11: strongly typed is the only mode; TensorRT 10 needs the flag to get the same behaviour
    flags = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {problems}")
    config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    logger.info("building TensorRT engine %s (this takes minutes for the real UNet)", engine_path.name)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {engine_path.name} (see the TensorRT log above)")
    engine_path.write_bytes(memoryview(plan))
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
