"""Training section: clips/s of the AID stage's training step on the tiny model, per CPU setting.

Each setting builds the `tiny-aid` stage afresh with the model's own SVD folder and AID config,
and times whole training steps (forward, backward, AdamW) on one fixed batch, so data loading
is not in the figure:
- fp32 eager: the baseline;
- bf16: frozen parts in bf16, trained weights fp32 under autocast (`mixed_precision = "bf16"`);
- channels-last: the UNet's 2D convolution weights (and so their outputs) in NHWC;
- compile: `torch.compile` of the frozen UNet (its compile time is reported apart).
Run alone with `python -m bench.training [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from bench.core import Plan
from foresight.dtypes import mixed_precision_dtype
from foresight.training.config import load_jobs
from foresight.training.stages import AIDStage
from foresight.training.trainer import cast_frozen
from sim_bridge.common.logs import setup_logging

log = logging.getLogger("bench")

SETTINGS = {
    "fp32 eager": {},
    "bf16": {"mixed_precision": "bf16"},
    "channels-last": {"channels_last": True},
    "bf16 + channels-last": {"mixed_precision": "bf16", "channels_last": True},
    "compile": {"compile": True},
}


def _model_folders(spec: str) -> tuple[Path, dict]:
    """The SVD folder an AID model folder adapts ('tiny': the shipped tiny-svd) and its AID config."""
    from foresight.model_dir import model_folder

    folder = model_folder(spec)
    meta = json.loads((folder / "aid_config.json").read_text())
    svd = Path(meta["svd"])
    return (svd if svd.is_absolute() else (folder / svd).resolve()), meta["aid"]


def clips_per_second(spec: str, setting: dict, batch: int, runs: int, warmup: int) -> dict:
    """Median clips/s over `runs` timed training steps of `batch` clips."""
    precision = setting.get("mixed_precision", "no")
    svd, aid_config = _model_folders(spec)
    (cfg,) = load_jobs("tiny-aid", (f"model.svd={svd}", f"model.aid={json.dumps(aid_config)}",
                                    f"optim.batch={batch}", f"mixed_precision={precision}"))
    stage = AIDStage(cfg)
    params = cast_frozen(stage, mixed_precision_dtype(precision))
    unet = stage.model.unet.unet
    if setting.get("channels_last"):
        for conv in unet.modules():
            if isinstance(conv, torch.nn.Conv2d):  # the temporal 3D convolutions have no NHWC form
                conv.to(memory_format=torch.channels_last)
    compile_s = None
    if setting.get("compile"):
        unet.compile()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    aid = cfg.model.aid
    g = torch.Generator().manual_seed(0)
    video = torch.rand(batch, aid.num_frames, 3, aid.height, aid.width, generator=g) * 2 - 1
    instructions = ["push the red block to the left", "put the blue cup on the green plate"] * batch
    states = [[f"state {i} of {s}" for i in range(aid.num_states)] for s in instructions[:batch]]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        start = time.perf_counter()
        with autocast:
            loss = stage(video, instructions[:batch], states, torch.Generator().manual_seed(1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    if setting.get("compile"):
        compile_s = step()
    for _ in range(warmup):
        step()
    times = [step() for _ in range(runs)]
    median = statistics.median(times)
    return {"clips_per_s": batch / median, "step_s": median, "steps_timed": runs, "compile_s": compile_s}


# torch.compile of the UNet with its backward did not finish compiling in 7 minutes on 2 shared
# cores (3 December), so `python -m bench` leaves it out; `--settings ...,compile` measures it.
DEFAULT_SETTINGS = ("fp32 eager", "bf16", "channels-last", "bf16 + channels-last")


def compare(spec: str, plan: Plan, batch: int = 8, settings: tuple[str, ...] = DEFAULT_SETTINGS) -> dict:
    """Every setting in one run; `best` is the fastest against fp32 eager."""
    results = {}
    for name in settings:
        log.info("training step: %s", name)
        results[name] = clips_per_second(spec, SETTINGS[name], batch, plan.runs, max(1, plan.warmup))
        log.info("%s: %.2f clips/s", name, results[name]["clips_per_s"])
    base = results["fp32 eager"]["clips_per_s"]
    best = max(results, key=lambda n: results[n]["clips_per_s"])
    return {"batch": batch, "settings": results, "best": best,
            "best_ratio": results[best]["clips_per_s"] / base, "target_ratio": 1.5}


def markdown(result: dict) -> str:
    base = result["settings"]["fp32 eager"]["clips_per_s"]
    lines = [f"Training: AID stage, tiny model, batch {result['batch']} (clips/s, higher is better)", "",
             "| setting | clips/s | step s | vs fp32 eager | compile s |", "| --- | --- | --- | --- | --- |"]
    for name, r in result["settings"].items():
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
        lines.append(f"| {name} | {r['clips_per_s']:.2f} | {r['step_s']:.2f} | {r['clips_per_s'] / base:.2f}x "
                     f"| {compile_s} |")
    verdict = "met" if result["best_ratio"] >= result["target_ratio"] else "NOT met"
    lines += ["", f"best: {result['best']}, {result['best_ratio']:.2f}x fp32 eager "
                  f"(target {result['target_ratio']}x: {verdict})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' or an AID model folder (its SVD folder and config)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                        help=f"comma-separated subset of {list(SETTINGS)}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    settings = tuple(args.settings.split(","))
    unknown = set(settings) - set(SETTINGS)
    if unknown or "fp32 eager" not in settings:
        raise SystemExit(f"--settings must include 'fp32 eager' and name only {list(SETTINGS)}; got {args.settings!r}")
    result = compare(args.model, Plan.quick() if args.quick else Plan(), args.batch, settings)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
