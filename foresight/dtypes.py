"""The one owner of floating-point type names: "fp32", "bf16", "fp16" on every command and API.

Importing this module costs no torch import (command-line parsers use the names); the torch
dtypes are looked up when asked for. Training's mixed-precision setting names the same types,
with "no" for fp32 (accelerate's word).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "bf16", "fp16")
_TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str) -> torch.dtype:
    """"fp32" | "bf16" | "fp16" -> the torch dtype."""
    import torch

    if name not in _TORCH_NAMES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {name!r}")
    return getattr(torch, _TORCH_NAMES[name])


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch float dtype of the three, or one of DTYPE_NAMES -> the torch dtype."""
    if isinstance(dtype, str):
        return torch_dtype(dtype)
    allowed = tuple(torch_dtype(name) for name in DTYPE_NAMES)
    if dtype not in allowed:
        raise ValueError(f"dtype must be one of {allowed} or {DTYPE_NAMES}, got {dtype!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype of the three -> its name ("fp32", "bf16", "fp16")."""
    for name, torch_name in _TORCH_NAMES.items():
        if str(dtype) == f"torch.{torch_name}":
            return name
    raise ValueError(f"dtype must be one of {DTYPE_NAMES} as torch dtypes, got {dtype!r}")


def mixed_precision_dtype(mixed_precision: str) -> torch.dtype:
    """accelerate's mixed_precision ("no" | "bf16" | "fp16") -> the dtype frozen weights are kept in."""
    return torch_dtype("fp32" if mixed_precision == "no" else mixed_precision)
