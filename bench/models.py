"""The model under test, fresh copies of its SVD parts, and same-architecture variants for scaling.

AdaptedUNet registers forward hooks on the SVD UNet it wraps, so the stock diffusers pipeline
and every scaling variant get their own freshly loaded (or freshly built) SVD parts, never the
ones inside a loaded AIDModel.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableVideoDiffusionPipeline

from foresight.config import AIDConfig
from foresight.loading import SVDComponents, build_tiny_svd, load_svd
from foresight.model_dir import (
    EMBEDDED,
    EMBEDDED_DIR,
    TINY_RANDOM_AID,
    TINY_RANDOM_SVD,
    LoadedModel,
    load_model,
    model_folder,
    read_model_dir,
    resolve_text_encoder,
)
from foresight.models.aid import AIDModel
from foresight.models.encoders import TextEncoder, bundled_text_encoder_path

log = logging.getLogger("bench")


def default_model() -> str:
    """'tiny' once the embedded model ships, 'tiny-random' until then."""
    if (EMBEDDED_DIR / "aid_config.json").is_file():
        return "tiny"
    log.warning("the embedded model is not in %s yet: benchmarking tiny-random (same code path, random weights)", EMBEDDED_DIR)
    return "tiny-random"


def default_student(spec: str) -> str | None:
    """'tiny-turbo' beside 'tiny' once it ships; none otherwise."""
    if spec == "tiny" and (EMBEDDED["tiny-turbo"] / "aid_config.json").is_file():
        return "tiny-turbo"
    return None


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec's parts come from: its AID config, its SVD folder (None: built tiny-random), its text encoder."""

    spec: str
    config: AIDConfig
    svd_dir: Path | None
    text_encoder_dir: Path | None

    @classmethod
    def of(cls, spec: str) -> ModelSource:
        if spec == "tiny-random":
            return cls(spec, TINY_RANDOM_AID, None, bundled_text_encoder_path())
        folder = read_model_dir(model_folder(spec))
        text = folder.text_encoder
        return cls(spec, folder.aid, folder.svd, None if text is None else resolve_text_encoder(text))

    def load(self, device: str = "cpu") -> LoadedModel:
        """The model itself, trained weights, card and states included."""
        loaded = load_model(self.spec)
        loaded.model.to(device).eval()
        return loaded

    def fresh_svd(self) -> SVDComponents:
        """A new copy of the same SVD weights (loaded again, or rebuilt from the same seed)."""
        return build_tiny_svd(TINY_RANDOM_SVD, seed=0) if self.svd_dir is None else load_svd(self.svd_dir)

    def variant(self, text: TextEncoder | None, device: str = "cpu", **changes: int) -> AIDModel:
        """Same architecture with num_frames / height / width changed. Adapters and DQFormer are
        freshly initialised (DE queries are sized for N frames): right for timing, not for quality."""
        config = dataclasses.replace(self.config, **changes)
        torch.manual_seed(0)
        return AIDModel(self.fresh_svd(), text, config).to(device).eval()

    def text_encoder(self) -> TextEncoder | None:
        """One text encoder shared by every variant (it holds no hooks or per-model state besides its cache)."""
        return None if self.text_encoder_dir is None else TextEncoder(self.text_encoder_dir, self.config.text_max_length)

    def stock_pipeline(self, device: str = "cpu") -> StableVideoDiffusionPipeline:
        """diffusers' own StableVideoDiffusionPipeline on equal-size (equal-weight) SVD parts."""
        svd = self.fresh_svd()
        pipe = StableVideoDiffusionPipeline(
            vae=svd.vae, image_encoder=svd.image_encoder, unet=svd.unet,
            scheduler=svd.scheduler, feature_extractor=svd.feature_extractor,
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe
