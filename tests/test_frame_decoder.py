"""The frame decoder (`AIDConfig.decoder`): a model folder that carries one decodes with it, the
`decoder` stage trains it alone against the temporal decoder, and its VAE-decoder graph exports."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from foresight.config import FrameDecoderConfig
from foresight.loading import build_tiny_svd
from foresight.model_dir import TINY_RANDOM_AID, TINY_RANDOM_SVD, load_model_dir, save_model_dir
from foresight.models.aid import AIDModel
from foresight.models.encoders import TextEncoder, bundled_text_encoder_path
from foresight.training.config import load_jobs
from foresight.training.stages import DecoderStage, resolve_config

pytestmark = [pytest.mark.xdist_group("frame-decoder"), pytest.mark.usefixtures("one_torch_thread")]

DECODER = FrameDecoderConfig(channels=8, blocks=(1, 1, 1))  # tiny-random's VAE has three levels


@pytest.fixture(scope="module")
def folder(tiny_random_folder) -> Path:
    """tiny-random's folder: no frame decoder."""
    return tiny_random_folder


def _with_decoder(seed: int = 0, decoder: FrameDecoderConfig = DECODER) -> AIDModel:
    text = TextEncoder(bundled_text_encoder_path(), TINY_RANDOM_AID.text_max_length)
    torch.manual_seed(seed)
    return AIDModel(build_tiny_svd(TINY_RANDOM_SVD, seed=0), text, replace(TINY_RANDOM_AID, decoder=decoder))


def job(tmp: Path, init: Path, name: str, steps: int = 3) -> Path:
    data = {"stage": "decoder", "out": str(tmp / name), "checkpoint_every": 1, "log_every": 1,
            "model": {"init": str(init), "aid": replace(TINY_RANDOM_AID, decoder=DECODER).to_dict()},
            "data": {"source": "simulator", "episodes": 16},
            "optim": {"steps": steps, "batch": 2, "lr": 1e-3, "warmup": 1},
            "validation": {"every": steps, "source": "simulator", "episodes": 1, "steps": 1}}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_the_frame_decoder_decodes_each_frame_alone_and_round_trips_a_folder(folder, tmp_path):
    model = _with_decoder().eval()
    with pytest.raises(ValueError, match="the VAE has 3"):
        _with_decoder(decoder=FrameDecoderConfig(blocks=(1, 1)))
    z = torch.randn(2, 8, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        whole = model.vae_decode(z)
        one_by_one = torch.cat([model.vae_decode(z[:, i:i + 1]) for i in range(8)], dim=1)
        assert whole.shape == (2, 8, 3, 64, 64)
        torch.testing.assert_close(whole, one_by_one, rtol=1e-5, atol=1e-5)  # no frame sees another
        assert not torch.allclose(whole, model.temporal_decode(z), atol=0.1)  # not the temporal decoder
        frames = model.decode_latents(z * model.vae.config.scaling_factor, decode_chunk_size=8)  # a clip per call
    torch.testing.assert_close(frames, whole.clamp(-1, 1))
    seen = []
    with torch.no_grad():  # the context frames a prediction drops are never decoded
        after = model.decode_latents(z * model.vae.config.scaling_factor, lambda x: seen.append(x.shape[1]) or
                                     model.vae_decode(x), skip=1)
    assert seen == [7]
    torch.testing.assert_close(after, frames[:, 1:])
    with pytest.raises(ValueError, match="skip must be in"):
        model.decode_latents(z, skip=8)
    save_model_dir(model, tmp_path / "model", svd=str(folder.parent / "svd"))
    assert any(k.startswith("decoder.") for k in load_file(str(tmp_path / "model" / "aid.safetensors")))
    loaded = load_model_dir(tmp_path / "model").model.eval()
    assert loaded.config.decoder == DECODER and not any(p.requires_grad for p in loaded.decoder.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded.vae_decode(z), whole)


def test_the_decoder_stage_lowers_its_loss_on_a_fixed_batch(folder, tmp_path):
    (cfg,) = load_jobs(str(job(tmp_path, folder, "fixed")))
    stage = DecoderStage(resolve_config(cfg))
    params = [p for p in stage.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in stage.model.decoder.parameters()}  # the decoder alone
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    video = torch.rand(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    losses = []
    for _ in range(12):
        loss = stage(video, ["a", "b"], [["a", "b"], ["c", "d"]], torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_decoder_run_resumes_bit_identically_and_changes_only_the_decoder(folder, tmp_path, caplog, run_job):
    caplog.set_level(logging.INFO, logger="foresight.training.trainer")
    whole = run_job(job(tmp_path, folder, "whole"))
    assert "step 3 validation: follow_rate" in caplog.text  # the model samples and decodes with it
    cut = job(tmp_path, folder, "cut")
    run_job(cut)
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "checkpoint-3")  # as if killed after step 2
    shutil.rmtree(tmp_path / "cut" / "model")
    resumed = run_job(cut)
    a, b = load_file(str(whole / "aid.safetensors")), load_file(str(resumed / "aid.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = load_file(str(folder / "aid.safetensors"))
    assert a.keys() - before.keys() == {k for k in a if k.startswith("decoder.")} != set()
    assert all(torch.equal(a[k], before[k]) for k in before)  # nothing but the decoder changed
    ckpt = load_file(str(tmp_path / "whole" / "checkpoints" / "checkpoint-3" / "trainable.safetensors"))
    assert ckpt and all(k.startswith("model.decoder.") for k in ckpt)
    written = json.loads((whole / "aid_config.json").read_text())
    assert written["aid"]["decoder"] == {"channels": 8, "blocks": [1, 1, 1]}
    assert written["svd"] == str(folder.parent / "svd") and written["states"] == "template"


def test_a_folder_with_a_frame_decoder_predicts_and_its_decoder_graph_exports(folder, tmp_path):
    from foresight.export.build_engines import main
    from foresight.pipeline import load_pipeline

    save_model_dir(_with_decoder(seed=3), tmp_path / "model", svd=str(folder.parent / "svd"))
    pipe = load_pipeline(str(tmp_path / "model"))
    frames = np.full((1, 64, 64, 3), 90, np.uint8)
    video = pipe.predict(frames, ["lift the cube"], seed=0, steps=1)
    assert video.shape == (1, 7, 64, 64, 3)  # the N - K predicted frames
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "engines"), "--precision",
                         "fp32", "--max-batch", "1"])
    decoder = manifest["graphs"]["vae_decoder"]
    assert decoder["onnx"]["usable"] and decoder["onnx"]["check"]["max_rel"] < 1e-4
    # the graph is checked down to the one frame a prediction of K + 1 frames hands it
    assert manifest["shapes"]["decoder_frames"] == {"min": 1, "max": 8}
