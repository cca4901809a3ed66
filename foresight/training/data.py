"""One dataset interface for training: clips of N frames + instruction, from any episode source.

A source is any iterable of `sim_bridge.episode.Episode` (the tabletop simulator here; a
BridgeData reader or anything else later). Clips are N frames sampled evenly over the episode,
fitted to the model resolution the same way the node fits incoming frames.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from foresight.imaging import fit_frames
from sim_bridge.episode import Episode


class ClipDataset(torch.utils.data.Dataset):
    """Episodes held in memory as uint8 clips (n, N, H, W, 3) with their instructions."""

    def __init__(self, episodes: Iterable[Episode], num_frames: int, height: int, width: int) -> None:
        clips, instructions = [], []
        for ep in episodes:
            if ep.instruction is None:
                continue
            idx = np.linspace(0, len(ep.frames) - 1, num_frames).round().astype(int)
            clips.append(fit_frames(ep.frames[idx], height, width))
            instructions.append(ep.instruction)
        if not clips:
            raise ValueError("no episodes with an instruction in the training source")
        self.clips = np.stack(clips)
        self.instructions = instructions

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        """-> video (N, 3, H, W) in [-1, 1], instruction."""
        return torch.from_numpy(self.clips[i]).permute(0, 3, 1, 2).float() / 127.5 - 1, self.instructions[i]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        items = [self[int(i)] for i in indices]
        return torch.stack([v for v, _ in items]), [s for _, s in items]


def tabletop_episodes(
    seeds: Iterable[int], size: int, num_frames: int, kinds: tuple[str, ...], paraphrase: bool = False
) -> Iterator[Episode]:
    """Simulated episodes, one per seed, with a progress bar."""
    from sim_bridge.tabletop import make_episode

    seeds = list(seeds)
    for seed in tqdm(seeds, desc="simulating episodes", leave=False):
        yield make_episode(seed, size=size, num_frames=num_frames, paraphrase=paraphrase, kinds=kinds)
