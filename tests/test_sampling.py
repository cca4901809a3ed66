"""EDM preconditioning, the Euler sampler, two-scale guidance and the pipeline's determinism."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from foresight.config import SOLVER_NAMES, AIDConfig
from foresight.diffusion.edm import Denoiser, karras_sigmas
from foresight.diffusion.sampling import (
    SOLVERS,
    TwoScaleGuidance,
    sample_consistency,
    sample_euler,
    sampling_sigmas,
    unet_passes,
)
from foresight.model_dir import LoadedModel
from foresight.pipeline import ForesightPipeline, frames_to_tensor


def test_karras_sigmas():
    s = karras_sigmas(25, 0.002, 700.0)
    assert s.dtype == torch.float64 and len(s) == 26
    assert s[0].item() == pytest.approx(700.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    assert torch.all(s[1:] < s[:-1])


def test_euler_on_a_gaussian_is_exact_in_the_limit():
    # data ~ N(0, 1): the ideal denoiser is x / (1 + sigma^2); the ODE maps N(0, 1 + s0^2) to N(0, 1)
    sigmas = karras_sigmas(200, 0.002, 80.0)
    x = torch.randn(20000, dtype=torch.float64) * sigmas[0]
    out = sample_euler(lambda x, s: x / (1 + s**2), x, sigmas)
    assert out.std().item() == pytest.approx(1.0, abs=0.03)


def _gaussian_errors(solver: str, steps: tuple[int, ...]) -> list[float]:
    """Largest error of `solver` against the exact probability-flow ODE map of N(0, 0.5^2) data,
    whose ideal denoiser is x s_d^2 / (s_d^2 + sigma^2) and whose ODE scales x_T by
    s_d / sqrt(s_d^2 + T^2); also checks the solver makes `unet_passes` model calls."""
    errors = []
    x_unit = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for n in steps:
        sigmas = karras_sigmas(n, 0.002, 80.0)
        calls = []

        def model(x, s):
            calls.append(1)
            return x * 0.25 / (0.25 + s[:, None] ** 2)

        x = x_unit * sigmas[0]
        out = SOLVERS[solver](model, x, sigmas)
        assert len(calls) == unet_passes(solver, n)
        errors.append(float((out - x * 0.5 / (0.25 + sigmas[0] ** 2) ** 0.5).abs().max()))
    return errors


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_solvers_converge_at_their_order(solver, order):
    """Doubling the steps divides the error by about 2 ** order."""
    errors = _gaussian_errors(solver, (64, 128, 256))
    for coarse, fine in zip(errors, errors[1:]):
        assert 2 ** order * 0.8 < coarse / fine < 2 ** order * 1.25, errors


def test_second_order_solvers_beat_euler_at_equal_model_calls():
    (euler,) = _gaussian_errors("euler", (63,))
    (heun,) = _gaussian_errors("heun", (32,))  # 63 calls
    (dpm,) = _gaussian_errors("dpmpp_2m", (63,))
    assert heun < euler / 2 and dpm < euler / 5
    with pytest.raises(ValueError, match="solver must be one of"):
        unet_passes("rk4", 3)


def test_consistency_sampling_with_the_exact_consistency_map_gives_the_ode_s_samples():
    """N(0, s_d^2) data: the exact consistency function (the ODE map to sigma 0) is
    f(x, sigma) = x s_d / sqrt(s_d^2 + sigma^2). One step is the ODE's own output; more steps,
    re-noised in between, keep the data distribution; the noise callable makes it repeatable."""
    s_d = 0.5

    def f(x, sigma):
        return x * s_d / (s_d**2 + sigma**2).sqrt()

    sigmas = karras_sigmas(1, 0.002, 80.0)
    x = torch.randn(20000, dtype=torch.float64) * 80.0
    assert torch.allclose(sample_consistency(f, x, sigmas), x * s_d / (s_d**2 + 80.0**2) ** 0.5)
    four = karras_sigmas(4, 0.002, 80.0)

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return lambda: torch.randn(x.shape, generator=g, dtype=torch.float64)

    out = sample_consistency(f, x, four, noise=draws(1))
    assert out.std().item() == pytest.approx(s_d, rel=0.03)
    assert torch.equal(out, sample_consistency(f, x, four, noise=draws(1)))
    assert not torch.equal(out, sample_consistency(f, x, four, noise=draws(2)))
    assert unet_passes("consistency", 4) == 4


def test_consistency_schedule_spends_no_call_at_sigma_min():
    four = sampling_sigmas("consistency", 4, 0.002, 80.0)
    assert len(four) == 5 and four[0] == 80.0 and four[-1] == 0 and four[-2] > 0.05
    assert torch.equal(sampling_sigmas("consistency", 1, 0.002, 80.0), torch.tensor([80.0, 0.0], dtype=torch.float64))
    assert torch.equal(sampling_sigmas("euler", 4, 0.002, 80.0), karras_sigmas(4, 0.002, 80.0))


def test_the_pipeline_samples_with_the_solver_asked_for(tiny_model):
    """Heun with 2 steps calls the UNet 3 times, DPM-Solver++(2M) twice; the names are the
    config's; a model folder's default solver applies unless a request names another."""
    assert set(SOLVERS) == set(SOLVER_NAMES)
    pipe = ForesightPipeline(LoadedModel.of(tiny_model))
    calls = []
    handle = tiny_model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    outs = {}
    try:
        for solver in SOLVER_NAMES:
            calls.clear()
            outs[solver] = pipe.predict(frames, ["push the red block left"], steps=2, solver=solver)
            assert len(calls) == unet_passes(solver, 2), solver
    finally:
        handle.remove()
    assert not np.array_equal(outs["euler"], outs["heun"]) and not np.array_equal(outs["euler"], outs["dpmpp_2m"])
    config = tiny_model.config
    tiny_model.config = replace(config, solver="heun")  # a folder whose config samples with Heun
    try:
        heun_default = ForesightPipeline(LoadedModel.of(tiny_model))
        assert np.array_equal(heun_default.predict(frames, ["push the red block left"], steps=2), outs["heun"])
    finally:
        tiny_model.config = config
    with pytest.raises(ValueError, match="solver must be one of"):
        pipe.predict(frames, ["push the red block left"], steps=2, solver="rk4")
    with pytest.raises(ValueError, match="solver must be one of"):
        AIDConfig(solver="rk4")
    assert AIDConfig.from_dict({k: v for k, v in AIDConfig().to_dict().items() if k != "solver"}).solver == "euler"


def _guided(model, scale_frame, scale_text, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(2, 1, 3, 64, 64, generator=g) * 2 - 1
    cond = model.guidance_conditions(frames, ["push the red block left", "pick up the cup"], [["a", "b"], ["c", "d"]])
    guidance = TwoScaleGuidance(Denoiser(model.unet), cond, scale_frame, scale_text)
    x = torch.randn(2, 8, 4, 16, 16, generator=g) * 5
    return guidance, x


def test_guidance_with_unit_scales_is_the_full_branch(tiny_model):
    guidance, x = _guided(tiny_model, 1.0, 1.0)
    sigma = torch.full((2,), 3.0)
    with torch.no_grad():
        guided = guidance(x, sigma)
        parts = guidance.denoiser(torch.cat([x] * 3), torch.cat([sigma] * 3), guidance.cond).chunk(3)
    full = parts[2]  # the frames + text branch
    torch.testing.assert_close(guided, full, atol=1e-5, rtol=1e-5)
    assert (parts[0] - parts[2]).abs().max() > 1e-4, "branches should differ, or the test proves nothing"


def test_guidance_interval_runs_the_full_branch_alone_outside_it(tiny_model):
    guidance, x = _guided(tiny_model, 2.0, 3.0)
    limited = TwoScaleGuidance(guidance.denoiser, guidance.cond, 2.0, 3.0, interval=(0.5, 4.0))
    calls = []
    limited.denoiser.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        inside = torch.full((2,), 4.0)  # the interval's closed upper end
        torch.testing.assert_close(limited(x, inside), guidance(x, inside))
        outside = torch.full((2,), 9.0)
        full = guidance.denoiser(torch.cat([x] * 3), torch.cat([outside] * 3), guidance.cond).chunk(3)[2]
        torch.testing.assert_close(limited(x, outside), full, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(guidance(x, outside), full, atol=1e-4)
    assert calls[0] == 6 and calls[-2] == 2  # 3 branches inside; one pass of 2 clips outside


def test_pipeline_guidance_interval_follows_the_config(tiny_model, monkeypatch):
    pipe = ForesightPipeline(LoadedModel.of(tiny_model))
    frames = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    every = pipe.predict(frames, ["push the red block left"], steps=3, seed=1, guidance_interval=None)
    assert np.array_equal(every, pipe.predict(frames, ["push the red block left"], steps=3, seed=1))
    never = pipe.predict(frames, ["push the red block left"], steps=3, seed=1, guidance_interval=(1e-9, 1e-8))
    assert np.abs(every.astype(int) - never).max() > 0
    monkeypatch.setattr(tiny_model, "config", replace(tiny_model.config, guidance_interval=(1e-9, 1e-8)))
    configured = ForesightPipeline(LoadedModel.of(tiny_model))
    assert configured.defaults.guidance_interval == (1e-9, 1e-8)
    assert np.array_equal(configured.predict(frames, ["push the red block left"], steps=3, seed=1), never)


def test_guidance_branches_are_built_as_documented(tiny_model):
    guidance, _ = _guided(tiny_model, 2.0, 3.0)
    cond_u, cond_v, cond_full = guidance.cond.cond_latents.chunk(3)
    assert cond_u.abs().max() == 0  # unconditional: no frame latents
    assert cond_v.abs().max() > 0 and torch.equal(cond_v, cond_full)
    assert cond_v[:, 1:].abs().max() == 0  # frames after K are masked
    ctx_u, ctx_v, ctx_full = guidance.cond.context.chunk(3)
    assert (ctx_v - ctx_full).abs().max() > 1e-4  # text changes the context


def test_guidance_branches_share_one_encoding_of_the_context(tiny_model):
    g = torch.Generator().manual_seed(4)
    frames, noise = torch.rand(2, 1, 3, 64, 64, generator=g) * 2 - 1, torch.randn(2, 1, 3, 64, 64, generator=g)
    texts, states = ["push the red block left", "pick up the cup"], [["a", "b"], ["c", "d"]]
    encoded = []
    hooks = [part.register_forward_pre_hook(lambda m, args: encoded.append(len(args[0])))
             for part in (tiny_model.vae.encoder, tiny_model.vision)]
    try:
        with torch.no_grad():
            shared = tiny_model.guidance_conditions(frames, texts, states, noise=noise)
    finally:
        for hook in hooks:
            hook.remove()
    assert encoded == [2, 2]  # each clip's context once, not once per branch
    flags = torch.arange(6) // 2
    with torch.no_grad():  # each branch encoding its own copy of the context
        apart = tiny_model.conditions(frames.repeat(3, 1, 1, 1, 1), texts * 3, states * 3, None,
                                      noise.repeat(3, 1, 1, 1, 1), drop_frames=flags == 0, drop_text=flags < 2)
    for field in ("cond_latents", "context", "added_time_ids"):
        torch.testing.assert_close(getattr(shared, field), getattr(apart, field), rtol=1e-5, atol=1e-5)


def test_pipeline_is_deterministic_for_a_seed(tiny_model):
    pipe = ForesightPipeline(LoadedModel.of(tiny_model))
    frames = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    a = pipe.predict(frames, ["push the red block left"], steps=3, seed=7)
    b = pipe.predict(frames, ["push the red block left"], steps=3, seed=7)
    c = pipe.predict(frames, ["push the red block left"], steps=3, seed=8)
    assert a.shape == (1, 7, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pipeline_batches_hypotheses_and_resizes(tiny_model):
    pipe = ForesightPipeline(LoadedModel.of(tiny_model))
    frames = np.random.default_rng(1).integers(0, 256, (1, 48, 80, 3), dtype=np.uint8)
    out = pipe.predict(frames, ["push the red block left", "pick up the cup", "open the drawer"], steps=2, num_frames=5)
    assert out.shape == (3, 4, 64, 64, 3)
    single = pipe.predict(frames, ["pick up the cup"], steps=2, num_frames=5, seed=1)
    assert np.abs(single[0].astype(int) - out[1]).max() <= 2  # same seed, batch changes only rounding


@pytest.mark.parametrize(
    "frames, instructions, kwargs, match",
    [
        (np.zeros((1, 64, 64, 3), np.float32), ["a"], {}, "uint8"),
        (np.zeros((2, 64, 64, 3), np.uint8), ["a"], {}, "K=1"),
        (np.zeros((1, 64, 64, 3), np.uint8), [""], {}, "non-empty"),
        (np.zeros((1, 64, 64, 3), np.uint8), ["a"], {"num_frames": 9}, "num_frames"),
        (np.zeros((1, 64, 64, 3), np.uint8), ["a", "b"], {"seed": [1]}, "seeds"),
    ],
)
def test_pipeline_rejects_bad_input(tiny_model, frames, instructions, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ForesightPipeline(LoadedModel.of(tiny_model)).predict(frames, instructions, steps=1, **kwargs)


def test_frame_tensor_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    from foresight.pipeline import tensor_to_frames

    assert np.array_equal(tensor_to_frames(x), frames)
