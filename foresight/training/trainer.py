"""The one training loop, on Hugging Face accelerate, for every stage and every scale.

`accelerate launch -m foresight.cli train CONFIG` (or plain `foresight train CONFIG` for one
process) runs data parallel over processes and nodes (DDP; gloo on CPU), with mixed precision,
gradient accumulation, gradient checkpointing, EMA of the trained weights, TensorBoard logging,
periodic validation, and `save_state`/`load_state` checkpoints that hold only what trains.

Determinism: each step's noise, noise levels and condition dropout come from a generator
seeded by (seed, step, micro-step, rank), which also seeds torch's global generator for the
step (dropout inside modules), and each clip from its sample number (see `data`), so
a run killed and resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from foresight.dtypes import cpu_dtype_warning, mixed_precision_dtype
from foresight.states import StateDecomposer, make_decomposer
from foresight.training.config import TrainConfig, write_resolved
from foresight.training.data import (
    ClipStream,
    RecordedEpisodes,
    SimulatorEpisodes,
    clip_loader,
)
from foresight.training.stages import build_stage, resolve_config

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.pt"


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains, by name: the whole content of a checkpoint's weights."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 4099 + rank)


def episode_set(cfg: TrainConfig) -> SimulatorEpisodes | RecordedEpisodes:
    aid, data = cfg.model.aid, cfg.data
    if data.source == "simulator":
        return SimulatorEpisodes(data.episodes, aid.height, aid.num_frames, data.kinds)
    return RecordedEpisodes(str(cfg.path(data.source)), data.camera)


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished checkpoint, oldest first."""
    found = [(int(m.group(1)), p) for p in (out / "checkpoints").glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "done").is_file()]
    return sorted(found)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) one job; returns the output it wrote (a model, SVD or VAE folder)."""
    cfg = resolve_config(cfg)
    out = Path(cfg.out)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # lets torchrun-started CPU processes find each other (gloo)
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    warning = cpu_dtype_warning(cfg.mixed_precision) if accelerator.device.type == "cpu" else None
    if warning and accelerator.is_main_process:
        logger.warning("mixed_precision=%s: %s", cfg.mixed_precision, warning)
    if accelerator.is_main_process:
        write_resolved(cfg, out)
    set_seed(cfg.seed)
    stage = build_stage(cfg)
    params = cast_frozen(stage, mixed_precision_dtype(cfg.mixed_precision))
    if cfg.gradient_checkpointing:
        stage.enable_gradient_checkpointing()
    stage.to(accelerator.device)
    logger.info("%s stage: %d trainable tensors, %.2fM of %.2fM parameters", cfg.stage, len(params),
                sum(p.numel() for p in params) / 1e6, sum(p.numel() for p in stage.parameters()) / 1e6)

    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    optim = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, optim.warmup, optim.steps,
                                                            min_lr_rate=optim.min_lr_ratio)
    ema = None
    if cfg.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True)
    if cfg.stage == "distill":  # the EMA is the consistency target network (the config asks for one)
        stage.use_target(ema, params)

    def save_hook(models, weights, folder):
        weights.pop()  # accelerate's full state dict, frozen backbone included: never written
        if accelerator.is_main_process:
            state = trainable_state(accelerator.unwrap_model(models[0]))
            save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(Path(folder) / TRAINABLE_FILE))
            if ema is not None:
                torch.save(ema.state_dict(), Path(folder) / EMA_FILE)

    def load_hook(models, folder):
        module = accelerator.unwrap_model(models.pop())
        state = load_file(str(Path(folder) / TRAINABLE_FILE))
        expected = trainable_state(module)
        if state.keys() != expected.keys():
            raise ValueError(f"{folder} does not hold this job's trainable weights "
                             f"(differences: {sorted(state.keys() ^ expected.keys())[:5]})")
        with torch.no_grad():
            for k, v in state.items():
                expected[k].copy_(v)
        if ema is not None:
            ema.load_state_dict(torch.load(Path(folder) / EMA_FILE, weights_only=False))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    module, optimizer = accelerator.prepare(stage, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    start, seconds_before = 0, 0.0
    found = checkpoints(out)
    if found:
        start, folder = found[-1]
        accelerator.load_state(str(folder))
        seconds_before = json.loads((folder / "done").read_text())["seconds"]
        logger.info("resuming from %s at step %d/%d", folder, start, optim.steps)

    decomposer = make_decomposer(cfg.model.states, cfg.model.aid.num_states)
    aid = cfg.model.aid
    stream = ClipStream(episode_set(cfg), decomposer, aid.num_frames, aid.height, aid.width, cfg.data.frame_stride,
                        optim.batch, cfg.seed, rank, world, start_batch=start * optim.grad_accum,
                        reword=cfg.data.reword)
    batches = iter(clip_loader(stream, cfg.data.workers))
    accelerator.init_trackers("train", config=_flat(cfg.to_dict()))

    bar = tqdm(range(start, optim.steps), initial=start, total=optim.steps, desc=f"train {cfg.stage}",
               disable=not accelerator.is_main_process)
    clips_per_step = optim.batch * optim.grad_accum * world
    run_start = time.perf_counter()
    window_start, window_steps, loss_sum, mean = run_start, 0, 0.0, float("nan")
    for step in bar:
        for micro in range(optim.grad_accum):
            video, instructions, states = next(batches)
            g = step_generator(cfg.seed, step, micro, rank)
            torch.manual_seed(g.initial_seed())  # randomness inside modules (dropout) is per step too
            with accelerator.accumulate(module):
                loss = module(video.to(accelerator.device), instructions, states, g)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().float().item() / optim.grad_accum
        scheduler.step()
        if ema is not None:
            ema.step(params)
        window_steps += 1
        if window_steps == cfg.log_every or step + 1 == optim.steps:
            elapsed = time.perf_counter() - window_start
            mean = accelerator.reduce(torch.tensor(loss_sum / window_steps, device=accelerator.device), "mean").item()
            rate = window_steps * clips_per_step / elapsed
            accelerator.log({"loss": mean, "lr": scheduler.get_last_lr()[0], "clips_per_s": rate}, step=step + 1)
            check_replicas(accelerator, params, step + 1)
            speed = {"clips_s": f"{rate:.1f}"} if rate >= 1 else {"s_clip": f"{1 / rate:.1f}"}  # full size: ~80 s
            bar.set_postfix(loss=f"{mean:.4f}", **speed)
            window_start, window_steps, loss_sum = time.perf_counter(), 0, 0.0
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == optim.steps:
            seconds = seconds_before + time.perf_counter() - run_start
            save_checkpoint(accelerator, out, step + 1, cfg.checkpoints_total_limit, seconds)
        if cfg.validation.every and (step + 1) % cfg.validation.every == 0:
            validate_with_ema(accelerator, module, ema, params, cfg, step + 1, decomposer)

    accelerator.wait_for_everyone()
    result = out
    if accelerator.is_main_process:
        stage = accelerator.unwrap_model(module)
        if ema is not None:
            ema.copy_to(params)  # the output holds the averaged weights; checkpoints keep both
        if cfg.stage == "vae":
            stage.calibrate(calibration_clips(cfg))
        result = stage.write_output(cfg, out)
        stats = {"steps": optim.steps, "seconds": round(seconds_before + time.perf_counter() - run_start, 1),
                 "final_loss": mean, "command": command_line(),
                 "commit": source_commit()}
        (out / "stats.json").write_text(json.dumps(stats, indent=2))
        logger.info("wrote %s", result)
    accelerator.end_training()
    return result


def source_commit() -> str:
    """The git commit of this source tree, "+dirty" when it has uncommitted changes; "unknown" outside git."""
    folder = str(Path(__file__).parent)
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def check_replicas(accelerator: Accelerator, params: list[torch.nn.Parameter], step: int) -> None:
    """Raise if data-parallel processes no longer hold the same trained weights (they must, bit for bit)."""
    if accelerator.num_processes == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in params]).to(accelerator.device)
    gathered = accelerator.gather(sums[None]).cpu()
    if not (gathered == gathered[0]).all():
        raise RuntimeError(f"step {step}: processes hold different trained weights; "
                           f"{int((gathered != gathered[0]).any(0).sum())} of {len(params)} tensors differ")
    if accelerator.is_main_process:
        logger.debug("step %d: replicas agree on %d trained tensors", step, len(params))


def cast_frozen(stage: torch.nn.Module, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """Frozen parameters to `dtype` (the mixed-precision one); returns the trainable ones, kept fp32."""
    for p in stage.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)
    return [p for p in stage.parameters() if p.requires_grad]


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, limit: int, seconds: float) -> None:
    """`checkpoints/checkpoint-<step>`, marked complete by a `done` file (with the training time so
    far); older ones beyond `limit` go."""
    folder = out / "checkpoints" / f"checkpoint-{step}"
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / "done").write_text(json.dumps({"step": step, "seconds": round(seconds, 1)}))
        for _, old in checkpoints(out)[:-limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def calibration_clips(cfg: TrainConfig, clips: int = 256) -> torch.Tensor:
    """A fixed draw of clips (seeded apart from training) to set the VAE's latent scale on."""
    aid = cfg.model.aid
    stream = ClipStream(episode_set(cfg), make_decomposer("template", aid.num_states), aid.num_frames, aid.height,
                        aid.width, cfg.data.frame_stride, 1, cfg.seed + 4)
    return torch.stack([stream.clip(s)[0] for s in range(clips)])


def command_line() -> str:
    """The command that ran, as a user types it: `python -m foresight.cli ...` is `foresight ...`."""
    program = Path(sys.argv[0]).name
    return shlex.join(["foresight" if program == "cli.py" else program, *sys.argv[1:]])


def validate_with_ema(accelerator: Accelerator, module, ema, params, cfg: TrainConfig, step: int,
                      decomposer: StateDecomposer) -> None:
    """Validation on the main process, with the EMA weights swapped in when there are any."""
    if accelerator.is_main_process and cfg.stage in ("aid", "distill", "decoder"):
        from foresight.training.validation import validate

        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        stage = accelerator.unwrap_model(module).eval()
        try:
            with accelerator.autocast():
                metrics, sheet = validate(stage.model, cfg.validation, cfg.seed, decomposer)
        finally:
            stage.train()
            if ema is not None:
                ema.restore(params)
        accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("val/predictions", sheet, step, dataformats="HWC")
        logger.info("step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    accelerator.wait_for_everyone()


def _flat(tree: dict, prefix: str = "") -> dict:
    """TensorBoard's hparams take scalars and strings only."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flat(value, f"{name}.")
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
