"""Numeric checks of exported graphs: reference outputs first, then each candidate against them.

The reference (the PyTorch model) runs every case once and its outputs are kept on the host, so
the model can be freed before any runtime loads a graph: at full size the fp32 UNet and ONNX
Runtime's copy of its graph do not fit beside each other on a 24 GiB machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from foresight.export.onnx_export import GraphShapes, random_inputs
from tqdm.auto import tqdm

# max |out - ref| / max |ref| allowed, per precision of the graph under test
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2}

Runner = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Case:
    """One checked call: its (batch, frames), inputs and the reference's output, on the host."""

    batch: int
    frames: int
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max abs error, and the same relative to the reference's largest magnitude (robust near zero)."""
    diff = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    return {"max_abs": diff, "max_rel": diff / max(scale, 1e-12)}


@torch.no_grad()
def reference_cases(reference: Runner, graph: str, shapes: GraphShapes, cases: list[tuple[int, int]],
                    device: torch.device, seed: int) -> list[Case]:
    """The reference's outputs on fresh random inputs (seeded) for each (batch, frames)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for batch, frames in tqdm(cases, desc=f"reference {graph}", leave=False):
        inputs = random_inputs(graph, shapes, batch, frames, torch.float32, device, g)
        out.append(Case(batch, frames, {k: v.cpu() for k, v in inputs.items()}, reference(inputs).float().cpu()))
    return out


@torch.no_grad()
def check(run: Runner, cases: list[Case], graph: str, precision: str, device: torch.device, seed: int,
          reference_name: str) -> dict:
    """Worst error of `run` over the stored cases; the verdict uses TOLERANCE[precision]."""
    results = []
    for case in tqdm(cases, desc=f"checking {graph}", leave=False):
        out = run({k: v.to(device) for k, v in case.inputs.items()})
        results.append({"batch": case.batch, "frames": case.frames, **errors(out.cpu(), case.output)})
    worst = {k: max(r[k] for r in results) for k in ("max_abs", "max_rel")}
    return {
        "reference": reference_name,
        "seed": seed,
        "cases": results,
        **worst,
        "tolerance_rel": TOLERANCE[precision],
        "passed": worst["max_rel"] <= TOLERANCE[precision],
    }
