"""Rehearse every user command on the real SVD architecture, with random weights, on this machine.

    python -m bench.real_scale --make DIR          # the folders only (cached in DIR)
    python -m bench.real_scale --dir DIR --out OUT # every stage; real_scale.json + real_scale.md in OUT
    python -m bench.real_scale --width tiny ...    # the same script on a tiny-width architecture (the test)

Folders (`--make`, each made once and reused):
- `svd/`: a diffusers Stable Video Diffusion folder (SVD's UNet, VAE and ViT-H/14 image encoder
  configs; bf16 weights, 4.2 GB at full width) that diffusers' own
  `StableVideoDiffusionPipeline.from_pretrained(DIR, local_files_only=True)` loads (asserted);
- `clip-text/`: a CLIP text tower (OpenCLIP ViT-H/14's config) with a real CLIP BPE tokenizer,
  whose vocabulary comes from the `open-clip-torch` package's `bpe_simple_vocab_16e6.txt.gz`;
- `vlm/`: a LLaVA-architecture VLM small enough for a CPU (random weights) with a working
  processor, its own byte-level BPE tokenizer trained on the tasks' words, and a chat template;
- `bridge/`: a BridgeData-raw tree of simulator episodes at the paper's Bridge shape.

Each stage runs exactly the command a user runs, as a child process, and records pass/fail with
the error's last lines, wall time and the child's peak RSS (from `wait4`); `foresight params`
estimates go beside the measured figures. Stages run on even when one fails, except where a stage
needs what a failed one makes.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from bench.core import cpu_model
from foresight.dtypes import cpu_bf16_native
from sim_bridge.common.imaging import write_png
from sim_bridge.common.logs import setup_logging
from sim_bridge.common.tables import markdown_table

logger = logging.getLogger("bench.real_scale")

GIB = 2**30


@dataclass(frozen=True)
class Width:
    """One architecture size: what `--make` builds and the settings every stage runs at."""

    name: str
    size: int  # frames are size x size
    num_frames: int  # N
    train_steps: int
    predict_steps: int  # every step runs all three guidance branches (the preset guides at every step)
    distill_steps: int
    # --set overrides of the svd-bridge preset beyond the folders (the tiny width's DQFormer sizes)
    sets: tuple[str, ...] = ()
    episodes: int = 4


FULL = Width("full", 256, 16, train_steps=3, predict_steps=1, distill_steps=2)
TINY = Width("tiny", 32, 4, train_steps=3, predict_steps=2, distill_steps=2, episodes=3, sets=(
    "model.aid.height=32", "model.aid.width=32", "model.aid.num_frames=4", "model.aid.num_states=2",
    "model.aid.text_max_length=16", "model.aid.dqformer.width=32", "model.aid.dqformer.text_dim=32",
    "model.aid.dqformer.vision_dim=32", "model.aid.dqformer.heads=2", "model.aid.dqformer.tokens_per_frame=4"))
WIDTHS = {w.name: w for w in (FULL, TINY)}


# ---------------------------------------------------------------------------------------------
# 1. folders


def clip_bpe_file() -> Path:
    """The CLIP BPE merges that `open-clip-torch` ships (located, not imported: it needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the open-clip-torch package is not installed (it carries the CLIP BPE vocabulary): "
                                "pip install --no-deps open-clip-torch")
    return Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_clip_tokenizer(folder: Path) -> None:
    """`vocab.json` + `merges.txt` of CLIP's tokenizer (49,408 tokens), built the way CLIP builds its
    vocabulary from the BPE merges, and saved through transformers' CLIPTokenizer."""
    from transformers import CLIPTokenizer

    lines = gzip.open(clip_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)


def make_svd(folder: Path, width: Width) -> None:
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from foresight.loading import SVD_SIGMAS, SVDComponents, TinySVDConfig, build_tiny_svd
    from foresight.params import SVD_IMAGE_ENCODER, SVD_VAE

    if width.name == "tiny":
        svd = build_tiny_svd(TinySVDConfig(), seed=0)
    else:
        torch.manual_seed(0)
        svd = SVDComponents(
            unet=UNetSpatioTemporalConditionModel(),  # diffusers' defaults are SVD's UNet config
            vae=AutoencoderKLTemporalDecoder.from_config(SVD_VAE),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_IMAGE_ENCODER)),
            feature_extractor=CLIPImageProcessor(size={"shortest_edge": 224},
                                                 crop_size={"height": 224, "width": 224}),
            scheduler=EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True,
                                             sigma_min=SVD_SIGMAS[0], sigma_max=SVD_SIGMAS[1],
                                             timestep_type="continuous", interpolation_type="linear"),
        )
        for part in (svd.unet, svd.vae, svd.image_encoder):
            part.to(torch.bfloat16)
    svd.save_pretrained(folder)


def check_svd_loads_in_diffusers(folder: Path) -> None:
    """diffusers' own pipeline class takes the folder as a Stable Video Diffusion checkpoint."""
    import torch
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.bfloat16)
    assert type(pipe.unet).__name__ == "UNetSpatioTemporalConditionModel", type(pipe.unet)
    del pipe


def make_text(folder: Path, width: Width) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from foresight.params import CLIP_H_TEXT

    write_clip_tokenizer(folder)
    config = CLIP_H_TEXT if width.name == "full" else {"hidden_size": 32, "intermediate_size": 64,
                                                       "num_attention_heads": 2, "num_hidden_layers": 1,
                                                       "projection_dim": 32, "max_position_embeddings": 77}
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(**config, vocab_size=49408))
    (model.to(torch.bfloat16) if width.name == "full" else model).save_pretrained(folder)  # 650 MB in bf16


# the VLM's chat template: LLaVA-style turns, images as <image> markers
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'].upper() }}: "
                 "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
                 "{% else %}{{ item['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                 "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def make_vlm(folder: Path) -> None:
    """A LLaVA-architecture VLM (CLIP vision tower + Llama language model, random weights) with a
    processor that works: image processor, a byte-level BPE tokenizer trained here on the tasks'
    words and the decomposition prompt, and the chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    from foresight.states import PAPER_PROMPT
    from sim_bridge.simulator.instructions import PARAPHRASES, TEMPLATES

    corpus = [PAPER_PROMPT, CHAT_TEMPLATE] + [p for group in (*TEMPLATES.values(), *PARAPHRASES.values()) for p in group]
    corpus += [f"{i}. the gripper moves to the red block" for i in range(1, 10)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<pad>", "<image>"]
    tok.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": "<image>"})
    image_size, patch = 56, 14
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    vocab = len(tokenizer)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=image_size, patch_size=patch),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def make_bridge_tree(root: Path, width: Width) -> None:
    """Simulator episodes in BridgeData raw's layout: <scene>/<task>/<date>/raw/traj_group0/traj<i>/
    images0/im_<t>.jpg and lang.txt, at the width's frame size, a few frames longer than N."""
    import cv2

    from sim_bridge.simulator.tabletop import make_episode
    from sim_bridge.simulator.tasks import TRAINED_KINDS, TRAIN_SEEDS

    for i in range(width.episodes):
        episode = make_episode(TRAIN_SEEDS.start + 900_000 + i, size=width.size, num_frames=width.num_frames + 2,
                               kinds=TRAINED_KINDS)
        traj = root / "tabletop" / "rehearsal" / "2026-12-06_00-00-00" / "raw" / "traj_group0" / f"traj{i}"
        (traj / "images0").mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(episode.frames):
            cv2.imwrite(str(traj / "images0" / f"im_{t}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        (traj / "lang.txt").write_text(episode.instruction + "\nconfidence: 1\n")
    write_png(root.parent / "context.png", episode.frames[0])


def make_folders(root: Path, width: Width) -> dict[str, float]:
    """Every folder the stages need, each made once (a `.done` marker); seconds per folder made."""
    made = {}
    steps = {"svd": lambda f: (make_svd(f, width), check_svd_loads_in_diffusers(f)),
             "clip-text": lambda f: make_text(f, width), "vlm": make_vlm,
             "bridge": lambda f: make_bridge_tree(f, width)}
    for name, make in steps.items():
        folder = root / name
        if (folder / ".done").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        logger.info("making %s (%s width)", folder, width.name)
        make(folder)
        (folder / ".done").write_text("")
        made[name] = round(time.perf_counter() - start, 1)
    return made


# ---------------------------------------------------------------------------------------------
# 2. stages


@dataclass
class Result:
    stage: str
    command: str
    ok: bool = False
    seconds: float = 0.0
    peak_rss_gib: float | None = None
    estimate_gib: float | None = None  # `foresight params`: live tensor bytes at the peak (no allocator, no runtime)
    error: str = ""
    notes: dict = field(default_factory=dict)


def _foresight(*args: str) -> list[str]:
    return [sys.executable, "-m", "foresight.cli", *args]


def run_stage(stage: str, command: list[str], log: Path, timeout: float, stop_when=None) -> Result:
    """Run one command as a child; its output goes to `log`. `stop_when()` (optional) is polled and,
    once true, the child gets SIGKILL (the kill of kill-and-resume). Peak RSS from wait4."""
    result = Result(stage, " ".join(Path(c).name if c == sys.executable else c for c in command))
    logger.info("[%s] %s", stage, result.command)
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        status, usage = 0, None
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if stop_when is not None and stop_when():
                child.send_signal(signal.SIGKILL)
                _, status, usage = os.wait4(child.pid, 0)
                result.notes["killed"] = True
                break
            if time.perf_counter() - start > timeout:
                child.send_signal(signal.SIGKILL)
                _, status, usage = os.wait4(child.pid, 0)
                result.notes["timeout_s"] = timeout
                break
            time.sleep(0.5)
    child.returncode = os.waitstatus_to_exitcode(status)
    result.seconds = round(time.perf_counter() - start, 1)
    result.peak_rss_gib = round(usage.ru_maxrss * 1024 / GIB, 2)
    result.ok = child.returncode == 0 or result.notes.get("killed", False)
    if not result.ok:
        result.error = "\n".join(log.read_text(errors="replace").strip().splitlines()[-12:])
    logger.info("[%s] %s in %.0f s, peak RSS %.2f GiB", stage, "ok" if result.ok else "FAILED", result.seconds,
                result.peak_rss_gib)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(endpoint: str) -> bool:
    from foresight_client import ForesightClient, NodeError

    try:
        with ForesightClient(endpoint, timeout_s=2.0, retries=0) as probe:
            return probe.health().get("status") == "ok"
    except NodeError:
        return False


def _ask(node: subprocess.Popen, client, call):
    """`call(client)` on a daemon thread while watching the node: a node that dies mid-request
    (the kernel's out-of-memory killer) fails the stage at once instead of after the client's timeout."""
    answer: dict = {}

    def run() -> None:
        try:
            with client:
                answer["value"] = call(client)
        except Exception as e:  # handed to the waiting thread
            answer["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        if thread.is_alive() and node.poll() is not None:
            how = "killed by signal 9 (out of memory?)" if node.returncode == -9 else f"exit {node.returncode}"
            raise RuntimeError(f"the node died during the request: {how}")
    if "error" in answer:
        raise answer["error"]
    return answer["value"]


def serve_and_ask(stage: str, serve_args: list[str], log: Path, context: Path, instructions: list[str],
                  steps: int, timeout: float) -> Result:
    """`foresight serve ...` as a child; once healthy, one predict from the light client; then SIGTERM.
    Peak RSS is the node's."""
    from foresight_client import ForesightClient
    from sim_bridge.common.imaging import read_image

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    command = _foresight("serve", *serve_args, "--bind", endpoint)
    result = Result(stage, " ".join(command[2:]))
    logger.info("[%s] %s", stage, result.command)
    start = time.perf_counter()
    with open(log, "w") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(endpoint):
                if node.poll() is not None:
                    raise RuntimeError(f"the node exited with {node.returncode} before it answered health")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no healthy node at {endpoint} after {timeout:.0f} s")
                time.sleep(1)
            result.notes["ready_s"] = round(time.perf_counter() - start, 1)
            asked = time.perf_counter()
            frames = _ask(node, ForesightClient(endpoint, timeout_s=timeout, retries=0),
                          lambda client: client.predict(read_image(context)[None], instructions, steps=steps))
            result.notes["request_s"] = round(time.perf_counter() - asked, 1)
            result.notes["reply_shape"] = list(frames.shape)
            result.ok = True
        except Exception as e:  # the stage fails, the rehearsal goes on
            result.error = f"{type(e).__name__}: {e}"
        finally:
            node.send_signal(signal.SIGTERM)
            try:
                _, status, usage = os.wait4(node.pid, 0)
            except ChildProcessError:
                usage = None
    result.seconds = round(time.perf_counter() - start, 1)
    result.peak_rss_gib = None if usage is None else round(usage.ru_maxrss * 1024 / GIB, 2)
    if not result.ok:
        result.error += "\n" + "\n".join(log.read_text(errors="replace").strip().splitlines()[-12:])
    logger.info("[%s] %s in %.0f s, peak RSS %s GiB", stage, "ok" if result.ok else "FAILED", result.seconds,
                result.peak_rss_gib)
    return result


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.numpy import load_file

    left, right = load_file(a), load_file(b)
    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)


def _checkpointed(run: Path, step: int):
    return lambda: (run / "checkpoints" / f"checkpoint-{step}" / "done").is_file()


@lru_cache(maxsize=None)
def _estimates(model: str) -> dict:
    """`foresight params` on the trained folder: request and training memory, as a user would ask."""
    out = subprocess.run(_foresight("params", "--model", model, "--memory", "--train", "--batch", "1,2",
                                    "--dtype", "bf16", "--json"), capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip().splitlines()[-1:]}


def place_estimates(results: list[Result], estimates: dict) -> None:
    """`foresight params` figures beside the stages they estimate: one bf16 request with M
    instructions, one training step (batch 1, gradient checkpointing, as the preset trains)."""
    request = {r["batch"]: r["request_peak_bytes"] for r in estimates["memory"]}
    step = next(r["peak_bytes"] for r in estimates["train"] if r["gradient_checkpointing"] and r["batch"] == 1)
    for result in results:
        if result.stage.startswith("predict-bf16-m"):
            result.estimate_gib = round(request[int(result.stage.rsplit("m", 1)[1])] / GIB, 4)
        elif result.stage in ("train", "train-resume"):
            result.estimate_gib = round(step / GIB, 4)


def rehearse(root: Path, out: Path, width: Width, timeout: float, device: str = "cpu",
             skip: frozenset[str] = frozenset()) -> dict:
    """Every stage in order, the model on `device` (training: wherever accelerate puts it); returns
    the report (also written to out/real_scale.json and .md)."""
    on = ["--device", device]
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    started = time.perf_counter()
    made = make_folders(root, width)
    svd, text, vlm, tree, context = root / "svd", root / "clip-text", root / "vlm", root / "bridge", root / "context.png"
    base = ["--set", f"model.svd={svd}", "--set", f"model.text_encoder={text}", "--set", f"data.source={tree}",
            "--set", "data.workers=0", "--set", "optim.grad_accum=1", "--set", "validation.every=0",
            "--set", "checkpoint_every=1", "--set", "log_every=1"]
    base += [a for s in width.sets for a in ("--set", s)]
    steps = ["--set", f"optim.steps={width.train_steps}"]
    results: list[Result] = []

    def record(name: str, run) -> Result:
        """A stage's result; one in `skip` counts as passed and reuses what an earlier rehearsal left in `out`."""
        results.append(Result(name, "", ok=True, notes={"skipped": "--skip"}) if name in skip else run())
        return results[-1]

    def stage(name: str, command: list[str], **kw) -> Result:
        return record(name, lambda: run_stage(name, command, logs / f"{name}.log", timeout, **kw))

    run_a, run_b = out / "run-a", out / "run-b"
    for name, run in (("train", run_a), ("train-kill", run_b)):
        if name not in skip:
            shutil.rmtree(run, ignore_errors=True)
    train = stage("train", _foresight("train", "svd-bridge", "--out", str(run_a), *base, *steps))
    stage("train-kill", _foresight("train", "svd-bridge", "--out", str(run_b), *base, *steps),
          stop_when=_checkpointed(run_b, width.train_steps - 1))
    resume = stage("train-resume", _foresight("train", "svd-bridge", "--out", str(run_b), *base, *steps))
    model = run_a / "model"
    if train.ok and resume.ok and (run_b / "model" / "aid.safetensors").is_file():
        resume.notes["bit_identical_to_uninterrupted"] = _same_weights(model / "aid.safetensors",
                                                                       run_b / "model" / "aid.safetensors")
        resume.ok = resume.notes["bit_identical_to_uninterrupted"]
        if not resume.ok:
            resume.error = "the resumed run's weights differ from the uninterrupted run's"
    if train.ok:
        for dtype in ("fp32", "bf16"):
            for hypotheses in (1, 2):
                instructions = [a for i in range(hypotheses)
                                for a in ("--instruction", ["push the red block to the left", "lift the blue disc"][i])]
                stage(f"predict-{dtype}-m{hypotheses}",
                      _foresight("predict", "--model", str(model), "--frames", str(context), *instructions,
                                 "--steps", str(width.predict_steps), "--dtype", dtype, *on,
                                 "--out", str(out / f"predict-{dtype}-{hypotheses}.gif")))
        record("serve-bf16", lambda: serve_and_ask(
            "serve-bf16", ["--model", str(model), "--dtype", "bf16", *on], logs / "serve-bf16.log", context,
            ["push the red block to the left", "lift the blue disc"], 1, timeout))
        engines = out / "engines"
        export = stage("export-fp32", [sys.executable, "-m", "foresight.export.build_engines", "--model", str(model),
                                       "--out", str(engines / "fp32"), "--seed", "0"])
        stage("export-fp16", [sys.executable, "-m", "foresight.export.build_engines", "--model", str(model),
                              "--out", str(engines / "fp16"), "--precision", "fp16", "--seed", "0"])
        if export.ok:
            record("serve-onnxruntime", lambda: serve_and_ask(
                "serve-onnxruntime", ["--model", str(model), "--backend", "onnxruntime", "--engines",
                                      str(engines / "fp32"), *on], logs / "serve-onnxruntime.log", context,
                ["lift the blue disc"], 1, timeout))
        stage("eval-bf16", _foresight("eval", "--model", str(model), "--episodes-dir", str(tree), "--episodes", "2",
                                      "--variants", "aid", "--steps", "1", "--dtype", "bf16", *on,
                                      "--json", str(out / "eval.json")))
        # the trained model distilled into a one-branch student (a UNet LoRA), which then predicts
        distilled = out / "run-distill"
        if "distill" not in skip:
            shutil.rmtree(distilled, ignore_errors=True)
        distill = stage("distill", _foresight("train", "svd-bridge-turbo", "--out", str(distilled), *base,
                                              "--set", f"model.init={model}", "--set",
                                              f"optim.steps={width.distill_steps}"))
        if distill.ok:
            stage("predict-distilled-bf16", _foresight(
                "predict", "--model", str(distilled / "model"), "--frames", str(context), "--instruction",
                "push the red block to the left", "--steps", str(width.predict_steps), "--dtype", "bf16", *on,
                "--out", str(out / "predict-distilled-bf16.gif")))
    states = stage("states-vlm", _foresight("states", str(tree), "--vlm", str(vlm), "--out", str(out / "states.json"),
                                            "--num-states", "2" if width.name == "tiny" else "4", *on))
    if states.ok:
        shutil.rmtree(out / "run-states", ignore_errors=True)
        stage("train-with-vlm-states", _foresight("train", "svd-bridge", "--out", str(out / "run-states"), *base,
                                                  "--set", "optim.steps=1", "--set", f"model.states={out / 'states.json'}"))
    estimates = _estimates(str(model)) if train.ok else None
    if estimates and "error" not in estimates:
        place_estimates(results, estimates)
    report = {"width": width.name, "device": device, "root": str(root), "folders_made_s": made,
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "bf16_instructions": cpu_bf16_native(),
                          "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)},
              "date": time.strftime("%Y-%m-%d"),
              "total_s": round(time.perf_counter() - started, 1),
              "peak_rss_gib": max((r.peak_rss_gib or 0) for r in results),
              "estimates": estimates, "stages": [r.__dict__ for r in results]}
    (out / "real_scale.json").write_text(json.dumps(report, indent=2))
    (out / "real_scale.md").write_text(format_report(report))
    return report


def _note(stage: dict) -> str:
    if stage["ok"]:
        return "; ".join(f"{k} {v}" for k, v in stage["notes"].items())
    return (stage["error"].strip().splitlines() or ["failed"])[-1][:120]


def format_report(report: dict) -> str:
    def gib(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    rows = [[s["stage"], "ok" if s["ok"] else "FAILED", f"{s['seconds']:.0f}", gib(s["peak_rss_gib"]),
             gib(s["estimate_gib"]), _note(s)] for s in report["stages"]]
    m = report["machine"]
    bf16 = {True: "with", False: "without", None: "unknown"}[m["bf16_instructions"]]
    return (f"Rehearsal at {report['width']} width on {report['device']}, {report['date']}: "
            f"{report['total_s'] / 60:.1f} min, peak RSS {report['peak_rss_gib']:.2f} GiB; {m['cpu']}, "
            f"{m['cores']} cores, {m['memory_gib']} GiB, {bf16} bf16 instructions\n\n"
            + markdown_table(["stage", "result", "seconds", "peak RSS (GiB)", "params estimate (GiB)",
                              "notes or error"], rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="real_scale", help="where the folders are made and kept")
    parser.add_argument("--make", action="store_true", help="make the folders and stop")
    parser.add_argument("--out", default="real_scale_out", help="runs, engines, logs and the report")
    parser.add_argument("--width", choices=tuple(WIDTHS), default="full")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any one stage may take")
    parser.add_argument("--device", default="cpu", help="where predict, serve, eval and the VLM run (e.g. cuda)")
    parser.add_argument("--skip", default=[], type=lambda v: [s for s in v.split(",") if s],
                        help="comma-separated stages to leave out, reusing what an earlier run left in --out "
                             "(e.g. train,train-kill,train-resume to rehearse the rest on its model)")
    args = parser.parse_args(argv)
    setup_logging()
    width = WIDTHS[args.width]
    root = Path(args.dir) / width.name
    if args.make:
        print(json.dumps(make_folders(root, width)))
        return 0
    report = rehearse(root, Path(args.out), width, args.timeout, args.device, frozenset(args.skip))
    print(format_report(report))
    return 0 if all(s["ok"] for s in report["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
