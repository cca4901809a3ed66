"""Section 8: a distilled student's node against the stock pipeline and against its teacher's node.

One single-instruction request, side by side in one run: the stock diffusers
`StableVideoDiffusionPipeline` at its default 25 steps (2 CFG branches), the teacher's node at its
defaults, and the student's node (ONNX Runtime on a CPU, TensorRT on a GPU, as the teacher's) at
its own steps (a consistency sampler, one branch per step). Whole requests, everything around
the UNet included: that is what a planner waits for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bench import backends
from bench.core import INSTRUCTIONS, Plan, measure_side_by_side
from bench.diffusers_svd import encoder_image, run_stock
from bench.node import check_backend, client, predict
from foresight.node.process import running_node
from foresight.pipeline import ForesightPipeline

log = logging.getLogger("bench.distilled")

TARGET_TO_STOCK = 0.08
TARGET_TO_TEACHER = 0.35


def compare(student: str, teacher: ForesightPipeline, stock, teacher_endpoint: str, engine_name: str,
            teacher_steps: int, plan: Plan, device: str, threads: int, tmp: Path, logs: Path) -> dict:
    """`student`: a distilled model (name or folder); `teacher_endpoint`: the teacher's engine node."""
    engines = backends.build(student, tmp / "student-engines", device, 1)
    h, w = teacher.height, teacher.width
    frames = np.random.default_rng(0).integers(0, 256, (teacher.context_frames, h, w, 3), dtype=np.uint8)
    image = encoder_image(frames[0], stock)
    text = [INSTRUCTIONS[0]]
    stock_steps = plan.equal_steps  # the stock pipeline's default, 25 (--quick: 2)
    serve = ["--device", device, "--threads", str(threads), "--backend", engine_name, "--engines", str(engines)]
    with running_node(student, logs / "node-student.log", serve) as student_endpoint, \
            client(student_endpoint) as student_node, client(teacher_endpoint) as teacher_node:
        check_backend(student_endpoint, engine_name)
        info = student_node.info()
        student_steps = int(info["defaults"]["steps"])
        cases = {
            "stock": lambda: run_stock(stock, image, h, w, teacher.num_frames, stock_steps),
            "teacher": lambda: predict(teacher_node, frames, text, teacher_steps),
            "student": lambda: predict(student_node, frames, text, student_steps),
        }
        timings = measure_side_by_side(cases, plan.runs, plan.warmup, "stock, teacher node and student node")
    student_t = timings["student"]
    return {"student": student, "backend": engine_name, "solver": info["defaults"]["solver"],
            "student_steps": student_steps, "teacher_steps": teacher_steps, "stock_steps": stock_steps,
            "timings": timings,
            "ratio_to_stock": student_t.median / timings["stock"].median,
            "ratio_to_teacher": student_t.median / timings["teacher"].median}
