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
