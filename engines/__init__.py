"""Runtime backends for AID's UNet, VAE decoder and DQFormer: TensorRT, ONNX Runtime, PyTorch.

Heavy runtimes (tensorrt, onnxruntime) are imported only when a backend is built.
"""

from engines.base import Backend, EngineRefused
from engines.onnxruntime_backend import OrtOptions
from engines.select import BACKENDS, load_backend

__all__ = ["BACKENDS", "Backend", "EngineRefused", "OrtOptions", "load_backend"]
