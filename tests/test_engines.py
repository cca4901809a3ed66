"""Backends: selection and fallback, refusing stale or tampered engines, whole-run parity, GPU paths.

The engines here come from tiny-random with random (non-zero) adapters and DQFormer, so the
adapter code paths are part of every graph checked. Whole sampling run tolerance: ONNX Runtime
vs PyTorch final frames differ by at most 2 uint8 levels (observed: 0 or 1, from float rounding
through 4 Euler steps and the VAE decoder).
"""

import json
import secrets
import shutil

import numpy as np
import pytest
import torch
from foresight.engines import (
    EngineRefused,
    OrtOptions,
    load_backend,
    onnxruntime_backend,
)
from foresight.engines.base import GRAPH_IO, first_frames
from foresight.engines.manifest import MANIFEST_NAME, read_manifest
from foresight.engines.onnxruntime_backend import OnnxRuntimeBackend
from foresight.export.build_engines import BuildConfig, build_engines
from foresight.export.onnx_export import graph_shapes, random_inputs
from foresight.export.validate import errors

from foresight.model_dir import LoadedModel, build_tiny_random
from foresight.pipeline import ForesightPipeline

pytestmark = pytest.mark.xdist_group("engines")  # under pytest -n: one process builds the module's graphs once

HAS_CUDA = torch.cuda.is_available()
try:
    import tensorrt  # noqa: F401

    HAS_TRT = True
except ImportError:
    HAS_TRT = False


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Numbers, not speed, are under test: one torch thread keeps a shared 2-core box fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _adapted_model(path=None):
    """tiny-random with its zero-initialised adapter outputs randomised (else adapters compute nothing)."""
    model = build_tiny_random().eval()
    if path is not None:
        model.load_aid_weights(path)
        return model
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.unet.adapters.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    weights = root / "aid.safetensors"
    _adapted_model().save_aid_weights(weights)
    out = root / "tiny-adapted"
    build_engines(BuildConfig(model="tiny-random", adapters=weights, out=out, precision="fp32", max_batch=2))
    return out, weights


@pytest.fixture(scope="module")
def model(engine_dir):
    return _adapted_model(engine_dir[1])


@pytest.fixture()
def copy_of(engine_dir, tmp_path):
    """A private copy of the engine folder to tamper with."""
    return shutil.copytree(engine_dir[0], tmp_path / "engines")


def test_auto_without_engines_is_torch(model):
    backend, info = load_backend(model)
    assert backend.name == "torch" and info["reason"] == "no engine folder given"
    assert set(info["skipped"]) == {"tensorrt", "onnxruntime"}


def test_named_engine_backend_needs_an_engine_folder(model):
    with pytest.raises(ValueError, match="needs an engine folder"):
        load_backend(model, "onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_backend(model, "openvino")


def test_auto_picks_onnxruntime_and_says_why_tensorrt_was_skipped(model, engine_dir):
    backend, info = load_backend(model, "auto", engine_dir[0])
    assert backend.name == "onnxruntime" and info["precision"] == "fp32"
    assert "CUDA" in info["skipped"]["tensorrt"] or "tensorrt" in info["skipped"]["tensorrt"]
    assert info["reason"].startswith("best available")


def _refused(model, folder, caplog, expect):
    with caplog.at_level("WARNING", logger="foresight.engines.select"):
        backend, info = load_backend(model, "auto", folder)
    assert backend.name == "torch", info
    assert expect in info["skipped"]["onnxruntime"], info["skipped"]
    assert "not used" in caplog.text  # the fallback is logged, never silent
    return info


def test_corrupt_graph_is_refused(model, copy_of, caplog):
    data = bytearray((copy_of / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy_of / "unet.onnx").write_bytes(bytes(data))
    _refused(model, copy_of, caplog, "corrupt or truncated")


def test_truncated_graph_is_refused(model, copy_of, caplog):
    path = copy_of / "dqformer.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    _refused(model, copy_of, caplog, "corrupt or truncated")


def test_missing_graph_is_refused(model, copy_of, caplog):
    (copy_of / "unet.onnx").unlink()
    _refused(model, copy_of, caplog, "missing")


def test_other_weights_are_refused(tiny_model, engine_dir, caplog):
    # tiny_model has zero adapter outputs: not the weights these engines were exported from
    _refused(tiny_model, engine_dir[0], caplog, "different weights")


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda m: m["versions"].update(diffusers="0.0.1"), "exported with diffusers 0.0.1"),
        (lambda m: m["graphs"]["unet"].update(source_sha256="0" * 64), "different weights"),
        (lambda m: m["graphs"]["unet"]["onnx"]["files"].update({"unet.onnx": "0" * 64}), "corrupt or truncated"),
        (lambda m: m["graphs"]["dqformer"]["onnx"].update(usable=False), "marked it unusable"),
        (lambda m: m["aid_config"].update(num_frames=14), "different model config"),
        (lambda m: m["shapes"].update(height=128), "built for 128x64"),
        (lambda m: m.update(format=99), "manifest format 99"),
        (lambda m: m.update(format=1), "manifest format 1"),  # before the VAE-decoder graph: rebuild
        (lambda m: m.update(format=2), "manifest format 2"),  # decoder without the end-latent repeats
        (lambda m: m["graphs"].pop("vae_decoder"), "vae_decoder (onnx): not in the manifest"),
    ],
)
def test_edited_manifest_is_refused(model, copy_of, caplog, edit, expect):
    manifest = json.loads((copy_of / MANIFEST_NAME).read_text())
    edit(manifest)
    (copy_of / MANIFEST_NAME).write_text(json.dumps(manifest))
    _refused(model, copy_of, caplog, expect)


def test_unreadable_manifest_is_refused(model, copy_of, caplog):
    (copy_of / MANIFEST_NAME).write_text('{"format": 1, "graphs": ')
    with pytest.raises(EngineRefused, match="not valid JSON"):
        read_manifest(copy_of)
    _refused(model, copy_of, caplog, "not valid JSON")


def test_first_frames_keeps_the_leading_frames():
    x = torch.arange(2 * 4).float().view(8, 1, 1)
    assert first_frames(x, 2, 3).flatten().tolist() == [0, 1, 2, 4, 5, 6]
    with pytest.raises(ValueError, match="num_frames must be in"):
        first_frames(x, 2, 5)


@pytest.mark.parametrize("optimization", ["basic", "all"])
def test_ort_options_do_not_change_results(model, engine_dir, optimization):
    files = {g: engine_dir[0] / f"{g}.onnx" for g in GRAPH_IO}
    backend = OnnxRuntimeBackend(files, 8, "cpu", OrtOptions(intra_op_threads=1, optimization=optimization))
    seed = secrets.randbits(31)
    x = random_inputs("unet", graph_shapes(model, 64, 64), 2, 5, torch.float32, torch.device("cpu"),
                      torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.unet(**x)
    assert errors(backend.unet(**x), ref)["max_rel"] < 1e-4, f"seed {seed}"


def test_a_model_of_svd_size_runs_every_session_lean_with_the_same_numbers(model, engine_dir, monkeypatch):
    files = {g: engine_dir[0] / f"{g}.onnx" for g in GRAPH_IO}
    options = OrtOptions(intra_op_threads=1)
    usual = OnnxRuntimeBackend(files, 8, "cpu", options)
    monkeypatch.setattr(onnxruntime_backend, "LARGE_GRAPH_BYTES", files["unet"].stat().st_size - 1)
    lean = OnnxRuntimeBackend(files, 8, "cpu", options)
    assert (usual.describe()["lean"], lean.describe()["lean"]) == (False, True)
    # one large graph makes the whole backend lean: the small VAE decoder's arena held 7.8 GB at full size
    for graphs, arena in ((usual._graphs, True), (lean._graphs, False)):
        assert {g.session.get_session_options().enable_cpu_mem_arena for g in graphs.values()} == {arena}
    latents = torch.randn(2, 8, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(lean.vae_decoder(latents), usual.vae_decoder(latents))


def test_whole_sampling_run_matches_pytorch(model, engine_dir):
    """Final frames of a full request (2 hypotheses, 3 guidance branches each) through ONNX Runtime."""
    backend, info = load_backend(model, "onnxruntime", engine_dir[0])
    assert info["name"] == "onnxruntime"
    loaded = LoadedModel.of(model)
    torch_pipe, ort_pipe = ForesightPipeline(loaded), ForesightPipeline(loaded, backend=backend, backend_info=info)
    frames = np.random.default_rng(secrets.randbits(31)).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    seed = secrets.randbits(31)
    kwargs = dict(steps=4, seed=seed, num_frames=6)
    ref = torch_pipe.predict(frames, ["push the red block left", "pick up the cup"], **kwargs).astype(int)
    out = ort_pipe.predict(frames, ["push the red block left", "pick up the cup"], **kwargs).astype(int)
    assert out.shape == ref.shape == (2, 5, 64, 64, 3)
    assert np.abs(out - ref).max() <= 2, f"seed {seed}: max diff {np.abs(out - ref).max()}"
    assert ort_pipe.info()["backend"]["name"] == "onnxruntime"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (ONNX Runtime CUDA provider with IO binding)")
def test_onnxruntime_cuda_io_binding_matches_pytorch(engine_dir):
    model = _adapted_model(engine_dir[1]).cuda()
    backend = OnnxRuntimeBackend({g: engine_dir[0] / f"{g}.onnx" for g in GRAPH_IO}, 8, "cuda")
    x = random_inputs("unet", graph_shapes(model, 64, 64), 3, 8, torch.float32, torch.device("cuda"),
                      torch.Generator().manual_seed(secrets.randbits(31)))
    with torch.no_grad():
        ref = model.unet(**x)
    out = backend.unet(**x)
    assert out.device.type == "cuda" and errors(out, ref)["max_rel"] < 1e-3


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engines_build_check_and_load(engine_dir, tmp_path, precision):
    out = tmp_path / precision
    manifest = build_engines(BuildConfig(model="tiny-random", adapters=engine_dir[1], out=out, precision=precision, max_batch=2))
    for graph in GRAPH_IO:
        assert manifest["graphs"][graph]["tensorrt"]["usable"], manifest["graphs"][graph]["tensorrt"]["check"]
    assert (out / "timing.cache").is_file()
    model = _adapted_model(engine_dir[1]).cuda()
    backend, info = load_backend(model, "auto", out)
    assert info["name"] == "tensorrt" and info["precision"] == precision
    graphed, _ = load_backend(model, "tensorrt", out, cuda_graph=True)
    x = random_inputs("unet", graph_shapes(model, 64, 64), 3, 8, torch.float32, torch.device("cuda"),
                      torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.unet(**x)
    plain = backend.unet(**x)
    replayed = [graphed.unet(**x) for _ in range(2)]
    tol = 1e-3 if precision == "fp32" else 3e-2
    assert errors(plain, ref)["max_rel"] < tol
    torch.testing.assert_close(replayed[1], plain, atol=1e-3, rtol=1e-3)


def test_engines_fit_a_config_that_differs_only_in_sampler_fields_or_new_defaults():
    """A manifest written before AIDConfig gained a field (here `lora`) still fits the same model,
    and a folder may change its default steps, scales or solver and keep its engines."""
    from dataclasses import fields, replace

    from foresight.engines.manifest import SAMPLER_FIELDS, same_graph_config

    from foresight.config import FrameDecoderConfig, SamplerSettings, UNetLoRAConfig
    from foresight.model_dir import TINY_RANDOM_AID

    assert set(SAMPLER_FIELDS) == {f.name for f in fields(SamplerSettings)}  # what only the sampler reads
    old = TINY_RANDOM_AID.to_dict()
    del old["lora"], old["decoder"]
    def fits(config) -> bool:
        return same_graph_config(old, config.to_dict())

    assert fits(TINY_RANDOM_AID) and fits(replace(TINY_RANDOM_AID, steps=2, guidance_text=1.0, solver="heun"))
    assert not fits(replace(TINY_RANDOM_AID, height=32, width=32))
    assert not fits(replace(TINY_RANDOM_AID, lora=UNetLoRAConfig(rank=4)))
    assert not fits(replace(TINY_RANDOM_AID, decoder=FrameDecoderConfig(channels=8, blocks=(1, 1, 1))))
    assert not same_graph_config(old | {"unknown_field": 1}, TINY_RANDOM_AID.to_dict())
    assert not same_graph_config(None, TINY_RANDOM_AID.to_dict())
