"""The one owner of floating-point type names: "fp32", "bf16", "fp16" on every command and API.

Importing this module costs no torch import (command-line parsers use the names); the torch
dtypes are looked up when asked for. Training's mixed-precision setting names the same types,
with "no" for fp32 (accelerate's word).
"""

from __future__ import annotations

import re
from pathlib import Path
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


def cpu_bf16_native(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, Arm BF16), from
    /proc/cpuinfo's flags (or the text given); None where that file does not exist."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", cpuinfo) is not None


def cpu_dtype_warning(name: str, cpuinfo: str | None = None) -> str | None:
    """Why running in `name` ("fp32" | "bf16" | "fp16") on this CPU would be slow, or None.

    fp16 runs many kernels emulated on any CPU; bf16 runs emulated on CPUs without bf16
    instructions: the full-size rehearsal on an AVX-512 CPU without them took 315 s for one bf16
    sampling step that fp32 did in under 280 s with the whole request, and 390 s per bf16
    training step where a CPU with AMX took 83 s."""
    if name == "fp16":
        return "fp16 on a CPU runs many kernels emulated (15x slower than fp32 on the tiny model); use bf16 or fp32"
    if name == "bf16" and cpu_bf16_native(cpuinfo) is False:
        return ("this CPU has no bf16 instructions (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): bf16 runs "
                "emulated, slower than fp32 (full size: 315 s per sampling step against under 280 s for a whole "
                "fp32 request): fp32 is faster here")
    return None
