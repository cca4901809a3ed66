"""Quality metrics for predicted clips: PSNR, SSIM, FVD and KVD on I3D features (or a Frechet distance
on stand-in features when no I3D is at hand). Instruction following (where the instructed object
ends up) is scored in `sim_bridge.simulator.scoring`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 images/clips, in dB (capped at 100 for identical inputs)."""
    mse = np.mean((pred.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) over frames and channels."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a = pred.reshape((-1,) + pred.shape[-3:]).astype(np.float64)
    b = truth.reshape((-1,) + truth.shape[-3:]).astype(np.float64)
    scores = []
    for x, y in zip(a, b):
        blur = lambda z: cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        scores.append(s.mean())
    return float(np.mean(scores))


def video_stats_features(clips: np.ndarray) -> np.ndarray:
    """Hand-made spatio-temporal features per clip, the stand-in for I3D when its weights are absent.

    clips uint8 (B, T, H, W, 3) -> (B, D): per-frame mean colour, per-step motion energy,
    a 4x4 grey thumbnail of the last frame and of |last - first|. Named "FD-stats" in reports,
    never "FVD": it compares distributions of appearance and motion, not I3D's learned features.
    """
    x = clips.astype(np.float32) / 255.0
    grey = x.mean(-1)
    feats = [
        x.mean((2, 3)).reshape(len(x), -1),
        np.abs(np.diff(grey, axis=1)).mean((2, 3)),
        np.stack([cv2.resize(g[-1], (4, 4), interpolation=cv2.INTER_AREA).ravel() for g in grey]),
        np.stack([cv2.resize(np.abs(g[-1] - g[0]), (4, 4), interpolation=cv2.INTER_AREA).ravel() for g in grey]),
    ]
    return np.concatenate(feats, axis=1).astype(np.float64)


@lru_cache(maxsize=1)
def _load_i3d(weights: str):
    import torch

    return torch.jit.load(weights, map_location="cpu").eval()


def i3d_features(clips: np.ndarray, weights: str | Path, batch: int = 8) -> np.ndarray:
    """Features from a local TorchScript I3D (the FVD network, e.g. `i3d_torchscript.pt`).

    Follows the common FVD recipe: frames resized to 224x224, values in [-1, 1], input
    (B, 3, T, 224, 224), 400-d logits-free features (`rescale=False, resize=False, return_features=True`);
    `batch` clips at a time, so memory does not grow with the number of clips.
    """
    import torch

    model = _load_i3d(str(weights))
    feats = []
    for start in range(0, len(clips), batch):
        x = torch.from_numpy(clips[start : start + batch]).float()
        b, t = x.shape[:2]
        x = x.flatten(0, 1).permute(0, 3, 1, 2)
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        x = (x / 127.5 - 1).unflatten(0, (b, t)).permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            feats.append(model(x, rescale=False, resize=False, return_features=True).double().numpy())
    return np.concatenate(feats)


def rate_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a success rate (SciPy's binomtest): what `successes` of `trials`
    says about the true rate; a kind with 31 episodes moves by a few points per episode."""
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussian fits of two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^1/2) = Tr((S_a^1/2 S_b S_a^1/2)^1/2), a symmetric PSD matrix: use eigh
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    cross = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased squared MMD between two feature sets (m, d) and (n, d) with the polynomial kernel
    k(x, y) = (x.y / d + 1)^3: KID (Binkowski et al. 2018), named KVD on I3D features (Unterthiner
    et al. 2018). Each within-set sum leaves out the diagonal, so two samples of one distribution
    score 0 in expectation (it can come out slightly negative)."""
    m, n, d = len(a), len(b), a.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"the kernel distance needs at least 2 samples per set, got {m} and {n}")
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def video_distances(pred: np.ndarray, truth: np.ndarray, i3d: str | Path | None = None) -> dict[str, float]:
    """Distances between two sets of uint8 clips (B, T, H, W, 3): fd_stats always; with a local I3D
    also FVD (`fvd_i3d`, Frechet) and KVD (`kvd_i3d`, kernel) on its features."""
    result = {"fd_stats": frechet_distance(video_stats_features(pred), video_stats_features(truth))}
    if i3d is not None:
        fp, ft = i3d_features(pred, i3d), i3d_features(truth, i3d)
        result |= {"fvd_i3d": frechet_distance(fp, ft), "kvd_i3d": kernel_distance(fp, ft)}
    return result


def distance_note(i3d: str | Path | None) -> str:
    """What a report's distances are, in words."""
    stand_in = ("fd_stats is a Frechet distance on hand-made appearance/motion features (video_stats_features), "
                "a stand-in that is not comparable with published FVD")
    if i3d is None:
        return f"no I3D given (--i3d PATH to a local TorchScript I3D): FVD and KVD not computed; {stand_in}"
    return (f"fvd_i3d and kvd_i3d: Frechet and polynomial-kernel MMD distances on I3D features ({i3d}) of whole "
            f"clips, context frames included; {stand_in}")

