"""Feature statistics the way LeRobot v3 datasets carry them, so lerobot can normalise with them.

lerobot 0.6 reads `meta/stats.json` (the whole dataset) before training and keeps one set per
episode in `meta/episodes` (columns `stats/<feature>/<stat>`), which `merge_datasets` and
`LeRobotDataset.resume` aggregate. Each set holds, per feature: min, max, mean, std, count and
the quantiles q01, q10, q50, q90, q99. Here they are computed by lerobot's recipe, written
afresh:
- vectors (T, D) and scalars (T,): per dimension over the episode's frames; quantiles read off a
  5000-bin histogram between the episode's min and max, interpolated inside the bin; values in
  float32 unless the column is wider;
- images: per RGB channel over every pixel of a sample of the frames (all of them up to 100,
  then T**0.75), frames of 300 px or more first strided down to about 150 px, scaled to [0, 1];
  shape (3, 1, 1); count is the number of frames sampled;
- the dataset: counts summed, means weighted by count, variances pooled, quantiles averaged
  weighted by count (as lerobot aggregates them).
"""

from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
HISTOGRAM_BINS = 5000
FEW_FRAMES, MANY_FRAMES, SAMPLE_POWER = 100, 10_000, 0.75
LARGE_SIDE, TARGET_SIDE = 300, 150

Stats = dict[str, np.ndarray]


def _quantile(counts: np.ndarray, edges: np.ndarray, target: float) -> float:
    """The value below which `target` of the histogram's samples lie, linear inside its bin."""
    cumulative = np.cumsum(counts)
    i = int(np.searchsorted(cumulative, target))
    if i == 0:
        return float(edges[0])
    if i >= len(cumulative):
        return float(edges[-1])
    below, inside = cumulative[i - 1], cumulative[i] - cumulative[i - 1]
    if inside == 0:
        return float(edges[i])
    return float(edges[i] + (target - below) / inside * (edges[i + 1] - edges[i]))


def columns_stats(samples: np.ndarray) -> Stats:
    """(N, D) samples -> statistics per column, each of shape (D,); count (1,) is N."""
    x = samples.astype(np.result_type(samples.dtype, np.float32), copy=False)
    n = len(x)
    stats = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0)}
    if n < 2:
        stats["std"] = x.std(axis=0)
        stats |= {key: stats["mean"].copy() for key in QUANTILE_KEYS}
    else:
        stats["std"] = np.sqrt(np.maximum(0, (x ** 2).mean(axis=0) - stats["mean"] ** 2))
        stats |= {key: np.empty(x.shape[1], x.dtype) for key in QUANTILE_KEYS}
        for d in range(x.shape[1]):
            edges = np.linspace(stats["min"][d] - 1e-10, stats["max"][d] + 1e-10, HISTOGRAM_BINS + 1)
            counts, _ = np.histogram(x[:, d], bins=edges)
            for key, q in zip(QUANTILE_KEYS, QUANTILES):
                stats[key][d] = _quantile(counts, edges, q * n)
    stats["count"] = np.array([n])
    return stats


def vector_stats(values: np.ndarray) -> Stats:
    """(T,) or (T, D) values of one episode -> stats of shape (1,) or (D,)."""
    return columns_stats(values.reshape(len(values), -1))


def sampled_frames(num_frames: int) -> np.ndarray:
    """Which frames of an episode image statistics look at."""
    fewest = min(FEW_FRAMES, num_frames)
    count = max(fewest, min(int(num_frames ** SAMPLE_POWER), MANY_FRAMES))
    return np.round(np.linspace(0, num_frames - 1, count)).astype(int)


def image_stats(frames: np.ndarray) -> Stats:
    """(T, H, W, 3) uint8 frames of one episode -> per-channel stats in [0, 1], shape (3, 1, 1)."""
    sample = frames[sampled_frames(len(frames))]
    h, w = sample.shape[1:3]
    if max(h, w) >= LARGE_SIDE:
        step = int((w if w > h else h) / TARGET_SIDE)
        sample = sample[:, ::step, ::step]
    stats = columns_stats(sample.reshape(-1, sample.shape[-1]))
    return {key: value if key == "count" else (value / 255.0).reshape(-1, 1, 1)
            for key, value in stats.items()} | {"count": np.array([len(sample)])}


def aggregate(episodes: list[Stats]) -> Stats:
    """One feature's stats over several episodes (or datasets), weighted by their counts."""
    counts = np.stack([s["count"] for s in episodes]).astype(np.float64)
    total = counts.sum(axis=0)
    means = np.stack([s["mean"] for s in episodes])
    weights = counts.reshape(counts.shape + (1,) * (means.ndim - counts.ndim))
    mean = (means * weights).sum(axis=0) / total
    variance = ((np.stack([s["std"] for s in episodes]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
    stats = {"min": np.min([s["min"] for s in episodes], axis=0),
             "max": np.max([s["max"] for s in episodes], axis=0),
             "mean": mean, "std": np.sqrt(variance),
             "count": np.stack([s["count"] for s in episodes]).sum(axis=0)}
    for key in QUANTILE_KEYS:
        stats[key] = (np.stack([s[key] for s in episodes]) * weights).sum(axis=0) / total
    return stats


def as_lists(stats: dict[str, Stats]) -> dict[str, dict[str, list]]:
    """Feature -> stat -> nested lists, as `meta/stats.json` and the episode columns hold them."""
    return {feature: {key: np.asarray(value).tolist() for key, value in by_stat.items()}
            for feature, by_stat in stats.items()}
