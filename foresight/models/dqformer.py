"""DQFormer: the dual-query transformer that turns text and image features into per-frame conditions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foresight.config import DQFormerConfig


class Attention(nn.Module):
    """Pre-norm multi-head attention with a residual; keys may carry a padding mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """x (B, Lq, C); context (B, Lk, C) or None for self-attention; mask (B, Lk), True = attend."""
        h = self.norm(x)
        q = self.q(h)
        k, v = self.kv(h if context is None else context).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        attn_mask = None if mask is None else mask[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return x + self.out(a.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, width: int, mult: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, mult * width), nn.GELU(), nn.Linear(mult * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class MELayer(nn.Module):
    """Multimodal embedding: words attend to each other, then to image regions."""

    def __init__(self, width: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.self_attn = Attention(width, heads)
        self.cross_attn = Attention(width, heads)
        self.ffn = FeedForward(width, ffn_mult)

    def forward(self, t1, t1_mask, v):
        h = self.self_attn(t1, mask=t1_mask)
        h = self.cross_attn(h, v)
        return self.ffn(h)


class DELayer(nn.Module):
    """Decomposed embedding: frame queries read the instruction, then the state descriptions."""

    def __init__(self, width: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.instruction_attn = Attention(width, heads)
        self.states_attn = Attention(width, heads)
        self.ffn = FeedForward(width, ffn_mult)

    def forward(self, q, t1, t1_mask, t2, t2_mask):
        q = self.instruction_attn(q, t1, t1_mask)
        q = self.states_attn(q, t2, t2_mask)
        return self.ffn(q)


class DQFormer(nn.Module):
    """Builds MCondition for every frame: [ME tokens ; DE tokens of that frame].

    Inputs are raw encoder features; the projections to the UNet's cross-attention width are
    part of the DQFormer (they are trained with it). With a branch disabled (an ablation) its
    tokens are left out, so the context is shorter.
    """

    def __init__(self, config: DQFormerConfig, num_frames: int) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"DQFormer width {config.width} is not divisible by heads {config.heads}")
        if not (config.use_me or config.use_de):
            raise ValueError("DQFormer needs at least one of the ME and DE branches")
        self.config = config
        self.num_frames = num_frames
        c = config.width
        self.text_proj = nn.Linear(config.text_dim, c)
        if config.sentence_token:
            # zero-initialised: a model trained without it starts out unchanged when it is added
            self.sentence_proj = nn.Linear(config.text_dim, c)
            nn.init.zeros_(self.sentence_proj.weight)
            nn.init.zeros_(self.sentence_proj.bias)
        self.vision_proj = nn.Linear(config.vision_dim, c)
        if config.use_me:
            self.me_layers = nn.ModuleList(MELayer(c, config.heads, config.ffn_mult) for _ in range(config.layers))
        if config.use_de:
            self.queries = nn.Parameter(torch.randn(num_frames * config.tokens_per_frame, c) * c**-0.5)
            self.de_layers = nn.ModuleList(DELayer(c, config.heads, config.ffn_mult) for _ in range(config.layers))
        self.norm = nn.LayerNorm(c)

    def forward(
        self,
        t1: torch.Tensor,
        t1_mask: torch.Tensor,
        t2: torch.Tensor,
        t2_mask: torch.Tensor,
        v: torch.Tensor,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """t1 (B, L1, Dt) instruction, t2 (B, L2, Dt) state descriptions, masks bool (B, L),
        v (B, Lv, Dv) image features -> MCondition (B*F, L, C), F = num_frames (default N)."""
        frames = self.num_frames if num_frames is None else num_frames
        batch = t1.shape[0]
        t1, t1_mask = self.instruction_tokens(t1, t1_mask)
        parts = []
        if self.config.use_me:
            me = t1
            vis = self.vision_proj(v)
            for layer in self.me_layers:
                me = layer(me, t1_mask, vis)
            parts.append(me[:, None].expand(-1, frames, -1, -1))
        if self.config.use_de:
            t2 = self.text_proj(t2)
            q = self.queries[None].expand(batch, -1, -1)
            for layer in self.de_layers:
                q = layer(q, t1, t1_mask, t2, t2_mask)
            # 1. split the N * N_t queries per frame; 2. keep the first `frames` frames
            parts.append(q.unflatten(1, (self.num_frames, -1))[:, :frames])
        return self.norm(torch.cat(parts, dim=2)).flatten(0, 1)

    def instruction_tokens(self, t1: torch.Tensor, t1_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected instruction tokens and mask, led by the sentence token where configured."""
        tokens = self.text_proj(t1)
        if not self.config.sentence_token:
            return tokens, t1_mask
        weights = t1_mask.to(t1.dtype)[..., None]
        pooled = (t1 * weights).sum(1) / weights.sum(1).clamp(min=1)
        sentence = self.sentence_proj(F.normalize(pooled, dim=-1))[:, None]
        return torch.cat([sentence, tokens], 1), F.pad(t1_mask, (1, 0), value=True)
