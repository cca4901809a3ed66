"""Where AID models come from: the model folder format and the built-in names.

`load_model(name)` reads a model once into a `LoadedModel` (the AID model, its card and the state
decomposer it was trained with), from which every pipeline is built. It takes
- "tiny-random": a small SVD-architecture model with random weights, built from config (tests);
- "tiny": the embedded model trained on the tabletop simulator, shipped in this package;
- "tiny-turbo": its distilled student (4 one-branch consistency steps), shipped beside it;
- a folder path in the format below;
and `knockouts` names AID parts to leave out (see `knocked_out`): the model is built without them
and their trained weights are not loaded, the evaluation's knock-outs.

Model folder format:
    aid_config.json    {"format": 1, "aid": AIDConfig, "svd": "svd" | path,
                        "text_encoder": "bundled:all-MiniLM-L6-v2" | path | null,
                        "states": "template" | path to a `foresight states` JSON | VLM folder}
                       (relative paths are relative to the folder; "states" absent = template)
                       Training writes the text encoder and states it used, and
                       `load_model` gives every pipeline the same states, so the two agree.
    aid.safetensors    adapters.* and dqformer.* (and unet.*attn2* when cross-attention is trained,
                       unet.*lora_* for a distilled model's UNet LoRA: merged into the UNet on load,
                       decoder.* for a frame decoder, `AIDConfig.decoder`, which then decodes)
    model_card.json    optional: how it was made and how well it does
    svd/               optional: a diffusers-format SVD folder (unet, vae, image_encoder, ...)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from foresight.config import AdapterConfig, AIDConfig, DQFormerConfig
from foresight.loading import TinySVDConfig, build_tiny_svd, load_svd
from foresight.models.aid import AIDModel
from foresight.models.encoders import TextEncoder, bundled_text_encoder_path
from foresight.states import StateDecomposer, make_decomposer

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUNDLED_TEXT_ENCODER = "bundled:all-MiniLM-L6-v2"
EMBEDDED_DIR = Path(__file__).parent / "weights" / "tiny"
# the embedded models by name: the teacher and its distilled 4-step student (`foresight train tiny-turbo`)
EMBEDDED = {"tiny": EMBEDDED_DIR, "tiny-turbo": EMBEDDED_DIR.parent / "tiny-turbo"}

TINY_RANDOM_SVD = TinySVDConfig(vae_channels=(32, 64, 64))
TINY_RANDOM_AID = AIDConfig(
    height=64,
    width=64,
    num_frames=8,
    context_frames=1,
    num_states=2,
    text_max_length=16,
    steps=4,
    adapters=AdapterConfig(ratio=4, long_term_heads=2),
    dqformer=DQFormerConfig(width=32, text_dim=384, vision_dim=32, layers=1, heads=2, tokens_per_frame=4,
                            sentence_token=True),
)


@dataclass(frozen=True)
class LoadedModel:
    """A model read once: the AID model, its card, and the state decomposer it was trained with.

    Pipelines are built from this (foresight.pipeline.ForesightPipeline), never from a bare
    model, so serving, evaluation, knock-outs and the planner all describe states as training did.
    """

    model: AIDModel
    card: dict
    states: StateDecomposer

    @classmethod
    def of(cls, model: AIDModel, card: dict | None = None, states: str | StateDecomposer = "template") -> LoadedModel:
        """A model built in memory (tests, training's validation): states by name or as a decomposer."""
        decomposer = make_decomposer(states, model.config.num_states) if isinstance(states, str) else states
        return cls(model, card or {}, decomposer)


# adapters: all three adapters; me / de: one DQFormer branch; text: the whole DQFormer (SVD's image
# token alone conditions the UNet); cross-attention: the UNet's cross-attention as in the SVD folder.
KNOCKOUTS = ("adapters", "me", "de", "text", "cross-attention")


def knocked_out(config: AIDConfig, knockouts: Sequence[str]) -> AIDConfig:
    """`config` with the named parts disabled."""
    unknown = sorted(set(knockouts) - set(KNOCKOUTS))
    if unknown:
        raise ValueError(f"unknown knock-outs {unknown}; choose from {KNOCKOUTS}")
    if {"me", "de"} <= set(knockouts):
        raise ValueError("knocking out both 'me' and 'de' leaves the DQFormer nothing; knock out 'text' instead")
    dq = config.dqformer
    if "text" in knockouts:
        dq = None
    elif dq is not None:
        dq = replace(dq, use_me=dq.use_me and "me" not in knockouts, use_de=dq.use_de and "de" not in knockouts)
    return replace(
        config,
        adapters=None if "adapters" in knockouts else config.adapters,
        dqformer=dq,
        train_cross_attention=config.train_cross_attention and "cross-attention" not in knockouts,
    )


def resolve_text_encoder(ref: str, base: Path | None = None) -> Path:
    if ref == BUNDLED_TEXT_ENCODER:
        return bundled_text_encoder_path()
    path = Path(ref)
    return path if path.is_absolute() or base is None else base / path


def build_tiny_random(seed: int = 0, knockouts: Sequence[str] = ()) -> AIDModel:
    """The random tiny model: same code path as the real one, weights from a fixed seed
    (with knock-outs: the same weights, less the parts left out)."""
    svd = build_tiny_svd(TINY_RANDOM_SVD, seed=seed)
    text = TextEncoder(bundled_text_encoder_path(), TINY_RANDOM_AID.text_max_length)
    torch.manual_seed(seed + 1)
    model = AIDModel(svd, text, TINY_RANDOM_AID)
    if not knockouts:
        return model
    # a fresh SVD: adapters hook into the UNet they were built on
    knocked = AIDModel(build_tiny_svd(TINY_RANDOM_SVD, seed=seed), text, knocked_out(TINY_RANDOM_AID, knockouts))
    knocked.load_aid_weights(model.aid_state_dict(), strict=False)
    return knocked


@dataclass(frozen=True)
class FolderSpec:
    """A model folder's aid_config.json, its paths resolved: what to build before loading weights."""

    aid: AIDConfig
    svd: Path
    text_encoder: str | None  # BUNDLED_TEXT_ENCODER, a path, or None (a text-free base)
    states: str  # "template", "none", or a path (a `foresight states` cache or a VLM folder)


def read_model_dir(path: str | Path) -> FolderSpec:
    """The one reader of a model folder's aid_config.json (relative paths: relative to the folder)."""
    path = Path(path)
    config_file = path / "aid_config.json"
    if not config_file.is_file():
        hint = (f" (a training config names the embedded model as '{{weights}}/{path.name}')"
                if path.name in EMBEDDED and not path.exists() else "")
        raise FileNotFoundError(f"{path} is not an AID model folder: no aid_config.json{hint}")
    folder_config = json.loads(config_file.read_text())
    if folder_config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{config_file}: format {folder_config.get('format')!r}, this version reads {FORMAT_VERSION}")
    svd = Path(folder_config["svd"])
    text = folder_config.get("text_encoder")
    if text is not None and text != BUNDLED_TEXT_ENCODER:
        text = str(resolve_text_encoder(text, path))
    states = folder_config.get("states", "template")  # absent in folders older than the field: template
    if states not in ("template", "none") and not Path(states).is_absolute():
        states = str(path / states)
    return FolderSpec(AIDConfig.from_dict(folder_config["aid"]), svd if svd.is_absolute() else path / svd, text, states)


def load_model_dir(path: str | Path, dtype: torch.dtype = torch.float32, knockouts: Sequence[str] = ()) -> LoadedModel:
    """Load a model folder: the model, its card (empty when the folder has none) and its states."""
    path = Path(path)
    spec = read_model_dir(path)
    config = knocked_out(spec.aid, knockouts)
    svd = load_svd(spec.svd, dtype=dtype)
    text = None if spec.text_encoder is None else TextEncoder(resolve_text_encoder(spec.text_encoder),
                                                             config.text_max_length)
    model = AIDModel(svd, text, config)
    weights = path / "aid.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path} has no aid.safetensors (adapter and DQFormer weights)")
    model.load_aid_weights(weights, strict=not knockouts)
    model.unet.merge_lora()  # a distilled model's LoRA: folded into the UNet, which then runs as plain as SVD's
    card_file = path / "model_card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return LoadedModel(model, card, make_decomposer(spec.states, config.num_states))


def save_model_dir(
    model: AIDModel,
    path: str | Path,
    svd: str | None = None,
    text_encoder: str | None = BUNDLED_TEXT_ENCODER,
    card: dict | None = None,
    states: str = "template",
) -> None:
    """Write a model folder. With svd=None the frozen SVD parts are saved into `svd/` as well."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if svd is None:
        if model.config.lora is not None:
            raise ValueError("a model with a UNet LoRA references its SVD folder (svd=...); its UNet holds the LoRA")
        model.svd_components().save_pretrained(path / "svd")
        svd = "svd"
    folder_config = {"format": FORMAT_VERSION, "aid": model.config.to_dict(), "svd": svd, "text_encoder": text_encoder,
            "states": states}
    (path / "aid_config.json").write_text(json.dumps(folder_config, indent=2))
    model.save_aid_weights(path / "aid.safetensors")
    if card is not None:
        (path / "model_card.json").write_text(json.dumps(card, indent=2))


def model_folder(name: str) -> Path:
    """The folder a model name stands for: 'tiny' and 'tiny-turbo' are the embedded models shipped
    in this package (`EMBEDDED`), any other name a path. 'tiny-random' has none (it is built from
    config, see load_model)."""
    if name == "tiny-random":
        raise ValueError("'tiny-random' is built from config and has no model folder")
    if name not in EMBEDDED:
        return Path(name)
    folder = EMBEDDED[name]
    if not (folder / "aid_config.json").is_file():
        raise FileNotFoundError(f"the embedded model {name!r} is not in this install ({folder}); train it with "
                                "`foresight train` or use --model tiny-random")
    return folder


def load_model(name: str, dtype: torch.dtype = torch.float32, knockouts: Sequence[str] = ()) -> LoadedModel:
    """'tiny-random', 'tiny' or a model folder -> the loaded model, without the `knockouts` parts."""
    if name == "tiny-random":
        return LoadedModel.of(build_tiny_random(knockouts=knockouts), {"name": "tiny-random", "note": "random weights, for tests"})
    return load_model_dir(model_folder(name), dtype, knockouts)
