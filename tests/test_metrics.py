"""Metrics on known inputs."""

import numpy as np
import pytest

from sim_bridge.common.metrics import (
    frechet_distance,
    kernel_distance,
    psnr,
    ssim,
    video_distances,
    video_stats_features,
)
from sim_bridge.simulator.tabletop import make_episode


def test_psnr_and_ssim_on_identical_and_noisy_clips():
    rng = np.random.default_rng(0)
    clip = make_episode(0, size=64, num_frames=4).frames
    noisy = np.clip(clip.astype(int) + rng.normal(0, 10, clip.shape), 0, 255).astype(np.uint8)
    assert psnr(clip, clip) == 100.0
    assert ssim(clip, clip) == pytest.approx(1.0)
    assert 25 < psnr(noisy, clip) < 30  # sigma 10 noise: about 28 dB
    assert ssim(noisy, clip) < 0.8  # smooth scene: noise destroys local structure
    assert psnr(255 - clip, clip) < psnr(noisy, clip)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 5)), rng.normal(size=(4000, 5))
    assert frechet_distance(a, b) < 0.05
    shifted = b + np.array([2.0, 0, 0, 0, 0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=0.2)  # ||mu||^2
    wider = b * 2  # covariance 4I vs I: Tr(I + 4I - 2 * 2I) = 5 * 1
    assert frechet_distance(a, wider) == pytest.approx(5.0, abs=0.3)


def test_kernel_distance_on_known_inputs():
    # by hand, d = 1, k(x, y) = (x y + 1)^3: within {0, 1} = 1, within {2, 3} = 7^3, across mean (1+1+27+64)/4
    a, b = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    assert kernel_distance(a, b) == pytest.approx(1 + 343 - 2 * 93 / 4)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    same, shifted = kernel_distance(x, y), kernel_distance(x, y + 0.5)
    assert abs(same) < 0.05 and shifted > 20 * abs(same)
    assert kernel_distance(x, y + 1.0) > shifted
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(x[:1], y)


def test_kernel_distance_is_unbiased():
    """Over many small samples of one distribution the estimate averages 0, where the biased
    (diagonal-including) estimate stays clearly positive."""
    rng = np.random.default_rng(1)
    unbiased, biased = [], []
    for _ in range(400):
        x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
        unbiased.append(kernel_distance(x, y))
        k = lambda p, q: (p @ q.T / 4 + 1) ** 3
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    spread = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * spread
    assert np.mean(biased) > 10 * spread


def test_video_distances_without_and_with_features():
    clips = np.stack([make_episode(s, size=64, num_frames=4).frames for s in range(4)])
    assert set(video_distances(clips, clips)) == {"fd_stats"}
    assert video_distances(clips, clips)["fd_stats"] == pytest.approx(0, abs=1e-6)


def test_video_features_tell_motion_from_stillness():
    ep = make_episode(3, size=64, num_frames=8)
    still = np.repeat(ep.frames[:1], 8, axis=0)
    moving, static = video_stats_features(ep.frames[None]), video_stats_features(still[None])
    assert moving.shape == static.shape and moving.ndim == 2
    assert not np.allclose(moving, static)
