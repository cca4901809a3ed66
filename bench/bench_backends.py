"""ONNX Runtime (CPU) against PyTorch eager: one UNet step and one whole request.

    python bench/bench_backends.py --model tiny-random --runs 10
    python bench/bench_backends.py --engines /models/aid/engines --model /models/aid --sweep

Both backends get the same thread count (--threads, default torch's) so the ratio compares
runtimes, not thread pools; on a shared machine, other load skews both. Without --engines the
engines are built into a temporary folder first. --sweep also times ONNX Runtime at each graph
optimisation level and thread count. Reports median, min and max of --runs runs after --warmup.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import OrtOptions, load_backend  # noqa: E402
from engines.torch_backend import TorchBackend  # noqa: E402
from export.build_engines import BuildConfig, build_engines  # noqa: E402
from export.onnx_export import graph_shapes, random_inputs  # noqa: E402
from foresight.model_dir import load_model  # noqa: E402
from foresight.pipeline import ForesightPipeline  # noqa: E402


def timed(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def line(label: str, t: dict[str, float], ref: dict[str, float] | None = None) -> str:
    ratio = "" if ref is None else f"   speed-up {ref['median'] / t['median']:.2f}x"
    return f"{label:<34} median {t['median'] * 1e3:9.1f} ms  (min {t['min'] * 1e3:.1f}, max {t['max'] * 1e3:.1f}){ratio}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--engines", type=Path, default=None, help="engine folder (default: build one now)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hypotheses", type=int, default=1, help="instructions per request")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--sweep", action="store_true", help="also time ONNX Runtime optimisation levels x threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    model, _ = load_model(args.model)
    model.eval()
    cfg = model.config
    with tempfile.TemporaryDirectory() as tmp:
        engines = args.engines or Path(tmp) / "engines"
        if args.engines is None:
            print(f"building engines for {args.model} in a temporary folder ...")
            build_engines(BuildConfig(model=args.model, out=engines, max_batch=args.hypotheses, seed=0))
        options = OrtOptions(intra_op_threads=args.threads)
        ort, info = load_backend(model, "onnxruntime", engines, ort_options=options)
        if ort.name != "onnxruntime":
            raise SystemExit(f"the engines in {engines} cannot be used: {info['skipped']}")
        eager = TorchBackend(model)
        print(f"model {args.model}: {cfg.height}x{cfg.width}, N={cfg.num_frames}, {args.hypotheses} hypothesis(es), "
              f"{args.threads} thread(s) each, torch {torch.__version__}")

        # 1. one UNet step: the three guidance branches of every hypothesis in one call
        batch = 3 * args.hypotheses
        x = random_inputs("unet", graph_shapes(model, cfg.height, cfg.width), batch, cfg.num_frames, torch.float32,
                          torch.device("cpu"), torch.Generator().manual_seed(0))
        with torch.no_grad():
            t_torch = timed(lambda: eager.unet(**x), args.runs, args.warmup)
            t_ort = timed(lambda: ort.unet(**x), args.runs, args.warmup)
            diff = (eager.unet(**x) - ort.unet(**x)).abs().max().item()
        print(f"\nUNet step (batch {batch}, {cfg.num_frames} frames)   max |ort - torch| = {diff:.2e}")
        print(line("  pytorch eager", t_torch))
        print(line("  onnxruntime cpu", t_ort, t_torch))
        if args.sweep:
            for level in ("basic", "extended", "all"):
                for threads in sorted({1, args.threads}):
                    b, _ = load_backend(model, "onnxruntime", engines,
                                        ort_options=OrtOptions(intra_op_threads=threads, optimization=level))
                    print(line(f"  onnxruntime {level}, {threads} thread(s)", timed(lambda: b.unet(**x), args.runs, args.warmup), t_torch))

        # 2. a whole request: conditions, steps x UNet, VAE decode
        frames = np.random.default_rng(0).integers(0, 256, (cfg.context_frames, cfg.height, cfg.width, 3), dtype=np.uint8)
        instructions = ["push the red block to the left"] * args.hypotheses
        pipes = {"pytorch eager": ForesightPipeline(model), "onnxruntime cpu": ForesightPipeline(model, backend=ort)}
        steps = args.steps or cfg.steps
        results, videos = {}, {}
        for name, pipe in pipes.items():
            results[name] = timed(lambda: pipe.predict(frames, instructions, steps=steps), max(3, args.runs // 2), 1)
            videos[name] = pipe.predict(frames, instructions, steps=steps).astype(int)
        diff = np.abs(videos["pytorch eager"] - videos["onnxruntime cpu"]).max()
        print(f"\nwhole request ({steps} steps)   max |ort - torch| of final frames = {diff} uint8 levels")
        print(line("  pytorch eager", results["pytorch eager"]))
        print(line("  onnxruntime cpu", results["onnxruntime cpu"], results["pytorch eager"]))


if __name__ == "__main__":
    main()
