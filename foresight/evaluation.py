"""`foresight eval`: the paper's kind of table on held-out simulator episodes.

Variants:
- aid:             the model as shipped, training phrasings;
- aid-paraphrase:  the same episodes, instructions reworded with phrasings never used in training;
- base:            the text-free image-to-video base the AID stage started from;
- no-states, no-adapters, no-de: knock-outs of the trained model at inference (state descriptions
  emptied, adapters' outputs zeroed, DE tokens removed). They are NOT retrained ablations as in the
  paper; they show what the trained model relies on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from foresight.imaging import contact_sheet, write_png
from foresight.metrics import (
    frechet_distance,
    i3d_features,
    psnr,
    ssim,
    video_stats_features,
)
from foresight.model_dir import load_model
from foresight.pipeline import ForesightPipeline
from foresight.training.data import tabletop_episodes
from sim_bridge.episode import Episode
from sim_bridge.scoring import accepted_tracks, follow_error, follow_tolerance

logger = logging.getLogger(__name__)

EVAL_SEED_START = 1_000_000  # training uses seeds below this
VARIANTS = ("aid", "aid-paraphrase", "base", "no-states", "no-adapters", "no-de")
EVAL_KINDS = ("push", "put_on", "put_next_to", "pick_up")


def _empty_states(num_states: int) -> Callable:
    return lambda instruction, image=None: [""] * num_states


def variant_pipeline(spec: str, variant: str) -> ForesightPipeline:
    """A pipeline for one table row, freshly loaded so knock-outs never touch another row's model."""
    model, card = load_model(spec)
    if variant in ("aid", "aid-paraphrase"):
        return ForesightPipeline(model, card)
    if variant == "base":
        base_cfg = replace(model.config, adapters=None, dqformer=None, train_cross_attention=False)
        from foresight.models.aid import AIDModel

        return ForesightPipeline(AIDModel(model.svd_components(), None, base_cfg), card)
    if variant == "no-states":
        return ForesightPipeline(model, card, decomposer=_empty_states(model.config.num_states))
    if variant == "no-adapters":
        with torch.no_grad():
            for adapter in model.unet.adapters.modules():
                if hasattr(adapter, "up"):
                    adapter.up.weight.zero_()
                    adapter.up.bias.zero_()
        return ForesightPipeline(model, card)
    if variant == "no-de":
        model.dqformer.config = replace(model.dqformer.config, use_de=False)
        return ForesightPipeline(model, card)
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def predictions_figure(episodes: list[Episode], preds: np.ndarray, context_frames: int, scale: int = 2) -> np.ndarray:
    """One row per episode: the context frames and the predicted frames, a white bar, then the
    recorded final frame, so a reader compares where the prediction ends with where it should."""
    k = context_frames
    left = contact_sheet([np.concatenate([ep.frames[:k], p]) for ep, p in zip(episodes, preds)])
    right = contact_sheet([ep.frames[-1:] for ep in episodes])
    bar = np.full((left.shape[0], 8, 3), 255, np.uint8)
    sheet = np.concatenate([left, bar, right], axis=1)
    return np.repeat(np.repeat(sheet, scale, axis=0), scale, axis=1)


def evaluate_variant(pipe: ForesightPipeline, episodes: list[Episode], seed: int, batch: int = 8,
                     steps: int | None = None, i3d: str | None = None,
                     guidance_interval: tuple[float, float] | None | Literal["config"] = "config",
                     guidance_frame: float | None = None, guidance_text: float | None = None,
                     figure: str | Path | None = None, figure_rows: int = 6) -> dict:
    """Predict every episode from its first K frames and score the prediction.

    steps, guidance_*: the sampler, as in `ForesightPipeline.predict` (None: the model's defaults).
    figure: also write `predictions_figure` of the first `figure_rows` episodes there (PNG).
    """
    k = pipe.context_frames
    preds = []
    for start in tqdm(range(0, len(episodes), batch), desc="predicting", leave=False):
        chunk = episodes[start : start + batch]
        frames = np.stack([ep.frames[:k] for ep in chunk])
        preds.append(pipe.predict(frames, [ep.instruction for ep in chunk], steps=steps,
                                  guidance_interval=guidance_interval, guidance_frame=guidance_frame,
                                  guidance_text=guidance_text, seed=[seed + start + i for i in range(len(chunk))]))
    preds = np.concatenate(preds)
    if figure is not None:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        write_png(figure, predictions_figure(episodes[:figure_rows], preds[:figure_rows], k))
    truth = np.stack([ep.frames[k:] for ep in episodes])
    side = truth.shape[-2]
    errors = np.array([
        follow_error(p[-1], ep.object_colors[ep.target], accepted_tracks(ep)[:, -1])
        for p, ep in zip(preds, episodes)
    ])
    tol = follow_tolerance(side)
    kinds = [ep.meta["task"]["kind"] for ep in episodes]
    full_pred = np.concatenate([np.stack([ep.frames[:k] for ep in episodes]), preds], axis=1)
    full_truth = np.stack([ep.frames for ep in episodes])
    result = {
        "episodes": len(episodes),
        "follow_rate": float(np.mean(errors <= tol)),
        "follow_tolerance_px": tol,
        "follow_median_error_px": float(np.median(errors)),
        "not_found_rate": float(np.mean(np.isinf(errors))),
        "follow_rate_by_kind": {
            kind: float(np.mean(errors[[k_ == kind for k_ in kinds]] <= tol)) for kind in sorted(set(kinds))
        },
        "psnr": float(np.mean([psnr(p, t) for p, t in zip(preds, truth)])),
        "ssim": float(np.mean([ssim(p, t) for p, t in zip(preds, truth)])),
        "fd_stats": frechet_distance(video_stats_features(full_pred), video_stats_features(full_truth)),
    }
    if i3d is not None:
        result["fvd_i3d"] = frechet_distance(i3d_features(full_pred, i3d), i3d_features(full_truth, i3d))
    return result


def run_eval(spec: str, n: int, seed: int, variants: tuple[str, ...] = VARIANTS, steps: int | None = None,
             i3d: str | None = None,
             guidance_interval: tuple[float, float] | None | Literal["config"] = "config",
             guidance_frame: float | None = None, guidance_text: float | None = None,
             figure: str | Path | None = None) -> dict:
    """Evaluate each variant on simulator seeds EVAL_SEED_START + seed + [0, n).

    figure: write the first variant's predictions of the first episodes there (the README's figure).
    """
    if n < 2:
        raise ValueError(f"evaluation needs at least 2 episodes (the Frechet distance compares distributions), got {n}")
    probe = variant_pipeline(spec, "aid")
    size, frames = probe.height, probe.num_frames
    seeds = range(EVAL_SEED_START + seed, EVAL_SEED_START + seed + n)
    plain = list(tabletop_episodes(seeds, size, frames, EVAL_KINDS))
    reworded = list(tabletop_episodes(seeds, size, frames, EVAL_KINDS, paraphrase=True))
    interval = probe.defaults["guidance_interval"] if guidance_interval == "config" else guidance_interval
    report = {"model": spec, "seeds": [seeds.start, seeds.stop], "steps": steps or probe.defaults["steps"],
              "guidance_interval": interval,
              "guidance_frame": probe.defaults["guidance_frame"] if guidance_frame is None else guidance_frame,
              "guidance_text": probe.defaults["guidance_text"] if guidance_text is None else guidance_text,
              "fd_note": "fd_stats is a Frechet distance on hand-made appearance/motion features, not FVD "
                         "(I3D weights are not available offline; pass --i3d PATH for FVD)",
              "variants": {}}
    for variant in variants:
        logger.info("evaluating %s on %d episodes", variant, n)
        pipe = probe if variant == "aid" else variant_pipeline(spec, variant)
        episodes = reworded if variant == "aid-paraphrase" else plain
        report["variants"][variant] = evaluate_variant(pipe, episodes, seed, steps=steps, i3d=i3d,
                                                       guidance_interval=interval, guidance_frame=guidance_frame,
                                                       guidance_text=guidance_text,
                                                       figure=figure if variant == variants[0] else None)
    return report


def format_table(report: dict) -> str:
    """A markdown table, one row per variant, like the paper's ablation table."""
    fd_key = "fvd_i3d" if any("fvd_i3d" in r for r in report["variants"].values()) else "fd_stats"
    lines = [
        f"| variant | follow rate | median error (px) | PSNR | SSIM | {fd_key} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["variants"].items():
        lines.append(
            f"| {name} | {100 * r['follow_rate']:.1f}% | {r['follow_median_error_px']:.1f} | {r['psnr']:.2f} | "
            f"{r['ssim']:.3f} | {r[fd_key]:.3f} |"
        )
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
