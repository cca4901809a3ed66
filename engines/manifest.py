"""Engine folder manifests: what was built from which weights, and whether it may be used.

An engine folder holds `manifest.json` next to its graphs. The loader refuses a graph when any
of these differ from the running process: the weights it was exported from (sha256 over the
state dict, canonicalised to the engine precision so an fp16 engine matches fp16- or fp32-loaded
weights), the model config, the model-code versions (foresight, diffusers: the graph was traced
from that code), for TensorRT also the TensorRT version and GPU (serialized engines are neither
portable nor forward compatible), the sha256 of every file (truncation, corruption), and the
exporter's own `usable` verdict (numeric check passed).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import torch
from foresight.engines.base import EngineRefused
from torch import nn

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 4  # 2: adds the VAE-decoder graph; 3: it decodes with the end latents repeated; 4: the VAE encoder
# versions a graph depends on: the code it was traced from, and for engines the runtime itself
CODE_LIBRARIES = ("foresight", "diffusers")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata so that nothing heavy gets imported."""
    versions = {}
    for name in ("foresight", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def weights_sha256(module: nn.Module, precision: str) -> str:
    """sha256 over (name, shape, bytes) of every state-dict tensor, cast to the engine precision.

    Casting first makes the fingerprint independent of the dtype the weights were loaded in.
    """
    dtype = PRECISIONS[precision]
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def graph_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The exported parts of an AIDModel, by graph name (a text-free base has no DQFormer; the
    VAE-decoder graph is the frame decoder where the model has one)."""
    parts = {"unet": model.unet, "vae_decoder": model.vae if model.decoder is None else model.decoder,
             "vae_encoder": model.vae}
    return parts | ({} if model.dqformer is None else {"dqformer": model.dqformer})


def read_manifest(engine_dir: str | Path) -> dict:
    """Parse and sanity-check a manifest; EngineRefused says what is wrong with it."""
    path = Path(engine_dir) / MANIFEST_NAME
    if not path.is_file():
        raise EngineRefused(f"{engine_dir} has no {MANIFEST_NAME}; build it with export/build_engines.py")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineRefused(f"{path} is not valid JSON ({e}); rebuild the engines") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise EngineRefused(f"{path}: manifest format {got!r}, this version reads {FORMAT_VERSION}")
    return manifest


def write_manifest(engine_dir: str | Path, manifest: dict) -> Path:
    path = Path(engine_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _canonical(config: dict) -> dict:
    return json.loads(json.dumps(config))


# what only the sampler reads: a folder may change its default steps, scales or solver and keep its engines
SAMPLER_FIELDS = ("steps", "guidance_frame", "guidance_text", "guidance_interval", "solver")


def same_graph_config(built: dict | None, config: dict) -> bool:
    """Whether engines exported for the AID config `built` (the manifest's, as a dict) fit a model
    whose config is `config` (`AIDConfig.to_dict()`): equal in every field the graphs depend on.
    A field the manifest lacks (added to AIDConfig since the export, such as `lora`) fits only
    where the model leaves it unset."""
    current, exported = _canonical(config), _canonical(built or {})
    for name in SAMPLER_FIELDS:
        current.pop(name, None)
        exported.pop(name, None)
    for name in current.keys() - exported.keys():
        if current.pop(name) is not None:
            return False
    return current == exported


def check_graph(
    manifest: dict,
    engine_dir: str | Path,
    graph: str,
    kind: str,
    model: nn.Module,
    fingerprints: dict[tuple[str, str], str],
) -> dict:
    """Return the manifest entry of `graph` (a `graph_modules` name) as `kind` ("onnx" | "tensorrt")
    if it may run with `model`; raise EngineRefused with the reason otherwise.

    fingerprints caches weights_sha256 per (graph, precision) across calls: hashing a real SVD
    UNet takes seconds.
    """
    where = f"{engine_dir}: {graph} ({kind})"
    entry = manifest.get("graphs", {}).get(graph, {})
    built = entry.get(kind)
    if not built:
        raise EngineRefused(f"{where}: not in the manifest")
    if not built.get("usable"):
        raise EngineRefused(f"{where}: the exporter marked it unusable ({built.get('reason', 'numeric check failed')})")
    if not same_graph_config(manifest.get("aid_config"), model.config.to_dict()):
        raise EngineRefused(f"{where}: built for a different model config (resolution, frames, DQFormer shape)")
    shapes = manifest.get("shapes", {})
    if (shapes.get("height"), shapes.get("width")) != (model.config.height, model.config.width):
        raise EngineRefused(
            f"{where}: built for {shapes.get('height')}x{shapes.get('width')}, "
            f"the model runs at {model.config.height}x{model.config.width}"
        )
    current = library_versions()
    for name in CODE_LIBRARIES:
        if manifest["versions"].get(name) != current[name]:
            raise EngineRefused(
                f"{where}: exported with {name} {manifest['versions'].get(name)}, running {current[name]}; rebuild"
            )
    precision = entry.get("precision")
    if precision not in PRECISIONS:
        raise EngineRefused(f"{where}: unknown precision {precision!r}")
    key = (graph, precision)
    if key not in fingerprints:
        fingerprints[key] = weights_sha256(graph_modules(model)[graph], precision)
    if entry.get("source_sha256") != fingerprints[key]:
        raise EngineRefused(f"{where}: exported from different weights than the loaded model (sha256 mismatch)")
    for name, digest in built.get("files", {}).items():
        path = Path(engine_dir) / name
        if not path.is_file():
            raise EngineRefused(f"{where}: {name} is missing")
        if file_sha256(path) != digest:
            raise EngineRefused(f"{where}: {name} is corrupt or truncated (sha256 differs from the manifest)")
    if not built.get("files"):
        raise EngineRefused(f"{where}: the manifest lists no files")
    return built
