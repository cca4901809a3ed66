"""Runtime backends for AID's UNet, VAE decoder and DQFormer: TensorRT, ONNX Runtime, PyTorch.

Heavy runtimes (tensorrt, onnxruntime) are imported only when a backend is built.
"""

from foresight.engines.base import Backend, EngineRefused
from foresight.engines.onnxruntime_backend import OrtOptions
from foresight.engines.select import BACKENDS, load_backend

__all__ = ["BACKENDS", "Backend", "EngineRefused", "OrtOptions", "load_backend"]
