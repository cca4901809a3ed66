"""bench.distilled_scale: the clips each UNet call of a request runs, counted on a stand-in model,
are the pipeline's own; the ratio follows from the presets' samplers."""

from dataclasses import replace

import numpy as np
import pytest

from bench.distilled_scale import call_clips, per_request
from foresight.config import SamplerSettings
from foresight.diffusion.sampling import sampling_sigmas
from foresight.model_dir import LoadedModel
from foresight.pipeline import ForesightPipeline


@pytest.mark.parametrize("sampler", [
    SamplerSettings(6, 1.5, 3.0, "levels 1-2", "euler"),  # guided inside the interval only
    SamplerSettings(3, 2.0, 2.5, "levels 1-2", "heun"),   # Heun's extra calls at the next level
    SamplerSettings(3, 1.5, 3.0, None, "dpmpp_2m"),     # guided at every step
    SamplerSettings(4, 1.0, 1.0, None, "consistency"),  # a distilled student: one branch
])
def test_the_counted_calls_are_the_pipelines(tiny_model, sampler):
    if sampler.guidance_interval:  # an interval holding the schedule's second and third levels
        sigmas = sampling_sigmas(sampler.solver, sampler.steps, tiny_model.sigma_min, tiny_model.sigma_max)
        sampler = replace(sampler, guidance_interval=(float(sigmas[3]), float(sigmas[1])))
    pipe = ForesightPipeline(LoadedModel.of(tiny_model))
    seen = []
    handle = tiny_model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        pipe.predict(np.zeros((1, 64, 64, 3), np.uint8), ["push the red block left"], steps=sampler.steps,
                     guidance_frame=sampler.guidance_frame, guidance_text=sampler.guidance_text,
                     guidance_interval=sampler.guidance_interval, solver=sampler.solver)
    finally:
        handle.remove()
    assert call_clips(sampler, tiny_model.sigma_min, tiny_model.sigma_max) == seen
    assert set(seen) == ({1} if sampler.solver == "consistency" else {1, 3} if sampler.guidance_interval else {3})


def test_the_bridge_student_runs_four_one_clip_calls_against_the_teachers_guided_25():
    result = per_request(one_clip_s=1.0, three_clips_s=2.5)
    assert (result["teacher"]["calls"], result["teacher"]["clip_passes"]) == (25, 75)
    assert (result["student"]["calls"], result["student"]["clip_passes"]) == (4, 4)
    assert result["ratio"] == pytest.approx(4 / (25 * 2.5))
