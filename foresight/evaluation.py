"""`foresight eval`: the paper's kind of table on held-out simulator episodes, and PSNR/SSIM/FVD/KVD
on recorded episodes.

Variants:
- aid:             the model as shipped, training phrasings;
- aid-paraphrase:  the same episodes, instructions reworded with phrasings never used in training;
- base:            the text-free image-to-video base (no adapters, no DQFormer, the SVD folder's UNet);
- no-states, no-adapters, no-de: knock-outs of the trained model at inference (state descriptions
  emptied, model loaded without its adapters or without the DE branch). They are NOT retrained
  ablations as in the paper; they show what the trained model relies on.

With a Rerun recording (`foresight eval --rerun FILE.rrd`), each episode (or clip) is logged once with
its context and recorded truth, and each variant adds its prediction, the instruction it was given and its
scores on that episode (`log_episodes`, `log_variant`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from foresight.config import SamplerSettings
from foresight.dtypes import resolve_dtype
from foresight.model_dir import load_model
from foresight.pipeline import ForesightPipeline
from foresight.states import make_decomposer
from sim_bridge.common.imaging import contact_sheet, fit_frames, write_png
from sim_bridge.common.metrics import distance_note, psnr, rate_interval, ssim, video_distances
from sim_bridge.common.rerun_log import RerunLog, episode_path
from sim_bridge.common.tables import markdown_table
from sim_bridge.data.episode import Episode
from sim_bridge.data.readers import EpisodeSource, find_episodes
from sim_bridge.simulator.scoring import accepted_tracks, follow_error, follow_tolerance
from sim_bridge.simulator.tabletop import make_episodes
from sim_bridge.simulator.tasks import EVAL_SEEDS, TRAINED_KINDS
from sim_bridge.simulator.vocabulary import KINDS as WORD_KINDS
from sim_bridge.simulator.vocabulary import reword

logger = logging.getLogger(__name__)


# Each row's knock-outs (foresight.model_dir.KNOCKOUTS). The base is every AID part left out: SVD's
# image token alone conditions the UNet, with the cross-attention of the SVD folder.
VARIANT_KNOCKOUTS = {
    "aid": (),
    "aid-paraphrase": (),
    "base": ("adapters", "text", "cross-attention"),
    "no-states": (),
    "no-adapters": ("adapters",),
    "no-de": ("de",),
}
VARIANTS = tuple(VARIANT_KNOCKOUTS)  # the default report
# The rewording report: the full model on the same episodes with one kind of word (or all kinds)
# swapped for held-out words of the same meaning (`sim_bridge.simulator.vocabulary`), scored on
# the episodes whose instruction the swap changed.
REWORD_VARIANTS = tuple(f"reword-{kind}" for kind in (*WORD_KINDS, "all"))
VARIANT_KNOCKOUTS |= {variant: () for variant in REWORD_VARIANTS}
RECORDED_VARIANTS = tuple(v for v in VARIANTS if v != "aid-paraphrase")  # rewording needs the simulator


def reworded_episodes(episodes: list[Episode], variant: str) -> list[Episode]:
    """The episodes whose instruction a `reword-<kind>` variant's held-out swap changes, reworded
    (seeded by each episode's seed and the kind, so every model sees the same sentences)."""
    kind = variant.removeprefix("reword-")
    kinds = WORD_KINDS if kind == "all" else (kind,)
    out = []
    for episode in episodes:
        rng = np.random.default_rng([episode.meta["seed"], REWORD_VARIANTS.index(variant)])
        text = reword(episode.instruction, rng, "held_out", kinds, 1.0, episode.object_colors)
        if text != episode.instruction.strip().lower():
            out.append(replace(episode, instruction=text))
    return out


def variant_pipeline(name: str, variant: str, device: str = "cpu", dtype: str = "fp32") -> ForesightPipeline:
    """A pipeline for one table row, loaded without that row's knocked-out parts, computing in
    `dtype` ("fp32" | "bf16" | "fp16") on `device`."""
    if variant not in VARIANT_KNOCKOUTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS + REWORD_VARIANTS}")
    torch_dtype = resolve_dtype(dtype)
    loaded = load_model(name, dtype=torch_dtype, knockouts=VARIANT_KNOCKOUTS[variant])
    loaded.model.to(device=device, dtype=torch_dtype)
    if variant == "no-states":  # the states the model was trained with, knocked out at inference
        loaded = replace(loaded, states=make_decomposer("none", loaded.model.config.num_states))
    return ForesightPipeline(loaded)


def predictions_figure(episodes: list[Episode], preds: np.ndarray, context_frames: int, scale: int = 2) -> np.ndarray:
    """One row per episode: the context frames and the predicted frames, a white bar, then the
    recorded final frame, so a reader compares where the prediction ends with where it should."""
    k = context_frames
    left = contact_sheet([np.concatenate([ep.frames[:k], p]) for ep, p in zip(episodes, preds)])
    right = contact_sheet([ep.frames[-1:] for ep in episodes])
    bar = np.full((left.shape[0], 8, 3), 255, np.uint8)
    sheet = np.concatenate([left, bar, right], axis=1)
    return np.repeat(np.repeat(sheet, scale, axis=0), scale, axis=1)


def predict_episodes(pipe: ForesightPipeline, episodes: list[Episode], seed: int, sampler: SamplerSettings,
                     batch: int = 8) -> np.ndarray:
    """Predict every episode from its first K frames, episode i with sampling seed `seed + i`;
    returns uint8 (E, N-K, H, W, 3)."""
    k = pipe.context_frames
    preds = []
    for start in tqdm(range(0, len(episodes), batch), desc="predicting", leave=False):
        chunk = episodes[start : start + batch]
        frames = np.stack([ep.frames[:k] for ep in chunk])
        preds.append(pipe.predict(frames, [ep.instruction for ep in chunk],
                                  seed=[seed + start + i for i in range(len(chunk))], **asdict(sampler)))
    return np.concatenate(preds)


def clip_scores(episodes: list[Episode], preds: np.ndarray, context_frames: int, i3d: str | None) -> dict:
    """PSNR and SSIM of the predicted frames against the recorded ones, and video distances between
    whole clips (context + prediction) and the recorded clips."""
    k = context_frames
    truth = np.stack([ep.frames[k:] for ep in episodes])
    full_pred = np.concatenate([np.stack([ep.frames[:k] for ep in episodes]), preds], axis=1)
    full_truth = np.stack([ep.frames for ep in episodes])
    if len(episodes) >= 2:
        distances = video_distances(full_pred, full_truth, i3d)
    else:  # a distance between distributions needs two clips on each side
        distances = dict.fromkeys(["fd_stats"] + ([] if i3d is None else ["fvd_i3d", "kvd_i3d"]), float("nan"))
    return {
        "psnr": float(np.mean([psnr(p, t) for p, t in zip(preds, truth)])),
        "ssim": float(np.mean([ssim(p, t) for p, t in zip(preds, truth)])),
        **distances,
    }


def follow_scores(episodes: list[Episode], preds: np.ndarray) -> dict:
    """Where the instructed object ends up in the last predicted frame, against the simulator's truth."""
    errors = np.array([
        follow_error(p[-1], ep.object_colors[ep.target], accepted_tracks(ep)[:, -1])
        for p, ep in zip(preds, episodes)
    ])
    tol = follow_tolerance(preds.shape[-2])
    followed = errors <= tol
    kinds = np.array([ep.meta["task"]["kind"] for ep in episodes])
    by_kind = {kind: (int(followed[kinds == kind].sum()), int((kinds == kind).sum())) for kind in sorted(set(kinds))}
    return {
        "follow_rate": float(np.mean(followed)),
        "follow_ci95": rate_interval(int(followed.sum()), len(followed)),
        "follow_tolerance_px": tol,
        "follow_median_error_px": float(np.median(errors)),
        "not_found_rate": float(np.mean(np.isinf(errors))),
        "follow_rate_by_kind": {kind: k / n for kind, (k, n) in by_kind.items()},
        "follow_by_kind": {kind: {"followed": k, "episodes": n, "ci95": rate_interval(k, n)}
                           for kind, (k, n) in by_kind.items()},
    }


def episode_id(episode: Episode) -> str:
    """An evaluated episode's name in a recording: its simulator seed, or its source and first frame."""
    meta = episode.meta
    return f"seed_{meta['seed']}" if "seed" in meta else f"{meta['source']}@{meta['start']}"


def log_episodes(recording: RerunLog, episodes: list[Episode], context_frames: int) -> None:
    """Each episode's first K frames as `context` (frames 0..K-1) and the rest as `truth`."""
    k = context_frames
    for episode in episodes:
        path = episode_path(episode_id(episode))
        recording.frames([*path, "context"], episode.frames[:k], 0)
        recording.frames([*path, "truth"], episode.frames[k:], k)


def log_variant(recording: RerunLog, variant: str, episodes: list[Episode], preds: np.ndarray, context_frames: int,
                follow: bool) -> None:
    """Per episode, `variant`'s prediction (predicted/<variant>, after the context), the instruction it was
    given (instruction/<variant>) and its scores at step 0 (metrics/<variant>/psnr, ssim and, with `follow`,
    follow_error_px, None where the target is not found, and followed)."""
    for episode, pred in zip(episodes, preds):
        path = episode_path(episode_id(episode))
        recording.frames([*path, "predicted", variant], pred, context_frames)
        recording.text([*path, "instruction", variant], episode.instruction)
        scores = {"psnr": psnr(pred, episode.frames[context_frames:]),
                  "ssim": ssim(pred, episode.frames[context_frames:])}
        if follow:
            error = follow_error(pred[-1], episode.object_colors[episode.target], accepted_tracks(episode)[:, -1])
            scores |= {"follow_error_px": None if np.isinf(error) else error,
                       "followed": error <= follow_tolerance(pred.shape[-2])}
        recording.scalars([*path, "metrics", variant], 0, scores)


def evaluate_variant(pipe: ForesightPipeline, episodes: list[Episode], seed: int, sampler: SamplerSettings,
                     i3d: str | None = None, follow: bool = True, figure: str | Path | None = None,
                     figure_rows: int = 6, recording: RerunLog | None = None, variant: str = "aid") -> dict:
    """Predict every episode (or clip) from its first K frames and score the prediction.

    follow: score instruction following (simulator episodes only: it needs the true object tracks).
    figure: also write `predictions_figure` of the first `figure_rows` episodes there (PNG).
    recording: also log the predictions and per-episode scores there, as `variant` (`log_variant`).
    """
    preds = predict_episodes(pipe, episodes, seed, sampler)
    if figure is not None:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        write_png(figure, predictions_figure(episodes[:figure_rows], preds[:figure_rows], pipe.context_frames))
    if recording is not None:
        log_variant(recording, variant, episodes, preds, pipe.context_frames, follow)
    result = {"episodes" if follow else "clips": len(episodes)}
    if follow:
        result |= follow_scores(episodes, preds)
    return result | clip_scores(episodes, preds, pipe.context_frames, i3d)


def _check_variants(variants: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in variants if v not in allowed]
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of {allowed}, got {list(variants)}")


def _report_head(name: str, sampler: SamplerSettings, i3d: str | None, dtype: str) -> dict:
    """What every report states first: the model, its dtype, the sampler as resolved, and which
    distances it holds."""
    return {"model": name, "dtype": dtype, **asdict(sampler), "distance_note": distance_note(i3d)}


def _evaluate_variants(name: str, probe: ForesightPipeline, variants: tuple[str, ...],
                       episodes_of: Callable[[str], list[Episode]], seed: int, sampler: SamplerSettings,
                       i3d: str | None, figure: str | Path | None, follow: bool,
                       recording: RerunLog | None = None, device: str = "cpu", dtype: str = "fp32") -> dict:
    """Each variant's scores on `episodes_of(variant)`; `probe` is the full model's pipeline, the
    others load without their knocked-out parts; the figure shows the first variant. The variants'
    episodes differ only in their words, so a recording gets their frames once."""
    if recording is not None:
        log_episodes(recording, episodes_of(variants[0]), probe.context_frames)
    scores = {}
    for variant in variants:
        episodes = episodes_of(variant)
        if not episodes:
            logger.info("%s: no episode to evaluate (no instruction has a word of that kind)", variant)
            scores[variant] = {"episodes": 0}
            continue
        logger.info("evaluating %s on %d %s", variant, len(episodes), "episodes" if follow else "recorded clips")
        same_model = variant in ("aid", "aid-paraphrase", *REWORD_VARIANTS)  # other words, the same model
        pipe = probe if same_model else variant_pipeline(name, variant, device, dtype)
        scores[variant] = evaluate_variant(pipe, episodes, seed, sampler, i3d=i3d, follow=follow,
                                           figure=figure if variant == variants[0] else None,
                                           recording=recording, variant=variant)
    return scores


def run_eval(name: str, n: int, seed: int, variants: tuple[str, ...] = VARIANTS, steps: int | None = None,
             i3d: str | None = None,
             guidance_interval: tuple[float, float] | None | Literal["config"] = "config",
             guidance_frame: float | None = None, guidance_text: float | None = None, solver: str | None = None,
             figure: str | Path | None = None, recording: RerunLog | None = None,
             device: str = "cpu", dtype: str = "fp32") -> dict:
    """Evaluate each variant on simulator seeds EVAL_SEEDS.start + seed + [0, n).

    steps, guidance_*: the sampler, as in `ForesightPipeline.predict` (None: the model's defaults;
    "config": the model's guidance interval).
    figure: write the first variant's predictions of the first episodes there (the README's figure).
    recording: log every episode and each variant's predictions and scores there (module doc).
    """
    if n < 2:
        raise ValueError(f"evaluation needs at least 2 episodes (the Frechet distance compares distributions), got {n}")
    _check_variants(variants, VARIANTS + REWORD_VARIANTS)
    probe = variant_pipeline(name, "aid", device, dtype)
    size, frames = probe.height, probe.num_frames
    seeds = range(EVAL_SEEDS.start + seed, EVAL_SEEDS.start + seed + n)
    plain = list(make_episodes(seeds, size, frames, TRAINED_KINDS))
    paraphrased = list(make_episodes(seeds, size, frames, TRAINED_KINDS, paraphrase=True))

    def episodes_of(variant: str) -> list[Episode]:
        if variant == "aid-paraphrase":
            return paraphrased
        return reworded_episodes(plain, variant) if variant in REWORD_VARIANTS else plain

    sampler = probe.defaults.resolve(steps, guidance_frame, guidance_text, guidance_interval, solver)
    scores = _evaluate_variants(name, probe, variants, episodes_of, seed, sampler, i3d, figure, follow=True,
                                recording=recording, device=device, dtype=dtype)
    return _report_head(name, sampler, i3d, dtype) | {"seeds": [seeds.start, seeds.stop], "variants": scores}


def recorded_clips(sources: list[EpisodeSource], num_frames: int, height: int, width: int, stride: int = 1,
                   per_episode: int = 1) -> tuple[list[Episode], dict[str, int]]:
    """Clips of `num_frames` frames, one every `stride` recorded frames, `per_episode` of them spread
    evenly over each episode, fitted to height x width (`fit_frames`: scale, centre-crop).

    Returns the clips (as episodes; meta names the source and first frame) and how many episodes
    were skipped and why: shorter than one clip, or no instruction to condition on.
    """
    if stride < 1 or per_episode < 1:
        raise ValueError(f"stride and per_episode must be >= 1, got stride={stride}, per_episode={per_episode}")
    span = stride * (num_frames - 1) + 1
    clips, skipped = [], {"too_short": 0, "no_instruction": 0}
    for source in tqdm(sources, desc="reading episodes", leave=False):
        episode = source.load()
        if not episode.instruction:
            skipped["no_instruction"] += 1
            continue
        length = len(episode.frames)
        if length < span:
            skipped["too_short"] += 1
            continue
        starts = sorted({round(s) for s in np.linspace(0, length - span, per_episode)})
        for start in starts:
            frames = fit_frames(episode.frames[start : start + span : stride], height, width)
            clips.append(Episode(frames, episode.instruction,
                                 meta={"source": source.id, "start": start, "stride": stride}))
    return clips, skipped


def run_eval_recorded(name: str, episodes_dir: str | Path, n: int, seed: int,
                      variants: tuple[str, ...] = RECORDED_VARIANTS, stride: int = 1, per_episode: int = 1,
                      steps: int | None = None, i3d: str | None = None,
                      guidance_interval: tuple[float, float] | None | Literal["config"] = "config",
                      guidance_frame: float | None = None, guidance_text: float | None = None,
                      solver: str | None = None,
                      figure: str | Path | None = None, recording: RerunLog | None = None,
             device: str = "cpu", dtype: str = "fp32") -> dict:
    """Evaluate each variant on clips of recorded episodes (any format `sim_bridge.data.readers` reads).

    n episodes are taken evenly from the sorted episodes under `episodes_dir` (all when there are
    fewer); clips as in `recorded_clips`; clip i samples with seed `seed + i`. recording: as in `run_eval`.
    """
    _check_variants(variants, RECORDED_VARIANTS)
    sources = find_episodes(episodes_dir)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    picked = [sources[i] for i in sorted({int(i) for i in np.linspace(0, len(sources) - 1, min(n, len(sources)))})]
    probe = variant_pipeline(name, "aid", device, dtype)
    clips, skipped = recorded_clips(picked, probe.num_frames, probe.height, probe.width, stride, per_episode)
    if len(clips) < 2:
        raise ValueError(f"{episodes_dir}: {len(clips)} usable clip(s) of {probe.num_frames} frames at stride "
                         f"{stride} from {len(picked)} episodes (skipped: {skipped}); the distances need at least 2")
    sampler = probe.defaults.resolve(steps, guidance_frame, guidance_text, guidance_interval, solver)
    return _report_head(name, sampler, i3d, dtype) | {
        "episodes_dir": str(episodes_dir), "episodes_found": len(sources), "episodes_used": len(picked),
        "skipped": skipped, "clips": len(clips),
        "clip": {"num_frames": probe.num_frames, "context_frames": probe.context_frames, "stride": stride,
                 "per_episode": per_episode, "height": probe.height, "width": probe.width},
        "variants": _evaluate_variants(name, probe, variants, lambda v: clips, seed, sampler, i3d, figure,
                                       follow=False, recording=recording, device=device, dtype=dtype),
    }


def format_table(report: dict) -> str:
    """A markdown table, one row per variant, like the paper's ablation table; instruction following
    for simulator episodes, FVD and KVD when an I3D was given, the stand-in distance otherwise."""
    first = next(r for r in report["variants"].values() if r.get("episodes", r.get("clips")))
    follow = "follow_rate" in first
    distances = ["fvd_i3d", "kvd_i3d"] if "fvd_i3d" in first else ["fd_stats"]
    counts = len({r.get("episodes") for r in report["variants"].values()}) > 1  # rewording rows
    head = ((["episodes"] if counts else []) + ["follow rate", "median error (px)"] if follow else ["clips"])
    head += ["PSNR", "SSIM"] + distances
    rows = []
    for name, r in report["variants"].items():
        if not r.get("episodes", r.get("clips")):
            rows.append([name, *([0] if counts else []), *["-"] * (len(head) - counts)])
            continue
        cells = ((([r["episodes"]] if counts else []) + [f"{100 * r['follow_rate']:.1f}%",
                                                         f"{r['follow_median_error_px']:.1f}"]) if follow
                 else [r["clips"]])
        rows.append([name, *cells, f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", *(f"{r[k]:.3f}" for k in distances)])
    return markdown_table(["variant", *head], rows)


def format_kinds(report: dict) -> str:
    """Instruction following by task kind, a line per variant: followed of episodes and the 95%
    Wilson interval, so that a kind's few episodes read as few (empty for recorded clips)."""
    lines = []
    for name, r in report["variants"].items():
        kinds = r.get("follow_by_kind")
        if kinds:
            cells = [f"{kind} {k['followed']}/{k['episodes']} ({100 * k['ci95'][0]:.0f}-{100 * k['ci95'][1]:.0f}%)"
                     for kind, k in kinds.items()]
            lines.append(f"{name}: " + ", ".join(cells))
    return "\n".join(["following by task kind (followed/episodes, 95% interval):", *lines]) if lines else ""


def write_report(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
