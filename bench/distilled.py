"""Section 8: a distilled student's node against the stock pipeline and against its teacher's node.

One single-instruction request, side by side in one run: the stock diffusers
`StableVideoDiffusionPipeline` at its default 25 steps (2 CFG branches), the teacher's node at its
defaults, and the student's node (ONNX Runtime on a CPU, TensorRT on a GPU, as the teacher's) at
its own steps (a consistency sampler, one branch per step). Whole requests, everything around
the UNet included: that is what a planner waits for. Each row names the VAE decoder its model
decodes with (a frame decoder, `AIDConfig.decoder`, would speed the teacher alike).

Then where each one's time goes, in process on the same engines: the UNet graph, the VAE-decoder
and VAE-encoder graphs, the DQFormer graph and the rest (vision and text encoders, sampler, resizing). The parts both models pay
alike bound the ratio to the teacher from below, whatever the student's step count.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench import backends
from bench.core import INSTRUCTIONS, Plan, measure_side_by_side
from bench.diffusers_svd import encoder_image, run_stock
from bench.node import check_backend, client, predict
from foresight.engines import Backend
from foresight.model_dir import LoadedModel, load_model
from foresight.node.process import running_node
from foresight.pipeline import ForesightPipeline, torch_threads_beside

log = logging.getLogger("bench.distilled")

TARGET_TO_STOCK = 0.08
TARGET_TO_TEACHER = 0.35


class TimedBackend:
    """A backend whose graphs add their seconds to `spent`, by graph; `sync` waits for the device."""

    def __init__(self, inner: Backend, sync=None) -> None:
        self.inner, self.name, self.sync, self.spent = inner, inner.name, sync, Counter()

    def _timed(self, part: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if self.sync:
                self.sync()
            self.spent[part] += time.perf_counter() - start

    def unet(self, *args):
        return self._timed("unet", self.inner.unet, *args)

    def vae_decoder(self, latents):
        return self._timed("vae_decoder", self.inner.vae_decoder, latents)

    def vae_encoder(self, frames):
        return self._timed("vae_encoder", self.inner.vae_encoder, frames)

    def dqformer(self, *args, num_frames=None):
        return self._timed("dqformer", self.inner.dqformer, *args, num_frames=num_frames)

    def describe(self) -> dict:
        return self.inner.describe()


def request_split(loaded: LoadedModel, engine: Backend, frames: np.ndarray, text: list[str], steps: int,
                  runs: int, sync=None) -> dict:
    """Mean seconds per in-process request on `engine`, by part: unet, vae_decoder, vae_encoder, dqformer, rest;
    PyTorch on the threads a node gives it beside that engine (foresight.pipeline.load_pipeline)."""
    threads, beside = torch.get_num_threads(), torch_threads_beside(engine.name, loaded.model.device)
    timed = TimedBackend(engine, sync)
    pipe = ForesightPipeline(loaded, backend=timed)
    try:
        torch.set_num_threads(beside or threads)
        pipe.predict(frames, text, steps=steps)  # warm-up
        timed.spent.clear()
        start = time.perf_counter()
        for run in range(runs):
            pipe.predict(frames, text, steps=steps, seed=run)
        total = (time.perf_counter() - start) / runs
    finally:
        torch.set_num_threads(threads)
    parts = {part: seconds / runs for part, seconds in timed.spent.items()}
    return {"total_s": total, "parts_s": parts | {"rest": total - sum(parts.values())}}


def compare(student: str, teacher: ForesightPipeline, teacher_loaded: LoadedModel, teacher_engine: Backend,
            stock, teacher_endpoint: str, teacher_steps: int, plan: Plan, device: str, threads: int, tmp: Path,
            logs: Path) -> dict:
    """`student`: a distilled model (name or folder); `teacher_endpoint`: the teacher's node on
    `teacher_engine` (whose backend the student's node gets too)."""
    engine_name = teacher_engine.name
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
        timings = measure_side_by_side(cases, plan.distilled_runs, plan.warmup, "stock, teacher node and student node")
    student_loaded = load_model(student)
    student_loaded.model.to(device).eval()
    student_engine, _ = backends.engine_backend(student_loaded.model, engines, threads)
    sync = backends.sync_for(device)
    split = {"teacher": request_split(teacher_loaded, teacher_engine, frames, text, teacher_steps, plan.distilled_runs, sync),
             "student": request_split(student_loaded, student_engine, frames, text, student_steps, plan.distilled_runs, sync)}
    student_t = timings["student"]
    decoders = {name: "frame decoder" if m.config.decoder is not None else "temporal decoder"
                for name, m in (("teacher", teacher_loaded.model), ("student", student_loaded.model))}
    return {"student": student, "backend": engine_name, "solver": info["defaults"]["solver"], "decoders": decoders,
            "student_steps": student_steps, "teacher_steps": teacher_steps, "stock_steps": stock_steps,
            "timings": timings, "split": split,
            "ratio_to_stock": student_t.median / timings["stock"].median,
            "ratio_to_teacher": student_t.median / timings["teacher"].median}
