"""Fewer sampling steps: the same model with a better ODE solver (the training-free baseline), and
a distilled student at its own few steps.

    python -m bench.solvers --model tiny --student tiny-turbo --episodes 100 --out bench_out/solvers

For each (model, solver, steps): instruction following, per-kind following and PSNR on the evaluation
seeds (`foresight.evaluation.run_eval`, the `aid` row), UNet clip-passes per candidate (counted
on the UNet, so the guidance interval's one-branch steps count as one) and the median latency of
one single-instruction request in process. Writes solvers.json, solvers.md and solvers.png
(following against latency), one point per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from foresight.diffusion.sampling import unet_passes
from foresight.evaluation import run_eval
from foresight.pipeline import load_pipeline
from sim_bridge.common.logs import setup_logging
from sim_bridge.common.tables import markdown_table

CONFIGS = (("euler", 8), ("euler", 4), ("euler", 2), ("heun", 3), ("heun", 2), ("dpmpp_2m", 4), ("dpmpp_2m", 2))
STUDENT_STEPS = (4, 2, 1)  # a distilled model samples with its folder's solver
LATENCY_RUNS = 5


def clip_passes(pipe, solver: str, steps: int) -> float:
    """UNet clips per candidate in one request (3 per guided step, 1 outside the guidance interval)."""
    seen = []
    handle = pipe.model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        pipe.predict(np.zeros((pipe.context_frames, pipe.height, pipe.width, 3), np.uint8), ["push the red block left"],
                     steps=steps, solver=solver)
    finally:
        handle.remove()
    assert len(seen) == unet_passes(solver, steps)
    return float(sum(seen))


def latency(pipe, solver: str, steps: int) -> float:
    frames = np.zeros((pipe.context_frames, pipe.height, pipe.width, 3), np.uint8)
    times = []
    for run in range(LATENCY_RUNS + 1):
        start = time.perf_counter()
        pipe.predict(frames, ["push the red block left"], steps=steps, solver=solver, seed=run)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first run warms up


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.solvers", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--student", default=None,
                        help=f"a distilled model (e.g. tiny-turbo): rows at {STUDENT_STEPS} steps of its own solver")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench_out/solvers"))
    args = parser.parse_args(argv)
    setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = [(args.model, solver, steps) for solver, steps in CONFIGS]
    if args.student:
        plan += [(args.student, None, steps) for steps in STUDENT_STEPS]
    pipes, rows = {}, []
    for model, solver, steps in plan:
        pipe = pipes.get(model) or pipes.setdefault(model, load_pipeline(model))
        solver = solver or pipe.defaults.solver
        print(f"{model}: {solver} x {steps} steps ...", flush=True)
        report = run_eval(model, args.episodes, 0, variants=("aid",), steps=steps, solver=solver)
        aid = report["variants"]["aid"]
        rows.append({"model": model, "solver": solver, "steps": steps, "unet_calls": unet_passes(solver, steps),
                     "clip_passes": clip_passes(pipe, solver, steps), "latency_s": latency(pipe, solver, steps),
                     "follow_rate": aid["follow_rate"], "follow_rate_by_kind": aid["follow_rate_by_kind"],
                     "psnr": aid["psnr"], "ssim": aid["ssim"]})
    result = {"model": args.model, "student": args.student, "episodes": args.episodes, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    (args.out / "solvers.json").write_text(json.dumps(result, indent=2))
    table = markdown_table(
        ("model", "solver", "steps", "UNet calls", "clip-passes", "latency (s)", "following", "worst kind", "PSNR"),
        [(r["model"], r["solver"], r["steps"], r["unet_calls"], f"{r['clip_passes']:.0f}", f"{r['latency_s']:.3f}",
          f"{100 * r['follow_rate']:.0f}%", f"{100 * min(r['follow_rate_by_kind'].values()):.0f}%",
          f"{r['psnr']:.2f}") for r in rows])
    (args.out / "solvers.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, solver in dict.fromkeys((r["model"], r["solver"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["solver"]) == (model, solver)]
        ax.plot([r["latency_s"] for r in mine], [100 * r["follow_rate"] for r in mine], "o-",
                label=f"{model}, {solver}")
        for r in mine:
            ax.annotate(str(r["steps"]), (r["latency_s"], 100 * r["follow_rate"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.set_xlabel("request latency, one instruction (s)")
    ax.set_ylabel(f"instruction following, {args.episodes} episodes (%)")
    ax.set_title(f"{' vs '.join(pipes)}: solver and steps (labels: steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "solvers.png", dpi=120)
    print(f"wrote {args.out / 'solvers.json'}, solvers.md, solvers.png")


if __name__ == "__main__":
    main()
