"""Half precision, the float32 sampler state, chunked VAE decoding and torch.compile, on CPU."""

import numpy as np
import pytest
import torch

import foresight.pipeline as pipeline_module
from foresight.diffusion.edm import karras_sigmas
from foresight.diffusion.sampling import sample_euler
from foresight.dtypes import resolve_dtype
from foresight.loading import build_tiny_svd
from foresight.model_dir import (
    TINY_RANDOM_AID,
    TINY_RANDOM_SVD,
    load_model_dir,
    save_model_dir,
)
from foresight.models.aid import AIDModel
from foresight.models.encoders import TextEncoder, bundled_text_encoder_path
from foresight.pipeline import load_pipeline

# bf16 against fp32, same seed, on uint8 frames (levels of 255). Measured on 2 CPU cores with the
# model's default steps and two instructions: tiny-random mean 1.19 / p99 5, tiny mean 0.56 / p99 6.
BF16_MEAN_LEVELS = 2.5
BF16_P99_LEVELS = 12


def _frames(pipe, seed=0):
    shape = (pipe.context_frames, pipe.height, pipe.width, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("spec", ["tiny-random", "tiny"])
def test_bf16_pipeline_predicts_close_to_fp32(spec):
    instructions = ["push the red block to the left", "pick up the blue cup"]
    fp32 = load_pipeline(spec)
    bf16 = load_pipeline(spec, dtype="bf16")
    assert bf16.info()["dtype"] == "bfloat16"
    frames = _frames(fp32)
    a = fp32.predict(frames, instructions, seed=3).astype(int)
    b = bf16.predict(frames, instructions, seed=3).astype(int)
    diff = np.abs(a - b)
    assert diff.mean() <= BF16_MEAN_LEVELS and np.percentile(diff, 99) <= BF16_P99_LEVELS, (diff.mean(), diff.max())
    assert diff.max() > 0, "bf16 gave exactly the fp32 frames: it did not run in bf16"


def test_sampler_state_stays_float32_with_a_bf16_model(monkeypatch):
    pipe = load_pipeline("tiny-random", dtype=torch.bfloat16)
    seen = {"denoised": set(), "unet": set()}

    def recording(model, x, sigmas, callback=None, disable=True):
        seen["start"], seen["sigmas"] = x.dtype, sigmas.dtype
        out = sample_euler(model, x, sigmas, lambda i, d: seen["denoised"].add(d.dtype), disable)
        seen["end"] = out.dtype
        return out

    monkeypatch.setitem(pipeline_module.SOLVERS, "euler", recording)
    handle = pipe.model.unet.register_forward_pre_hook(lambda module, args: seen["unet"].add(args[0].dtype))
    try:
        pipe.predict(_frames(pipe), ["push the red block to the left"], steps=2)
    finally:
        handle.remove()
    assert seen["start"] == seen["end"] == torch.float32 and seen["sigmas"] == torch.float64
    assert seen["denoised"] == {torch.float32}
    assert seen["unet"] == {torch.bfloat16}


def test_sample_euler_keeps_its_state_dtype_when_the_model_returns_half():
    sigmas = karras_sigmas(5, 0.002, 80.0)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0].float()
    out = sample_euler(lambda x, s: (x / (1 + s[:, None] ** 2)).bfloat16(), x, sigmas)
    assert out.dtype == torch.float32


def test_adapters_and_dqformer_follow_a_half_precision_backbone():
    svd = build_tiny_svd(TINY_RANDOM_SVD, seed=0)
    for part in (svd.unet, svd.vae, svd.image_encoder):
        part.to(torch.bfloat16)
    text = TextEncoder(bundled_text_encoder_path(), TINY_RANDOM_AID.text_max_length)
    model = AIDModel(svd, text, TINY_RANDOM_AID)
    assert {p.dtype for p in model.trainable_parameters()} == {torch.bfloat16}
    frames = torch.rand(1, 1, 3, 64, 64) * 2 - 1
    cond = model.guidance_conditions(frames, ["push the red block left"], [["a", "b"]])
    x = torch.randn(3, 8, 4, 16, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        out = model.unet(torch.cat([x, cond.cond_latents], 2), torch.zeros(3, dtype=torch.bfloat16), cond.context,
                         cond.added_time_ids)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_half_precision_model_folder_loads_with_half_adapters(tiny_model, tmp_path):
    save_model_dir(tiny_model, tmp_path / "m")
    model = load_model_dir(tmp_path / "m", dtype=torch.bfloat16).model
    assert model.unet.unet.dtype == torch.bfloat16
    assert {p.dtype for p in model.trainable_parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("bad", ["fp64", "float16", torch.float64, torch.int8])
def test_unknown_dtypes_are_refused(bad):
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype(bad)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_pipeline("tiny-random", dtype=bad)


@pytest.mark.parametrize("chunk", [1, 10, 25, 100])
def test_chunked_decoding_equals_unchunked(tiny_model, chunk):
    latents = torch.randn(3, 8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    calls = []
    whole = tiny_model.decode_latents(latents)

    def counting(z):
        calls.append(z.shape[0])
        return tiny_model.vae_decode(z)

    chunked = tiny_model.decode_latents(latents, counting, decode_chunk_size=chunk)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    per_call = max(1, chunk // 10)  # 8 frames + the two repeated end latents per clip
    assert calls == [min(per_call, 3 - i) for i in range(0, 3, per_call)]


def test_pipeline_frames_do_not_depend_on_the_decode_chunk_size():
    pipe = load_pipeline("tiny-random")
    frames, instructions = _frames(pipe), ["push the red block to the left", "pick up the blue cup", "open it"]
    default = pipe.predict(frames, instructions, steps=2).astype(int)
    for chunk in (None, 1):  # batched convolutions round differently: at most one level apart
        assert np.abs(default - pipe.predict(frames, instructions, steps=2, decode_chunk_size=chunk)).max() <= 1
    with pytest.raises(ValueError, match="decode_chunk_size must be >= 1"):
        pipe.predict(frames, instructions, steps=2, decode_chunk_size=0)


@pytest.mark.slow
def test_compiled_unet_predicts_what_eager_predicts():
    eager = load_pipeline("tiny-random")
    compiled = load_pipeline("tiny-random", compile=True)
    assert compiled.info()["backend"]["details"]["compiled"] is True
    frames, run = _frames(eager), dict(steps=1, guidance_interval=None)  # one UNet shape: one compilation
    a = eager.predict(frames, ["push the red block to the left"], **run).astype(int)
    b = compiled.predict(frames, ["push the red block to the left"], **run).astype(int)
    assert np.abs(a - b).max() <= 2


def test_predict_command_runs_in_the_dtype_asked_for(tmp_path, capsys):
    """The line the command prints comes from the loaded pipeline (compiling is covered above)."""
    from foresight.cli import main
    from sim_bridge.common.imaging import write_png

    write_png(tmp_path / "ctx.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    main(["predict", "--model", "tiny-random", "--dtype", "bf16", "--frames", str(tmp_path / "ctx.png"),
          "--instruction", "push the red block left", "--steps", "1", "--out", str(tmp_path / "pred.gif")])
    out = capsys.readouterr().out
    assert "), bf16 on cpu" in out and "compiled" not in out and "predicted 1 x 7 frames at 64x64" in out
    assert (tmp_path / "pred.gif").is_file()


def test_bf16_on_a_cpu_without_bf16_instructions_warns_and_fp16_always_does():
    from foresight.dtypes import cpu_bf16_native, cpu_dtype_warning

    plain = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
    amx = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
    arm = "Features\t: fp asimd sve bf16 i8mm\n"
    assert (cpu_bf16_native(plain), cpu_bf16_native(amx), cpu_bf16_native(arm)) == (False, True, True)
    assert "no bf16 instructions" in cpu_dtype_warning("bf16", plain)
    assert cpu_dtype_warning("bf16", amx) is None and cpu_dtype_warning("fp32", plain) is None
    assert "emulated" in cpu_dtype_warning("fp16", amx)
