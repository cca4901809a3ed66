"""Numeric checks of exported graphs: run a candidate and a reference on the same fresh random inputs."""

from __future__ import annotations

from typing import Callable

import torch
from foresight.export.onnx_export import GraphShapes, random_inputs
from tqdm.auto import tqdm

# max |out - ref| / max |ref| allowed, per precision of the graph under test
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2}

Runner = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max abs error, and the same relative to the reference's largest magnitude (robust near zero)."""
    diff = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    return {"max_abs": diff, "max_rel": diff / max(scale, 1e-12)}


@torch.no_grad()
def compare(
    run: Runner,
    reference: Runner,
    graph: str,
    shapes: GraphShapes,
    cases: list[tuple[int, int]],
    precision: str,
    device: torch.device,
    seed: int,
    reference_name: str,
) -> dict:
    """Worst error over (batch, frames) cases; the verdict uses TOLERANCE[precision]."""
    g = torch.Generator().manual_seed(seed)
    results = []
    for batch, frames in tqdm(cases, desc=f"checking {graph}", leave=False):
        inputs = random_inputs(graph, shapes, batch, frames, torch.float32, device, g)
        results.append({"batch": batch, "frames": frames, **errors(run(inputs), reference(inputs))})
    worst = {k: max(r[k] for r in results) for k in ("max_abs", "max_rel")}
    return {
        "reference": reference_name,
        "seed": seed,
        "cases": results,
        **worst,
        "tolerance_rel": TOLERANCE[precision],
        "passed": worst["max_rel"] <= TOLERANCE[precision],
    }
