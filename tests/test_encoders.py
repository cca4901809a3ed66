"""Text and vision encoders."""

import torch

from foresight.models.encoders import TextEncoder, bundled_text_encoder_path


def test_text_encoder_pads_masks_and_caches():
    enc = TextEncoder(bundled_text_encoder_path(), max_length=12, cache_size=2)
    feats, mask = enc(["push the red block left", "pick up the cup", "push the red block left"])
    assert feats.shape == (3, 12, enc.width) and mask.dtype == torch.bool
    assert torch.equal(feats[0], feats[2])
    assert mask[1].sum() < 12 and mask[1, 0]  # short sentence: padded, first token real
    # more sentences than the cache holds, including one just evicted: same features, no error
    again, _ = enc(["open the drawer", "close the drawer", "push the red block left"])
    assert torch.allclose(again[2], feats[0], atol=1e-6)
    assert len(enc._cache) == 2


def clip_text_folder(folder):
    """A tiny random CLIP text model + tokenizer (one token per letter), saved like a real one."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {t: i for i, t in enumerate(letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"])}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    end = vocab["<|endoftext|>"]
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=32,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def test_clip_text_folder_loads_as_clip_and_casting_keeps_the_cache_right(tmp_path):
    from transformers import CLIPTextModel

    folder = clip_text_folder(tmp_path / "clip")
    enc = TextEncoder(folder, max_length=16)
    assert isinstance(enc.model, CLIPTextModel) and enc.width == 32
    feats, mask = enc(["push the block", "lift"])
    assert feats.shape == (2, 16, 32) and feats.dtype == torch.float32
    assert mask[0].sum() == len("pushtheblock") + 2 and mask[1].sum() == len("lift") + 2  # + start/end tokens
    enc.to(torch.bfloat16)  # a plain nn.Module cast: cached entries come back in the new dtype
    cached, _ = enc(["push the block"])
    fresh, _ = TextEncoder(folder, max_length=16).to(torch.bfloat16)(["push the block"])
    assert cached.dtype == fresh.dtype == torch.bfloat16
    assert torch.allclose(cached.float(), fresh.float(), atol=0.05)
