"""Metrics on known inputs."""

import numpy as np
import pytest

from foresight.metrics import frechet_distance, psnr, ssim, video_stats_features
from sim_bridge.tabletop import make_episode


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


def test_video_features_tell_motion_from_stillness():
    ep = make_episode(3, size=64, num_frames=8)
    still = np.repeat(ep.frames[:1], 8, axis=0)
    moving, static = video_stats_features(ep.frames[None]), video_stats_features(still[None])
    assert moving.shape == static.shape and moving.ndim == 2
    assert not np.allclose(moving, static)
