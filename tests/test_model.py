"""Adapters, per-frame conditions and DQFormer on tiny SVD-architecture models."""

import copy
import json

import pytest
import torch

from foresight.config import AdapterConfig, AIDConfig, DQFormerConfig
from foresight.models.adapters import AIDAdapters
from foresight.models.dqformer import DQFormer
from foresight.models.unet import AdaptedUNet
from foresight.params import count_real_config


def unet_inputs(unet, batch=2, frames=4, size=16, tokens=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config.cross_attention_dim
    return (
        torch.randn(batch, frames, 8, size, size, generator=g),
        torch.rand(batch, generator=g) * 2 - 1,
        torch.randn(batch, tokens, c, generator=g),
        torch.rand(batch, 3, generator=g) * 10,
    )


def test_zero_init_adapters_reproduce_stock_unet(tiny_svd):
    stock = copy.deepcopy(tiny_svd.unet).eval()
    adapted = AdaptedUNet(tiny_svd.unet, AdapterConfig(ratio=4, long_term_heads=2)).eval()
    sample, t, context, time_ids = unet_inputs(stock)
    frames = sample.shape[1]
    with torch.no_grad():
        expected = stock(sample, t, context, time_ids).sample
        got = adapted(sample, t, context.repeat_interleave(frames, dim=0), time_ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_trained_adapters_change_the_output(tiny_svd):
    adapted = AdaptedUNet(tiny_svd.unet, AdapterConfig(ratio=4, long_term_heads=2)).eval()
    sample, t, context, time_ids = unet_inputs(adapted.unet)
    per_frame = context.repeat_interleave(sample.shape[1], dim=0)
    with torch.no_grad():
        before = adapted(sample, t, per_frame, time_ids)
        for kind in ("spatial", "short_term", "long_term"):
            for adapter in getattr(adapted.adapters, kind).values():
                torch.nn.init.normal_(adapter.up.weight, std=0.05)
            after = adapted(sample, t, per_frame, time_ids)
            assert (after - before).abs().max() > 1e-4, f"{kind} adapters have no effect"
            before = after


def test_each_frame_sees_its_own_context(tiny_svd):
    adapted = AdaptedUNet(tiny_svd.unet, None).eval()
    sample, t, context, time_ids = unet_inputs(adapted.unet, batch=1, frames=4)
    per_frame = context.repeat_interleave(4, dim=0)
    changed = per_frame.clone()
    changed[2] += 1.0  # only frame 2's context differs
    with torch.no_grad():
        a = adapted(sample, t, per_frame, time_ids)
        b = adapted(sample, t, changed, time_ids)
    diff = (a - b).abs().flatten(2).amax(-1)[0]  # per frame
    assert diff[2] > 1e-3
    assert diff[2] == diff.max(), "the changed frame should move most"


def test_per_frame_context_shape_is_checked(tiny_svd):
    adapted = AdaptedUNet(tiny_svd.unet, None)
    sample, t, context, time_ids = unet_inputs(adapted.unet)
    with pytest.raises(ValueError, match="per frame"):
        adapted(sample, t, context, time_ids)


def test_adapter_placement_and_ratio_are_configurable(tiny_svd):
    only_up = AIDAdapters(tiny_svd.unet, AdapterConfig(ratio=4, placement=("up",), long_term_heads=2))
    everywhere = AIDAdapters(tiny_svd.unet, AdapterConfig(ratio=4, long_term_heads=2))
    narrow = AIDAdapters(tiny_svd.unet, AdapterConfig(ratio=16, long_term_heads=2))
    assert all(k.startswith("up_blocks") for k in only_up.short_term)
    assert len(only_up.short_term) < len(everywhere.short_term)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(narrow) < n(everywhere)
    with pytest.raises(ValueError, match="placement"):
        AdapterConfig(placement=("side",))


def test_dqformer_gives_per_frame_tokens():
    cfg = DQFormerConfig(width=32, text_dim=24, vision_dim=16, layers=2, heads=4, tokens_per_frame=5)
    dq = DQFormer(cfg, num_frames=6)
    g = torch.Generator().manual_seed(0)
    t1, t2, v = torch.randn(2, 7, 24, generator=g), torch.randn(2, 9, 24, generator=g), torch.randn(2, 10, 16, generator=g)
    m1, m2 = torch.ones(2, 7, dtype=torch.bool), torch.ones(2, 9, dtype=torch.bool)
    m1[:, 5:] = False
    out = dq(t1, m1, t2, m2, v)
    assert out.shape == (2 * 6, 7 + 5, 32)  # ME tokens (L1) + N_t DE tokens per frame
    frames = out.unflatten(0, (2, 6))
    torch.testing.assert_close(frames[:, 0, :7], frames[:, 3, :7])  # ME shared by all frames
    assert (frames[:, 0, 7:] - frames[:, 3, 7:]).abs().max() > 1e-3  # DE differs per frame
    assert dq(t1, m1, t2, m2, v, num_frames=4).shape == (8, 12, 32)
    # padding is masked: changing padded instruction tokens changes nothing
    t1b = t1.clone()
    t1b[:, 5:] += 5
    torch.testing.assert_close(dq(t1b, m1, t2, m2, v)[:, 7:], out[:, 7:])


def test_dqformer_ablations_drop_tokens():
    base = dict(width=16, text_dim=8, vision_dim=8, heads=2, tokens_per_frame=3)
    t1, t2, v = torch.randn(1, 4, 8), torch.randn(1, 6, 8), torch.randn(1, 5, 8)
    m1, m2 = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)
    assert DQFormer(DQFormerConfig(use_de=False, **base), 2)(t1, m1, t2, m2, v).shape == (2, 4, 16)
    assert DQFormer(DQFormerConfig(use_me=False, **base), 2)(t1, m1, t2, m2, v).shape == (2, 3, 16)
    with pytest.raises(ValueError):
        DQFormer(DQFormerConfig(use_me=False, use_de=False, **base), 2)


def test_sentence_token_is_the_pooled_instruction_and_ignores_padding():
    cfg = DQFormerConfig(width=16, text_dim=8, vision_dim=8, heads=2, tokens_per_frame=3, sentence_token=True)
    dq = DQFormer(cfg, 2)
    assert cfg.condition_tokens(4) == 1 + 4 + 3
    torch.nn.init.normal_(dq.sentence_proj.weight)
    g = torch.Generator().manual_seed(0)
    t1, t2, v = torch.randn(1, 4, 8, generator=g), torch.randn(1, 6, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    m1, m2 = torch.tensor([[True, True, True, False]]), torch.ones(1, 6, dtype=torch.bool)
    out = dq(t1, m1, t2, m2, v)
    assert out.shape == (2, 1 + 4 + 3, 16)
    tokens, mask = dq.instruction_tokens(t1, m1)
    pooled = torch.nn.functional.normalize(t1[:, :3].mean(1), dim=-1)
    torch.testing.assert_close(tokens[:, 0], dq.sentence_proj(pooled))
    assert mask.tolist() == [[True, True, True, True, False]]
    padded = t1.clone()
    padded[:, 3] += 7  # a padding token changes neither the sentence token nor anything after it
    changed = dq(padded, m1, t2, m2, v)
    torch.testing.assert_close(changed[:, :4], out[:, :4])
    torch.testing.assert_close(changed[:, 5:], out[:, 5:])
    torch.testing.assert_close(dq.instruction_tokens(padded, m1)[0][:, 0], tokens[:, 0])


def test_real_config_trainable_share_is_at_most_3_percent():
    counts = count_real_config()
    assert counts["unet"] > 1_500_000_000  # SVD's UNet is ~1.52B parameters
    assert counts["trainable"] == counts["adapters"] + counts["dqformer"]
    assert 0.005 < counts["trainable_share"] <= 0.03


def test_config_round_trip_and_validation():
    cfg = AIDConfig(num_frames=8, adapters=AdapterConfig(placement=("up",)), dqformer=DQFormerConfig(width=64),
                    guidance_interval=(0.3, 5.0))
    assert AIDConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="context_frames"):
        AIDConfig(num_frames=4, context_frames=4)
    with pytest.raises(ValueError, match="unknown"):
        AIDConfig.from_dict({"frames": 3})
    with pytest.raises(ValueError, match="guidance_interval"):
        AIDConfig(guidance_interval=(5.0, 0.3))


def test_deepcopy_rebinds_adapter_hooks(tiny_svd):
    adapted = AdaptedUNet(tiny_svd.unet, AdapterConfig(ratio=4, long_term_heads=2)).eval()
    clone = copy.deepcopy(adapted)
    sample, t, context, time_ids = unet_inputs(adapted.unet)
    per_frame = context.repeat_interleave(sample.shape[1], dim=0)
    with torch.no_grad():
        for adapter in clone.adapters.long_term.values():
            torch.nn.init.normal_(adapter.up.weight, std=0.05)
        original, copied = adapted(sample, t, per_frame, time_ids), clone(sample, t, per_frame, time_ids)
    assert (copied - original).abs().max() > 1e-4, "the copy must run its own adapters"
