"""ONNX export of AID's UNet, VAE decoder, VAE encoder and DQFormer through thin wrappers with fixed I/O names.

The TorchScript exporter (`dynamo=False`) traces the adapter hooks like any other code. Batch
and frame axes are dynamic; the spatial size and token counts are fixed by the model config.
Graphs whose weights pass 2 GB (the real SVD UNet) are written with their tensors in one
external-data file beside the graph (`<name>.onnx.data`), which ONNX Runtime and TensorRT's
parser read from the same folder.

The UNet is exported in its export form (`export_form`): exact rewrites that make a faster graph
(tiny model, CPU provider: UNet step 1.15-1.2x as fast as without them). Its attention takes one
of two forms: standard ONNX operators (what TensorRT parses) or ONNX Runtime's fused
`com.microsoft.MultiHeadAttention`, since the exporter writes scaled dot-product attention as ~25
small nodes (head split and merge transposes, a scale computed from the shape).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
)
from foresight.engines.base import GRAPH_IO
from torch import nn

EXTERNAL_DATA_BYTES = 1 << 30  # above this, weights go to an external file (protobuf caps a file at 2 GB)
ATTENTION_FORMS = ("onnx", "onnxruntime")  # standard operators / ONNX Runtime's fused MultiHeadAttention


def _split_heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class _MultiHeadAttention(torch.autograd.Function):
    """Scaled dot-product attention on (B, S, heads*D) projections; exports as one contrib node."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        return _split_heads_attention(q, k, v, heads)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)


class ExportAttentionProcessor:
    """diffusers attention processor computing what AttnProcessor2_0 does for SVD's transformer
    blocks (3D tokens, no mask, no extra norms), in the chosen form (ATTENTION_FORMS).

    positions: set for the temporal cross-attentions, whose context diffusers' spatio-temporal
    transformer builds by broadcasting each clip's (L, C) context to all h*w positions. Those
    attend once per clip instead: queries (B*h*w, F, C) as (B, h*w*F, C) against one (B, L, C)
    context, which computes the same values with the K/V projections and the attention batched
    h*w times fewer.
    """

    def __init__(self, fused: bool) -> None:
        self.attend = _MultiHeadAttention.apply if fused else _split_heads_attention
        self.positions: int | None = None

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if attention_mask is not None:
            raise ValueError("the exported attention takes no attention mask")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.to_q(hidden_states)
        if self.positions is None:
            out = self.attend(q, attn.to_k(context), attn.to_v(context), attn.heads)
        else:
            p, frames = self.positions, q.shape[1]
            context = context.unflatten(0, (-1, p))[:, 0]
            out = self.attend(q.unflatten(0, (-1, p)).flatten(1, 2), attn.to_k(context), attn.to_v(context), attn.heads)
            out = out.unflatten(1, (p, frames)).flatten(0, 1)
        return attn.to_out[1](attn.to_out[0](out))


class SplitGEGLU(nn.Module):
    """diffusers' GEGLU with its projection applied as two halves (value, gate) instead of once
    and then chunked: the graph then has no Slice copies of the projection, and ONNX Runtime
    fuses the gate's bias and GELU into one BiasGelu node."""

    def __init__(self, geglu: GEGLU) -> None:
        super().__init__()
        self.proj = geglu.proj

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        value_w, gate_w = self.proj.weight.chunk(2)
        value_b, gate_b = (None, None) if self.proj.bias is None else self.proj.bias.chunk(2)
        return F.linear(hidden_states, value_w, value_b) * F.gelu(F.linear(hidden_states, gate_w, gate_b))


def _exportable(attn: Attention) -> bool:
    return (attn.group_norm is None and attn.spatial_norm is None and attn.norm_cross is None
            and attn.norm_q is None and attn.norm_k is None and not attn.residual_connection
            and attn.rescale_output_factor == 1.0 and len(attn.to_out) == 2)


def _set_positions(processors: list[ExportAttentionProcessor]):
    def hook(module, args, kwargs):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        for processor in processors:
            processor.positions = hidden_states.shape[-2] * hidden_states.shape[-1]
    return hook


@contextlib.contextmanager
def export_form(unet: nn.Module, attention: str):
    """The UNet rewritten for export, restored on exit: exact rewrites that make a faster graph.

    Every exportable Attention gets an ExportAttentionProcessor (`attention` "onnxruntime": the
    fused contrib node), the temporal cross-attentions of each spatio-temporal transformer attend
    once per clip, and every GEGLU becomes a SplitGEGLU. Yields the number of attentions swapped.
    """
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
    fused = attention == "onnxruntime"
    attentions = [(m, m.processor) for m in unet.modules() if isinstance(m, Attention) and _exportable(m)]
    geglus = [(parent, name, child) for parent in unet.modules() for name, child in parent.named_children()
              if isinstance(child, GEGLU)]
    hooks = []
    for m, _ in attentions:
        m.set_processor(ExportAttentionProcessor(fused))
    for transformer in (m for m in unet.modules() if isinstance(m, TransformerSpatioTemporalModel)):
        per_clip = [block.attn2.processor for block in transformer.temporal_transformer_blocks
                    if isinstance(getattr(block.attn2, "processor", None), ExportAttentionProcessor)]
        hooks.append(transformer.register_forward_pre_hook(_set_positions(per_clip), with_kwargs=True))
    for parent, name, child in geglus:
        setattr(parent, name, SplitGEGLU(child))
    try:
        yield len(attentions)
    finally:
        for hook in hooks:
            hook.remove()
        for parent, name, child in geglus:
            setattr(parent, name, child)
        for m, processor in attentions:
            m.set_processor(processor)


class DQFormerGraph(nn.Module):
    """DQFormer with tensor-only inputs; always all N frames (callers slice, see foresight.engines.base.first_frames)."""

    def __init__(self, dqformer: nn.Module) -> None:
        super().__init__()
        self.dqformer = dqformer

    def forward(self, t1, t1_mask, t2, t2_mask, v) -> torch.Tensor:
        return self.dqformer(t1, t1_mask, t2, t2_mask, v)


class VaeDecoderGraph(nn.Module):
    """`AIDModel.vae_decode` over (B, F) clips of unscaled latents: the model's frame decoder, or
    SVD's temporal decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vae = model.vae if model.decoder is None else model.decoder
        self.decode = model.vae_decode

    def forward(self, latents) -> torch.Tensor:
        return self.decode(latents)


class VaeEncoderGraph(nn.Module):
    """`AIDModel.vae_encode`: (B, K) context frames -> the VAE's unscaled latent mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vae = model.vae
        self.encode = model.vae_encode

    def forward(self, frames) -> torch.Tensor:
        return self.encode(frames)


@dataclass(frozen=True)
class GraphShapes:
    """Fixed sizes of the exported graphs; batch and frames stay dynamic.

    height, width: the frames'; context_frames: K, the frames the VAE encoder sees per clip;
    latent_channels: the VAE's; context_tokens: L of the UNet's per-frame context; text_tokens,
    state_tokens, vision_tokens: the DQFormer's input lengths.
    """

    height: int
    width: int
    context_frames: int
    in_channels: int
    latent_channels: int
    latent_height: int
    latent_width: int
    context_tokens: int
    cross_dim: int
    text_tokens: int
    state_tokens: int
    text_dim: int
    vision_tokens: int
    vision_dim: int


def graph_shapes(model: nn.Module, height: int, width: int) -> GraphShapes:
    """Read the sizes off the model by running its encoders once on dummy input."""
    cfg = model.config
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    with torch.no_grad():
        v, _ = model.vision(torch.zeros(1, 3, height, width, device=model.device, dtype=model.dtype))
        t1 = torch.zeros(1, 0, 0) if model.dqformer is None else model.text([""])[0]
    d = cfg.dqformer
    return GraphShapes(
        height=height,
        width=width,
        context_frames=cfg.context_frames,
        in_channels=model.unet.config.in_channels,
        latent_channels=model.vae.config.latent_channels,
        latent_height=height // factor,
        latent_width=width // factor,
        context_tokens=1 + (0 if d is None else d.condition_tokens(t1.shape[1])),
        cross_dim=model.unet.config.cross_attention_dim,
        text_tokens=t1.shape[1],
        state_tokens=cfg.num_states * t1.shape[1],
        text_dim=t1.shape[2],
        vision_tokens=v.shape[1],
        vision_dim=v.shape[2],
    )


def random_inputs(
    graph: str, shapes: GraphShapes, batch: int, frames: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Fresh random inputs in realistic ranges (c_noise of SVD's sigmas, SVD's time ids, masks with padding)."""

    def randn(*size):
        return torch.randn(*size, generator=generator).to(device, dtype)

    if graph == "vae_decoder":  # unscaled latents: about unit variance over the scaling factor
        return dict(latents=randn(batch, frames, shapes.latent_channels, shapes.latent_height, shapes.latent_width) * 1.2)

    if graph == "vae_encoder":  # frames in [-1, 1] plus SVD's noise augmentation
        pixels = torch.rand(batch, frames, 3, shapes.height, shapes.width, generator=generator) * 2 - 1
        return dict(frames=(pixels + 0.02 * torch.randn(pixels.shape, generator=generator)).to(device, dtype))

    if graph == "unet":
        s = shapes
        timestep = torch.rand(batch, generator=generator) * 3.2 - 1.55  # log(sigma) / 4 for sigma in [0.002, 700]
        time_ids = torch.tensor([6.0, 127.0, 0.02]) + torch.rand(batch, 3, generator=generator) * torch.tensor([4.0, 60.0, 0.1])
        return dict(
            sample=randn(batch, frames, s.in_channels, s.latent_height, s.latent_width),
            timestep=timestep.to(device, dtype),
            encoder_hidden_states=randn(batch * frames, s.context_tokens, s.cross_dim),
            added_time_ids=time_ids.to(device, dtype),
        )

    def mask(length):
        lengths = torch.randint(1, length + 1, (batch, 1), generator=generator)
        return (torch.arange(length) < lengths).to(device)

    return dict(
        t1=randn(batch, shapes.text_tokens, shapes.text_dim),
        t1_mask=mask(shapes.text_tokens),
        t2=randn(batch, shapes.state_tokens, shapes.text_dim),
        t2_mask=mask(shapes.state_tokens),
        v=randn(batch, shapes.vision_tokens, shapes.vision_dim),
    )


def _save(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """Write the graph (+ one external-data file when large); returns the files written, graph first."""
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if weights > EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
        files = [path, data]
    else:
        onnx.save_model(proto, str(path))
        files = [path]
    onnx.checker.check_model(str(path))
    return files


def to_float16(path: Path) -> list[Path]:
    """Rewrite an fp32 graph file in fp16, inputs and outputs included (ONNX Runtime's converter,
    `onnxruntime.transformers.float16`, which keeps ops without fp16 kernels, such as Range and
    Resize's scales, in fp32 behind casts); returns the files written. Converting the traced fp32 graph instead of tracing a
    half-precision model: on a CPU, a half model's trace runs its convolutions on slow reference
    kernels (the full-size VAE decoder's had not finished in 20 minutes). The converter needs every
    intermediate's type, which the path-based form infers on the file (graphs over 2 GB too)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = OnnxModel(convert_float_to_float16(str(path), keep_io_types=False))
    half.topological_sort()  # the converter appends its casts at the end; ONNX wants producers first
    return _save(half.model, path)


@torch.no_grad()
def export_graph(
    graph: str, model: nn.Module, shapes: GraphShapes, frames: int, path: Path, opset: int = 17,
    attention: str = "onnx",
) -> list[Path]:
    """Export "unet" (model.unet), "vae_decoder" (model.vae_decode), "vae_encoder" (model.vae_encode)
    or "dqformer" (model.dqformer) of an AIDModel to `path`; `attention` (ATTENTION_FORMS) is the UNet's attention form.

    Traced at batch 2 (batch 1 could be specialised away by the tracer). Returns the files written.
    """
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
    g = torch.Generator().manual_seed(0)
    example = random_inputs(graph, shapes, 2, frames, model.dtype, model.device, g)
    names, outputs = GRAPH_IO[graph]
    if graph == "unet":
        module = model.unet
        axes = {"sample": {0: "batch", 1: "frames"}, "timestep": {0: "batch"},
                "encoder_hidden_states": {0: "batch_frames"}, "added_time_ids": {0: "batch"},
                outputs[0]: {0: "batch", 1: "frames"}}
    elif graph in ("vae_decoder", "vae_encoder"):
        module = VaeDecoderGraph(model) if graph == "vae_decoder" else VaeEncoderGraph(model)
        axes = {names[0]: {0: "batch", 1: "frames"}, outputs[0]: {0: "batch", 1: "frames"}}
    else:
        module = DQFormerGraph(model.dqformer)
        axes = {name: {0: "batch"} for name in names} | {outputs[0]: {0: "batch_frames"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    form = export_form(module, attention) if graph == "unet" else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings(), form:
        # diffusers' shape asserts and size branches specialise to constants, as intended for fixed h, w
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        raw = Path(tmp) / path.name
        torch.onnx.export(
            module.eval(),
            tuple(example[n] for n in names),
            str(raw),
            input_names=list(names),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        proto = onnx.load(str(raw))  # pulls in any external tensors the exporter wrote beside it
    return _save(proto, path)


def graph_io(path: Path) -> dict[str, dict]:
    """{"inputs": {name: {"shape": [dim | axis name], "dtype": str}}, "outputs": ...} from the graph."""

    def describe(values):
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out[v.name] = {"shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}
        return out

    proto = onnx.load(str(path), load_external_data=False)
    return {"inputs": describe(proto.graph.input), "outputs": describe(proto.graph.output)}
