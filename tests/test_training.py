"""The AID training step: only adapters + DQFormer move."""

import torch

from foresight.model_dir import build_tiny_random
from foresight.training.loss import DropoutConfig, aid_loss, make_optimizer


def test_training_step_updates_only_trainable_parameters():
    model = build_tiny_random()
    trainable = {id(p) for p in model.trainable_parameters()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trainable}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in trainable}
    assert frozen and before
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    opt = make_optimizer(model, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 8, 3, 64, 64, generator=g) * 2 - 1
    for _ in range(2):
        loss = aid_loss(model, video, ["push the red block left", "pick up the cup"],
                        [["a", "b"], ["c", "d"]], generator=g)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(frozen[n], params[n]) for n in frozen), "a frozen parameter moved"
    ups = [n for n in before if n.endswith("up.weight")]
    assert ups and all(not torch.equal(before[n], params[n]) for n in ups), "zero-init adapters did not learn"
    assert not torch.equal(before["dqformer.queries"], params["dqformer.queries"])


def test_cross_attention_is_trainable_when_asked():
    from dataclasses import replace

    from foresight.loading import build_tiny_svd
    from foresight.model_dir import TINY_RANDOM_AID, TINY_RANDOM_SVD
    from foresight.models.aid import AIDModel
    from foresight.models.encoders import TextEncoder, bundled_text_encoder_path

    cfg = replace(TINY_RANDOM_AID, train_cross_attention=True)
    model = AIDModel(build_tiny_svd(TINY_RANDOM_SVD), TextEncoder(bundled_text_encoder_path(), 16), cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".attn2." in n for n in names)
    assert not any(".attn1." in n and "unet.unet" in n for n in names)
    assert any(k.startswith("unet.") for k in model.aid_state_dict())


def test_condition_dropout_rates():
    g = torch.Generator().manual_seed(0)
    drop_frames, drop_text = DropoutConfig(text=0.1, frames=0.2, both=0.3).sample(100_000, g)
    both = (drop_frames & drop_text).float().mean().item()
    assert abs(both - 0.3) < 0.01
    assert abs(drop_text.float().mean().item() - 0.4) < 0.01
    assert abs(drop_frames.float().mean().item() - 0.5) < 0.01


def test_vae_scaling_factor_makes_latents_unit_variance():
    from foresight.loading import build_tiny_svd
    from foresight.training.data import ClipDataset, tabletop_episodes
    from foresight.training.recipe import calibrate_scaling_factor

    vae = build_tiny_svd(seed=0).vae.eval()
    data = ClipDataset(tabletop_episodes(range(6), 64, 8, ("push",)), 8, 64, 64)
    scale = calibrate_scaling_factor(vae, data)
    assert vae.config.scaling_factor == scale != 0.18215
    video, _ = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        z = vae.encode(video.flatten(0, 1)).latent_dist.mode() * vae.config.scaling_factor
    assert abs(z.std().item() - 1.0) < 1e-3
