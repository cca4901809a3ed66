"""Training clips streamed from any episode source, with constant memory.

episode set (simulator by seed, or recorded episodes found by `sim_bridge.data.readers`) -> clip
sampler (random window, frame stride) -> `ClipStream`, an endless IterableDataset.

Sample number s of the whole run (over steps, processes and workers) decides its episode and
window from `default_rng([seed, s])`, so the stream is the same whatever the number of
DataLoader workers, each process reads its own share, and a resumed run continues exactly where
it stopped. Episodes are loaded per clip and dropped after it: nothing grows with the dataset.
"""

from __future__ import annotations

import logging
from itertools import count
from typing import Iterator, Sequence

import numpy as np
import torch

from foresight.states import StateDecomposer
from foresight.training.wording import reword
from sim_bridge.common.imaging import fit_frames
from sim_bridge.data.episode import Episode
from sim_bridge.simulator.tasks import TRAIN_SEEDS

logger = logging.getLogger(__name__)



class SimulatorEpisodes:
    """Tabletop episodes generated on demand from seeds [0, n): nothing is stored."""

    def __init__(self, n: int, size: int, num_frames: int, kinds: tuple[str, ...], first_seed: int = 0) -> None:
        if first_seed < TRAIN_SEEDS.start or first_seed + n > TRAIN_SEEDS.stop:
            raise ValueError(f"training seeds [{first_seed}, {first_seed + n}) leave the simulator's training range "
                             f"[{TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop})")
        if n < 1:
            raise ValueError(f"need at least one simulator episode, got {n}")
        self.n, self.size, self.num_frames, self.kinds, self.first_seed = n, size, num_frames, kinds, first_seed

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> Episode:
        from sim_bridge.simulator.tabletop import make_episode

        return make_episode(self.first_seed + i, size=self.size, num_frames=self.num_frames, kinds=self.kinds)


class RecordedEpisodes:
    """Episodes on disk, any format `find_episodes` knows; only their locations are held."""

    def __init__(self, path: str, camera: int = 0) -> None:
        from sim_bridge.data.readers import find_episodes

        self.sources = [s for s in find_episodes(path) if s.has_camera(camera)]
        if not self.sources:
            raise ValueError(f"{path}: no episode recorded camera {camera}")
        self.camera = camera

    def __len__(self) -> int:
        return len(self.sources)

    def load(self, i: int) -> Episode:
        return self.sources[i].load(self.camera)


def clip_indices(length: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of `num_frames` frames `stride` apart; a shorter episode gets a smaller
    stride, and one with fewer frames than `num_frames` repeats its last frame."""
    stride = max(1, min(stride, (length - 1) // max(1, num_frames - 1)))
    span = stride * (num_frames - 1) + 1
    start = int(rng.integers(0, max(1, length - span + 1)))
    return np.minimum(start + stride * np.arange(num_frames), length - 1)


class ClipStream(torch.utils.data.IterableDataset):
    """Endless (video (N, 3, H, W) in [-1, 1], instruction, states) for one process of `world`.

    Batch b of this process holds samples (b * world + rank) * batch + [0, batch); DataLoader
    worker w produces batches b = start_batch + w, + workers, ..., which the DataLoader hands
    out in order.
    """

    def __init__(self, episodes: SimulatorEpisodes | RecordedEpisodes, decomposer: StateDecomposer,
                 num_frames: int, height: int, width: int, stride: int, batch: int, seed: int,
                 rank: int = 0, world: int = 1, start_batch: int = 0, reword: float = 0.0) -> None:
        super().__init__()
        self.episodes, self.decomposer, self.reword = episodes, decomposer, reword
        self.num_frames, self.height, self.width, self.stride = num_frames, height, width, stride
        self.batch, self.seed, self.rank, self.world, self.start_batch = batch, seed, rank, world, start_batch

    def clip(self, sample: int) -> tuple[torch.Tensor, str, list[str]]:
        rng = np.random.default_rng([self.seed, sample])
        for _ in range(100):
            episode = self.episodes.load(int(rng.integers(len(self.episodes))))
            if episode.instruction:
                break
        else:
            raise ValueError("100 episodes in a row had no instruction; is this an instruction-labelled dataset?")
        frames = fit_frames(episode.frames[clip_indices(len(episode.frames), self.num_frames, self.stride, rng)],
                            self.height, self.width)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        instruction = episode.instruction
        if self.reword and rng.random() < self.reword:  # no draw at 0, so older runs replay unchanged
            instruction = reword(instruction, rng, colours=episode.object_colors)
        return video, instruction, self.decomposer(instruction, frames[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, list[str]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for b in count(self.start_batch + worker, workers):
            first = (b * self.world + self.rank) * self.batch
            for sample in range(first, first + self.batch):
                yield self.clip(sample)


def collate(items: Sequence[tuple[torch.Tensor, str, list[str]]]) -> tuple[torch.Tensor, list[str], list[list[str]]]:
    return torch.stack([v for v, _, _ in items]), [s for _, s, _ in items], [st for _, _, st in items]


def clip_loader(stream: ClipStream, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(stream, batch_size=stream.batch, num_workers=workers, collate_fn=collate,
                                       persistent_workers=workers > 0)
