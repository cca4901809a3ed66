"""`foresight params`: memory computed on fake tensors, checked against real runs on the CPU."""

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from foresight.cli import main
from foresight.params import (
    LiveBytes,
    architecture,
    count_real_config,
    request_memory,
)

# The estimate against the tensors a real request holds at its peak (the same accounting on real
# tensors): 437 against 431 MiB on the tiny model at M=16 on 3 December.
TENSOR_MARGIN = 0.1
# The process's peak RSS sits above the live tensors by CPU kernels' scratch space that no tensor
# shows (oneDNN convolution buffers, the allocator): 707-731 MiB against the estimate's 431.
RSS_FACTOR = 2.0

# Linux resets a process's peak RSS (VmHWM) when "5" is written to its clear_refs, so the peak is
# that of the request alone, not of loading the model or the warm-up.
MEASURE_RSS = textwrap.dedent("""
    import sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from foresight.pipeline import load_pipeline

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    pipe = load_pipeline("tiny")
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    run = dict(steps=1, guidance_interval=None)  # guided, as the estimate: 3 branches in the UNet call
    pipe.predict(frames, ["push the red block left"], **run)  # warm-up: kernels, caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    pipe.predict(frames, [f"push the red block left {i}" for i in range(int(sys.argv[1]))], **run)
    print((status_kib("VmHWM") - before) * 1024)
""")


def test_live_bytes_counts_each_new_storage_once_while_it_lives():
    with LiveBytes() as tracker:
        a = torch.ones(1000)  # 4000 bytes
        view = a.view(10, 100)  # shares a's storage
        view.mul_(3)  # in place: no new storage
        b = a * 2  # 4000 more
        del b
        c = torch.ones(500)  # 2000
    assert tracker.peak == 8000 and tracker.live == 6000
    assert c.sum() == 500 and view.sum() == 3000


def test_request_memory_matches_the_measured_peak_of_a_real_request_on_the_cpu():
    """The tiny model in float32 at M=16, guided: the estimate (fake tensors) against the peak of
    the tensors one real `predict` holds, and against the rise of the process's peak RSS."""
    from foresight.pipeline import load_pipeline

    estimate = request_memory(architecture("tiny"), 16, torch.float32)
    activations = estimate["request_peak_bytes"] - estimate["weights_total_bytes"]
    pipe = load_pipeline("tiny")
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    run = dict(steps=1, guidance_interval=None)
    pipe.predict(frames, ["push the red block left"], **run)
    with LiveBytes() as tracker:
        pipe.predict(frames, [f"push the red block left {i}" for i in range(16)], **run)
    assert activations == pytest.approx(tracker.peak, rel=TENSOR_MARGIN)
    out = subprocess.run([sys.executable, "-c", MEASURE_RSS, "16"], capture_output=True, text=True, check=True)
    rss = int(out.stdout.split()[-1])
    assert activations <= rss <= RSS_FACTOR * activations


def test_request_memory_of_the_real_config():
    arch = architecture("svd")
    one, two = (request_memory(arch, m, torch.bfloat16, decode_chunk=None) for m in (1, 2))
    assert one["weights_bytes"]["unet"] == 2 * count_real_config()["unet"]  # bf16: 2 bytes per weight
    assert one["height"] == one["width"] == 256 and one["num_frames"] == 16 and one["clips_per_unet_call"] == 3
    for stage in ("unet", "decode"):  # activations scale with the batch
        assert two["activation_peak_bytes"][stage] == pytest.approx(2 * one["activation_peak_bytes"][stage], rel=0.1)
    chunked = request_memory(arch, 2, torch.bfloat16, decode_chunk=4)  # rounds up to one whole clip of N + 2
    assert chunked["decode_chunk"] == 18
    assert chunked["activation_peak_bytes"]["decode"] < 0.7 * two["activation_peak_bytes"]["decode"]
    # with TAESD's frame decoder (svd-bridge-decoder): ~1.2 M weights, a fraction of the temporal decoder's peak
    from foresight.config import FrameDecoderConfig

    tiny_decoder = replace(arch, config=replace(arch.config, decoder=FrameDecoderConfig()))
    framewise = request_memory(tiny_decoder, 2, torch.bfloat16, decode_chunk=None)
    assert 1.0e6 < framewise["weights_bytes"]["frame_decoder"] / 2 < 1.4e6 and one["weights_bytes"]["frame_decoder"] == 0
    assert framewise["activation_peak_bytes"]["decode"] < 0.5 * two["activation_peak_bytes"]["decode"]


def count_trainable_bytes(arch) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from foresight.params import build_modules

    with FakeTensorMode():
        mods = build_modules(arch, torch.bfloat16, torch.float32)
        return sum(p.numel() * 4 for m in (mods.unet.adapters, mods.dqformer) for p in m.parameters())


@pytest.mark.slow
def test_params_cli_memory_and_train_tables(capsys):
    main(["params", "--memory", "--train", "--model", "tiny", "--batch", "1,2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in report["memory"]] == [1, 2]
    assert all(r["request_peak_bytes"] > r["weights_total_bytes"] for r in report["memory"])
    assert [(r["gradient_checkpointing"], r["batch"]) for r in report["train"]] == [
        (False, 1), (False, 2), (True, 1), (True, 2)]
    plain, two, checkpointed, _ = report["train"]  # training memory falls with checkpointing, counts AdamW
    assert checkpointed["step_peak_bytes"] < plain["step_peak_bytes"] < two["step_peak_bytes"]
    trainable = count_trainable_bytes(architecture("tiny"))
    assert plain["optimizer_state_bytes"] == pytest.approx(2 * trainable, rel=0.01)  # exp_avg, exp_avg_sq


def test_params_cli_memory_table(capsys):
    main(["params", "--memory", "--model", "tiny", "--batch", "1"])
    out = capsys.readouterr().out
    assert "one request, tiny at 64x64x8, bf16" in out
    assert "| batch (M) | text | encode | UNet call | VAE decode | request peak |" in out and "\n| 1 | " in out


def test_distill_step_memory_adds_the_lora_and_the_teacher_and_target_copies():
    from dataclasses import replace

    from torch._subclasses.fake_tensor import FakeTensorMode

    from foresight.config import UNetLoRAConfig
    from foresight.params import build_modules, lora_parameters, training_memory

    arch = architecture("tiny")
    arch = replace(arch, config=replace(arch.config, lora=UNetLoRAConfig(rank=4)))
    plain, distill = (training_memory(arch, 1, True, d) for d in (False, True))
    with FakeTensorMode():
        mods = build_modules(arch, torch.bfloat16, torch.float32)
        lora = lora_parameters(mods.unet.unet, arch.config.lora)
    assert lora > 0 and distill["lora_bytes"] == 4 * lora
    trainable = count_trainable_bytes(arch)
    assert distill["teacher_and_target_bytes"] == 2 * (trainable + 4 * lora)
    assert distill["optimizer_state_bytes"] == plain["optimizer_state_bytes"] + 8 * lora
    assert distill["peak_bytes"] >= plain["peak_bytes"] + distill["teacher_and_target_bytes"]
    with pytest.raises(ValueError, match="LoRA"):
        training_memory(architecture("tiny"), 1, True, True)
    with pytest.raises(SystemExit, match="not a config for the real SVD"):
        main(["params", "--train", "--config", "tiny-turbo"])
