"""SVD folders, the AID model folder and AID weight files."""

import shutil

import numpy as np
import pytest
import torch

from foresight.loading import check_svd_folder, load_svd
from foresight.model_dir import load_model, load_model_dir, save_model_dir


def test_svd_folder_round_trip(tiny_svd, tmp_path):
    tiny_svd.save_pretrained(tmp_path / "svd")
    loaded = load_svd(tmp_path / "svd")
    for part in ("unet", "vae", "image_encoder"):
        a, b = getattr(tiny_svd, part).state_dict(), getattr(loaded, part).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.feature_extractor.image_mean == tiny_svd.feature_extractor.image_mean


@pytest.mark.parametrize(
    "remove, named",
    [("vae", "vae/config.json"), ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model"),
     ("scheduler", "scheduler/scheduler_config.json"), ("image_encoder/model.safetensors", "image_encoder/model")],
)
def test_broken_svd_folder_names_the_missing_part(tiny_svd, tmp_path, remove, named):
    tiny_svd.save_pretrained(tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=named):
        load_svd(tmp_path)


def test_fp16_variant_is_found(tiny_svd, tmp_path):
    tiny_svd.save_pretrained(tmp_path)
    w = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_name("diffusion_pytorch_model.fp16.safetensors"))
    assert check_svd_folder(tmp_path)["unet"] == "fp16"


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_svd("/nonexistent/svd")


def test_aid_weights_round_trip_bit_identical(tiny_model, tmp_path):
    model = load_model("tiny-random").model
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_()
    model.save_aid_weights(tmp_path / "aid.safetensors")
    fresh = load_model("tiny-random").model
    fresh.load_aid_weights(tmp_path / "aid.safetensors")
    a, b = model.aid_state_dict(), fresh.aid_state_dict()
    assert a.keys() == b.keys() and any(k.startswith("adapters.") for k in a) and any(k.startswith("dqformer.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_aid_weights_from_another_config_are_refused(tiny_model, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_model.aid_state_dict().items()}
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        tiny_model.load_aid_weights(tmp_path / "bad.safetensors")


def test_model_folder_round_trip(tmp_path):
    model = load_model("tiny-random").model
    save_model_dir(model, tmp_path / "m", card={"name": "test"})
    folder = load_model_dir(tmp_path / "m")
    assert folder.card == {"name": "test"}
    assert folder.model.config == model.config
    sd_a, sd_b = model.state_dict(), folder.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_model_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="aid_config.json"):
        load_model_dir(tmp_path)


def test_embedded_model_loads_with_its_card():
    from foresight.pipeline import load_pipeline

    pipe = load_pipeline("tiny")
    card = pipe.info()["card"]
    assert card["name"] == "tiny" and "evaluation" in card and card["size_bytes"] <= 25 * 2**20
    assert (pipe.height, pipe.width, pipe.num_frames, pipe.context_frames) == (64, 64, 8, 1)
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    assert pipe.predict(frames, ["push the red block to the left"], steps=2).shape == (1, 7, 64, 64, 3)


def test_embedded_vae_decodes_clip_ends_as_well_as_the_middle():
    """The temporal decoder zero-pads the clip's ends; vae_decode repeats the end latents instead."""
    from foresight.pipeline import frames_to_tensor
    from sim_bridge.simulator.tabletop import make_episodes

    model = load_model("tiny").model
    episodes = make_episodes(range(1_000_000, 1_000_006), 64, 8, ("push", "pick_up"))
    video = torch.stack([frames_to_tensor(ep.frames) for ep in episodes]).float()
    decoded = model.decode_latents(model.encode_latents(video))
    error = (decoded - video).abs().mean(dim=(0, 2, 3, 4))
    middle = error[1:-1].mean()
    assert error[0] < 1.15 * middle and error[-1] < 1.15 * middle, error
