"""Configuration dataclasses for the AID model; frozen so a loaded model cannot drift from its card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class AdapterConfig:
    """Where the AID adapters go and how wide they are.

    ratio: bottleneck width = channels // ratio.
    placement: which UNet block groups get adapters ("down", "mid", "up").
    """

    ratio: int = 8
    placement: tuple[str, ...] = ("down", "mid", "up")
    spatial: bool = True
    short_term: bool = True
    long_term: bool = True
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    long_term_heads: int = 4

    def __post_init__(self) -> None:
        if self.ratio < 1:
            raise ValueError(f"adapter ratio must be >= 1, got {self.ratio}")
        unknown = set(self.placement) - {"down", "mid", "up"}
        if unknown:
            raise ValueError(f"adapter placement must be among down/mid/up, got {sorted(unknown)}")


@dataclass(frozen=True)
class DQFormerConfig:
    """Dual-query transformer; `width` must equal the UNet's cross-attention width.

    sentence_token: prepend the instruction's pooled sentence embedding (the masked mean of the
    text encoder's token features, as sentence-transformers pool) as one more instruction token.
    Rewordings of one instruction lie close in that space even where their words differ.
    """

    width: int = 1024
    text_dim: int = 1024
    vision_dim: int = 1280
    layers: int = 1
    heads: int = 16
    tokens_per_frame: int = 77
    ffn_mult: int = 2
    use_me: bool = True
    use_de: bool = True
    sentence_token: bool = False

    def condition_tokens(self, text_tokens: int) -> int:
        """Tokens per frame of MCondition for instructions padded to `text_tokens`."""
        return (text_tokens + self.sentence_token) * self.use_me + self.tokens_per_frame * self.use_de


@dataclass(frozen=True)
class UNetLoRAConfig:
    """A low-rank adapter (peft LoRA) on the frozen UNet's linear layers: what a distilled model
    trains besides the AID weights (`foresight.training.distill`). Loading a model merges it into
    the UNet's weights, so inference and exported graphs run the plain UNet.

    targets: module-name suffixes (peft's `target_modules`); by default the query, key, value and
    output projections of every self-attention, spatial and temporal.
    """

    rank: int = 16
    alpha: float | None = None  # None: alpha = rank (scale 1)
    targets: tuple[str, ...] = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if not self.targets:
            raise ValueError("lora targets must name at least one module")


@dataclass(frozen=True)
class FrameDecoderConfig:
    """A small frame-by-frame decoder of the VAE's latents (diffusers' `DecoderTiny`, TAESD's
    decoder), trained to match the temporal decoder (`foresight train` stage "decoder"): decoding
    then costs a fraction of the temporal decoder's and needs no repeated end latents.

    channels: its width at every level; blocks: residual blocks per level, one level per VAE
    level (each level but the last upsamples 2x), TAESD's (3, 3, 3, 1) for an SD/SVD VAE.
    """

    channels: int = 64
    blocks: tuple[int, ...] = (3, 3, 3, 1)

    def __post_init__(self) -> None:
        if self.channels < 1 or not self.blocks or min(self.blocks) < 1:
            raise ValueError(f"decoder channels and blocks must be >= 1, got {self.channels}, {self.blocks}")


# ODE solvers a model samples with: first-order Euler (the default), Heun and DPM-Solver++(2M);
# consistency: multistep consistency sampling, for a distilled model (its folder's config names it)
SOLVER_NAMES = ("euler", "heun", "dpmpp_2m", "consistency")


@dataclass(frozen=True)
class SamplerSettings:
    """How a prediction samples, every value resolved: s_V (frame guidance), s_T (text guidance).

    The one place a request's unset values take the model's defaults (`resolve`), for the
    pipeline, the node and evaluation alike; two requests with equal settings can share a model call.
    """

    steps: int
    guidance_frame: float
    guidance_text: float
    guidance_interval: tuple[float, float] | None = None  # (low, high] noise levels where guidance applies
    solver: str = "euler"  # one of SOLVER_NAMES (foresight.diffusion.sampling.SOLVERS)

    def __post_init__(self) -> None:
        if self.solver not in SOLVER_NAMES:
            raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {self.solver!r}")

    def resolve(self, steps: int | None = None, guidance_frame: float | None = None, guidance_text: float | None = None,
                guidance_interval: tuple[float, float] | None | str = "config",
                solver: str | None = None) -> SamplerSettings:
        """These settings (a model's defaults) with each given value in place of its default.

        None keeps the default, except for guidance_interval, where None means "guide at every
        step" and "config" keeps the default.
        """
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        return SamplerSettings(
            steps=self.steps if steps is None else int(steps),
            guidance_frame=self.guidance_frame if guidance_frame is None else float(guidance_frame),
            guidance_text=self.guidance_text if guidance_text is None else float(guidance_text),
            guidance_interval=self.guidance_interval if guidance_interval == "config"
            else None if guidance_interval is None else tuple(guidance_interval),
            solver=self.solver if solver is None else solver,
        )


@dataclass(frozen=True)
class AIDConfig:
    """Everything that shapes an AID model besides the frozen SVD weights.

    num_frames (N) and context_frames (K) fix the DE query count and the condition mask.
    text_max_length pads instructions and each state description to a fixed token count so
    every exported graph has static shapes.
    guidance_interval (low, high): apply the two guidance scales only at noise levels
    low < sigma <= high and run the fully conditioned branch alone elsewhere (Kynkaanniemi et
    al. 2024, "Applying guidance in a limited interval"); None guides at every step.
    """

    height: int = 256
    width: int = 256
    num_frames: int = 16
    context_frames: int = 1
    num_states: int = 4
    text_max_length: int = 77
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    steps: int = 25
    guidance_frame: float = 1.5
    guidance_text: float = 3.0
    guidance_interval: tuple[float, float] | None = None
    solver: str = "euler"
    train_cross_attention: bool = False
    adapters: AdapterConfig | None = field(default_factory=AdapterConfig)
    dqformer: DQFormerConfig | None = field(default_factory=DQFormerConfig)
    lora: UNetLoRAConfig | None = None
    decoder: FrameDecoderConfig | None = None  # None: the VAE's temporal decoder decodes

    def __post_init__(self) -> None:
        if not 1 <= self.context_frames < self.num_frames:
            raise ValueError(
                f"need 1 <= context_frames < num_frames, got K={self.context_frames}, N={self.num_frames}"
            )
        if self.guidance_interval is not None and not 0 <= self.guidance_interval[0] < self.guidance_interval[1]:
            raise ValueError(f"guidance_interval must be (low, high) with 0 <= low < high, got {self.guidance_interval}")
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {self.height}x{self.width}")
        if self.solver not in SOLVER_NAMES:
            raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {self.solver!r}")
        if self.lora is not None and self.train_cross_attention and any("attn2" in t for t in self.lora.targets):
            raise ValueError("the cross-attention trains in full (train_cross_attention); keep the LoRA off attn2")

    def to_dict(self) -> dict:
        return asdict(self)

    def decoded_frames(self, frames: int) -> int:
        """Frames one decoder call decodes for a clip of `frames` latents: the temporal decoder
        gets the clip with its first and last latent repeated (`AIDModel.temporal_decode`), a
        frame decoder the clip as it is."""
        return frames + (2 if self.decoder is None else 0)

    @property
    def sampler(self) -> SamplerSettings:
        """The model's default sampler."""
        return SamplerSettings(self.steps, self.guidance_frame, self.guidance_text, self.guidance_interval, self.solver)

    @classmethod
    def from_dict(cls, data: dict) -> "AIDConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AID config keys: {sorted(unknown)}")
        data = dict(data)
        if data.get("guidance_interval") is not None:
            data["guidance_interval"] = tuple(data["guidance_interval"])
        adapters, dqformer = data.pop("adapters", {}), data.pop("dqformer", {})
        lora = data.pop("lora", None)  # absent in folders older than the field: no LoRA
        decoder = data.pop("decoder", None)  # absent in folders older than the field: the temporal decoder
        if adapters is not None:
            adapters = AdapterConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in adapters.items()})
        return cls(
            adapters=adapters,
            dqformer=None if dqformer is None else DQFormerConfig(**dqformer),
            lora=None if lora is None else UNetLoRAConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                             for k, v in lora.items()}),
            decoder=None if decoder is None else FrameDecoderConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                                      for k, v in decoder.items()}),
            **data,
        )
