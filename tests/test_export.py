"""export/build_engines.py end to end on the tiny random model, and ONNX Runtime vs PyTorch parity.

Check inputs are fresh random on every run (the seed is in each failure message, so a failure
can be replayed). Tolerance for fp32 graphs: max |ort - torch| <= 1e-4 * max |torch|; observed
about 2e-6.
"""

import contextlib
import io
import json
import secrets
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from diffusers.models.activations import GEGLU
from foresight.engines import tensorrt_backend
from foresight.engines.base import GRAPH_IO, UNET_INPUTS
from foresight.engines.manifest import MANIFEST_NAME, file_sha256
from foresight.engines.onnxruntime_backend import OnnxRuntimeBackend
from foresight.export.build_engines import BuildConfig, main
from foresight.export.onnx_export import (
    DQFormerGraph,
    ExportAttentionProcessor,
    SplitGEGLU,
    export_form,
    graph_shapes,
    random_inputs,
)
from foresight.export.validate import errors

from foresight.pipeline import ENGINE_TORCH_THREADS, load_pipeline

pytestmark = pytest.mark.xdist_group("export")  # under pytest -n: one process builds the module's graphs once

RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Numbers, not speed, are under test: one torch thread keeps a shared 2-core box fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Engines of tiny-random (fp32, up to 2 hypotheses) built through the command-line entry point."""
    out = tmp_path_factory.mktemp("engines")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        manifest = main(["--model", "tiny-random", "--out", str(out), "--precision", "fp32", "--max-batch", "2"])
    return out, manifest, printed.getvalue()


def test_build_writes_checked_graphs_and_manifest(built):
    out, manifest, _ = built
    on_disk = json.loads((out / MANIFEST_NAME).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["precision"] == "fp32" and manifest["gpu"] is None
    assert manifest["versions"]["tensorrt"] is None
    assert manifest["tensorrt_skipped"]  # says why: no CUDA GPU / no tensorrt here
    assert manifest["shapes"]["batch"] == {"min": 1, "opt": 3, "max": 6}
    assert manifest["shapes"]["frames"] == {"min": 2, "max": 8}
    assert set(manifest["graphs"]) == set(GRAPH_IO)
    for graph in GRAPH_IO:
        entry = manifest["graphs"][graph]
        assert entry["onnx"]["usable"] and entry["onnx"]["check"]["max_rel"] < RTOL
        assert len(entry["source_sha256"]) == 64
        for name, digest in entry["onnx"]["files"].items():
            assert file_sha256(out / name) == digest
        assert "tensorrt" not in entry
    assert manifest["graphs"]["unet"]["inputs"]["sample"]["shape"][:2] == ["batch", "frames"]
    assert manifest["graphs"]["vae_decoder"]["outputs"]["frames"]["shape"] == ["batch", "frames", 3, 64, 64]
    assert manifest["graphs"]["vae_encoder"]["outputs"]["latents"]["shape"] == ["batch", "frames", 4, 16, 16]


def test_fp16_build_writes_fp16_unet_and_vae_decoder_graphs(tmp_path):
    """The graphs TensorRT builds FP16 engines from, checked here by ONNX Runtime on the CPU."""
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = main(["--model", "tiny-random", "--out", str(tmp_path), "--precision", "fp16"])
    graphs = manifest["graphs"]
    assert {g: e["precision"] for g, e in graphs.items()} == {"unet": "fp16", "vae_decoder": "fp16",
                                                               "vae_encoder": "fp32", "dqformer": "fp32"}
    assert graphs["vae_decoder"]["inputs"]["latents"]["dtype"] == "float16"
    for entry in graphs.values():
        assert entry["onnx"]["usable"] and entry["onnx"]["check"]["max_rel"] < 3e-2


def _op_types(path) -> dict[str, set[str]]:
    types: dict[str, set[str]] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        types.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
    return types


@pytest.mark.skipif(tensorrt_backend.missing_reason() is None, reason="with TensorRT the default is the standard form")
def test_default_build_without_tensorrt_fuses_the_unets_attention(built, tiny_model):
    """Without TensorRT the UNet takes ONNX Runtime's MultiHeadAttention; it passed its check above."""
    out, manifest, _ = built
    assert manifest["graphs"]["unet"]["onnx"]["attention"] == "onnxruntime"
    assert _op_types(out / "unet.onnx")["com.microsoft"] == {"MultiHeadAttention"}
    fused = sum(node.op_type == "MultiHeadAttention" for node in onnx.load(str(out / "unet.onnx")).graph.node)
    with export_form(tiny_model.unet, "onnxruntime") as swapped:
        assert swapped == fused > 0  # every attention of the UNet's transformer blocks
    assert not any(isinstance(getattr(m, "processor", None), ExportAttentionProcessor) for m in tiny_model.unet.modules())


@pytest.mark.parametrize("attention", ["onnx", "onnxruntime"])
def test_export_form_computes_what_the_stock_unet_computes(tiny_model, attention):
    """The rewrites (per-clip temporal cross-attention, split GEGLU) are exact, and undone on exit."""
    shapes = graph_shapes(tiny_model, 64, 64)
    seed = secrets.randbits(31)
    x = random_inputs("unet", shapes, 2, 5, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        stock = tiny_model.unet(**x)
        with export_form(tiny_model.unet, attention):
            assert any(isinstance(m, SplitGEGLU) for m in tiny_model.unet.modules())
            rewritten = tiny_model.unet(**x)
            per_clip = {m.processor.positions for m in tiny_model.unet.modules()
                        if isinstance(getattr(m, "processor", None), ExportAttentionProcessor)} - {None}
        after = tiny_model.unet(**x)
    assert errors(rewritten, stock)["max_rel"] < RTOL, f"seed {seed}"
    assert torch.equal(after, stock)
    assert per_clip and per_clip <= {shapes.latent_height * shapes.latent_width // 4**level for level in range(4)}
    assert not any(isinstance(m, SplitGEGLU) for m in tiny_model.unet.modules())
    assert any(isinstance(m, GEGLU) for m in tiny_model.unet.modules())


def test_standard_attention_build_has_only_onnx_operators(tmp_path):
    """The form TensorRT parses: no contrib operators, checked by ONNX Runtime like the fused one."""
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = main(["--model", "tiny-random", "--out", str(tmp_path), "--attention", "onnx"])
    unet = manifest["graphs"]["unet"]["onnx"]
    assert unet["attention"] == "onnx" and unet["usable"] and unet["check"]["max_rel"] < RTOL
    assert set(_op_types(tmp_path / "unet.onnx")) == {"ai.onnx"}
    with pytest.raises(ValueError, match="attention must be"):
        BuildConfig(model="tiny-random", out=tmp_path, attention="fused")


def test_build_prints_errors_and_the_tensorrt_skip(built):
    printed = built[2]
    assert "unet     onnx vs pytorch" in printed and "max rel" in printed
    assert "TensorRT skipped: no CUDA GPU" in printed or "TensorRT skipped: tensorrt is not installed" in printed


@pytest.fixture(scope="module")
def ort_and_model(built, tiny_model):
    out = built[0]
    backend = OnnxRuntimeBackend({g: out / f"{g}.onnx" for g in GRAPH_IO}, 8, "cpu")
    return backend, tiny_model, graph_shapes(tiny_model, 64, 64)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("frames", [3, 8])
def test_unet_onnxruntime_matches_pytorch(ort_and_model, batch, frames):
    backend, model, shapes = ort_and_model
    seed = secrets.randbits(31)
    x = random_inputs("unet", shapes, batch, frames, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.unet(*(x[n] for n in UNET_INPUTS))
    out = backend.unet(*(x[n] for n in UNET_INPUTS))
    assert out.shape == ref.shape == (batch, frames, 4, 16, 16)
    err = errors(out, ref)
    assert err["max_rel"] < RTOL, f"seed {seed}: {err}"


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frames", [2, 8])
def test_vae_decoder_onnxruntime_matches_pytorch(ort_and_model, batch, frames):
    backend, model, shapes = ort_and_model
    seed = secrets.randbits(31)
    x = random_inputs("vae_decoder", shapes, batch, frames, torch.float32, torch.device("cpu"),
                      torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.vae_decode(**x)
    out = backend.vae_decoder(**x)
    assert out.shape == ref.shape == (batch, frames, 3, 64, 64)
    err = errors(out, ref)
    assert err["max_rel"] < RTOL, f"seed {seed}: {err}"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("frames", [3, 8])
def test_dqformer_onnxruntime_matches_pytorch(ort_and_model, batch, frames):
    backend, model, shapes = ort_and_model
    seed = secrets.randbits(31)
    x = random_inputs("dqformer", shapes, batch, 8, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.dqformer(**x, num_frames=frames)
        full = DQFormerGraph(model.dqformer)(**x)
    out = backend.dqformer(**x, num_frames=frames)
    assert out.shape == ref.shape == (batch * frames, full.shape[1], 32)
    err = errors(out, ref)
    assert err["max_rel"] < RTOL, f"seed {seed}: {err}"


def test_load_pipeline_uses_matching_engines(built, monkeypatch):
    out = built[0]
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this worker's threads for later tests
    pipe = load_pipeline("tiny-random", backend="auto", engines=str(out))
    info = pipe.info()["backend"]
    assert info["name"] == "onnxruntime" and info["requested"] == "auto"
    assert "tensorrt" in info["skipped"] and info["details"]["providers"] == ["CPUExecutionProvider"]
    # the engine runs the UNet: PyTorch's copy is released, and requests never needed it
    assert all(p.is_meta for p in pipe.model.unet.parameters())
    frames = np.full((1, 64, 64, 3), 100, np.uint8)
    torch_frames = load_pipeline("tiny-random").predict(frames, ["lift the cube"], steps=2)
    assert np.abs(pipe.predict(frames, ["lift the cube"], steps=2).astype(int) - torch_frames).max() <= 2


def test_load_pipeline_threads_reach_onnxruntime_and_torch(built):
    """In a fresh process: ONNX Runtime's thread pool is per process, and this one already has one.
    ONNX Runtime gets the threads; PyTorch, which only runs the encoders beside it, gets one."""
    script = (
        "import json, sys, torch; from foresight.pipeline import load_pipeline; "
        "pipe = load_pipeline('tiny-random', backend='onnxruntime', engines=sys.argv[1], threads=2); "
        "print(json.dumps([pipe.info()['backend']['details']['intra_op_threads'], torch.get_num_threads()]))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(built[0])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [2, ENGINE_TORCH_THREADS]
    with pytest.raises(ValueError, match="threads must be >= 0"):
        load_pipeline("tiny-random", threads=-1)
