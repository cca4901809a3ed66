"""Validation during training: predictions on held-out episodes, scored, plus a picture of them.

On simulator episodes (`sim_bridge.simulator.tasks.EVAL_SEEDS`, never trained on) `foresight.evaluation`
measures instruction following with PSNR/SSIM; on recorded episodes (no object truth) PSNR/SSIM.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from foresight.evaluation import evaluate_variant, predictions_figure
from foresight.model_dir import LoadedModel
from foresight.models.aid import AIDModel
from foresight.pipeline import ForesightPipeline
from foresight.states import StateDecomposer
from foresight.training.config import ValidationConfig
from foresight.training.data import RecordedEpisodes
from sim_bridge.common.imaging import fit_frames, read_image
from sim_bridge.common.metrics import psnr, ssim
from sim_bridge.simulator.tabletop import make_episodes
from sim_bridge.simulator.tasks import EVAL_SEEDS, TRAINED_KINDS


def validate(model: AIDModel, cfg: ValidationConfig, seed: int,
             decomposer: StateDecomposer | str = "template") -> tuple[dict[str, float], np.ndarray]:
    """-> (metrics, uint8 (H, W, 3) sheet: context + predicted frames, recorded last frame)."""
    pipe = ForesightPipeline(LoadedModel.of(model, states=decomposer))
    h, w, n, k = pipe.height, pipe.width, pipe.num_frames, pipe.context_frames
    if cfg.source == "simulator":
        seeds = range(EVAL_SEEDS.start, EVAL_SEEDS.start + cfg.episodes)
        episodes = list(make_episodes(seeds, h, n, TRAINED_KINDS))
        with tempfile.TemporaryDirectory() as tmp:
            figure = Path(tmp) / "predictions.png"
            result = evaluate_variant(pipe, episodes, seed, pipe.defaults.resolve(cfg.steps), figure=figure)
            sheet = read_image(figure)
        return {key: result[key] for key in ("follow_rate", "psnr", "ssim")}, sheet
    source = RecordedEpisodes(cfg.source)
    episodes = [ep for ep in (source.load(i) for i in range(min(len(source), 4 * cfg.episodes)))
                if ep.instruction and len(ep.frames) >= n][: cfg.episodes]
    if not episodes:
        raise ValueError(f"{cfg.source}: no episode with an instruction and at least {n} frames to validate on")
    clips = np.stack([fit_frames(ep.frames[np.linspace(0, len(ep.frames) - 1, n).round().astype(int)], h, w)
                      for ep in episodes])
    preds = pipe.predict(clips[:, :k], [ep.instruction for ep in episodes], steps=cfg.steps,
                         seed=[seed + i for i in range(len(episodes))])
    truth = clips[:, k:]
    metrics = {"psnr": float(np.mean([psnr(p, t) for p, t in zip(preds, truth)])),
               "ssim": float(np.mean([ssim(p, t) for p, t in zip(preds, truth)]))}
    for ep, clip in zip(episodes, clips):
        ep.frames = clip
    return metrics, predictions_figure(episodes, preds, k)
