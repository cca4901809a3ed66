"""What every section shares: repeat plans, timings, thread settings, machine facts, growth fits."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from foresight.dtypes import cpu_bf16_native

log = logging.getLogger("bench")

# distinct instructions, so a batch of M is M real hypotheses rather than one repeated
INSTRUCTIONS = (
    "push the red block to the left",
    "push the red block to the right",
    "put the blue disc on the green plate",
    "pick up the yellow cube",
    "push the green block forward",
    "put the red block next to the blue disc",
    "pick up the blue disc",
    "push the yellow cube to the right",
)
IDLE_CORES = 0.2  # other processes busier than this during a section skew its figures
# pause between interleaved cases, untimed: after a call returns, its runtime's worker threads spin
# for tens of milliseconds waiting for more work (ONNX Runtime's pool, OpenMP), and on 2 cores they
# take from the next case: the tiny-turbo node right after the tiny node's request took 1.06x its
# time after a 0.2 s pause (median of 30 pairs, each pair in one of the VM's speed phases)
SETTLE_S = 0.2
CAMERA_SIZE = (480, 640)  # a Bridge camera frame: the node scales it down, so the in-process call must too


@dataclass(frozen=True)
class Plan:
    """How much to measure. The defaults keep `python -m bench` under ~8 minutes on 2 idle cores."""

    runs: int = 5  # timed runs per figure (median, min, max)
    warmup: int = 1  # untimed runs first: allocator, thread pool and ORT session warm-up
    equal_steps: int = 25  # the stock pipeline's default, used for the equal-steps comparison
    default_steps: int | None = None  # None: the model's own default
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    batch_runs: int = 3  # M = 8 costs 16 requests per run: fewer runs keep the whole bench in budget
    # section 8's ratios sit near their targets and its requests spread by +-15% on this VM:
    # more runs (about 40 s in all) keep one slow run from moving a median across a target
    distilled_runs: int = 15
    scaling_frames: tuple[int, ...] = (8, 12, 16)
    scaling_sides: tuple[int, ...] = (64, 128, 256)
    scaling_steps: tuple[int, ...] = (4, 8, 16, 25)
    scaling_runs: int = 3
    scaling_fixed_steps: int = 4  # frames/resolution series: latency is linear in steps (the steps series shows it)
    load_clients: int = 8
    load_requests: int = 24
    unet_runs: int = 10

    @classmethod
    def quick(cls) -> Plan:
        """A smoke run: every code path once, at sizes that take seconds, figures not meaningful."""
        return cls(
            runs=1, warmup=0, equal_steps=2, default_steps=1, batch_sizes=(1, 2), batch_runs=1, scaling_frames=(8, 12),
            scaling_sides=(64, 128), scaling_steps=(1, 2), scaling_runs=1, scaling_fixed_steps=1,
            load_clients=8, load_requests=8, unet_runs=2, distilled_runs=1,
        )


@dataclass(frozen=True)
class Timing:
    """Seconds of repeated runs; ratios use the median, min and max show the spread."""

    median: float
    min: float
    max: float
    times: tuple[float, ...] = field(repr=False)

    @classmethod
    def of(cls, times: Sequence[float]) -> Timing:
        if not times:
            raise ValueError("no times to summarise")
        return cls(statistics.median(times), min(times), max(times), tuple(times))

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "times_s": list(self.times)}


def measure(fn: Callable[[], object], runs: int, warmup: int, label: str = "", sync: Callable[[], None] | None = None) -> Timing:
    """Median/min/max wall time of fn over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in tqdm(range(runs), desc=label, leave=False, disable=runs < 3):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    log.info("%s: median %.4f s (min %.4f, max %.4f, %d runs)", label, statistics.median(times), min(times), max(times), runs)
    return Timing.of(times)


def measure_side_by_side(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int, label: str = "", sync: Callable[[], None] | None = None
) -> dict[str, Timing]:
    """measure() for several cases at once, interleaved: each run calls every case once, run r
    starting at case r (mod the count). A ratio between cases then never compares runs taken
    minutes apart: a drift in machine speed (this VM's moves by up to 1.5x) moves both sides alike.
    Each call starts SETTLE_S after the previous one ended, once its threads have stopped spinning.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(runs), desc=label, leave=False, disable=runs < 3):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            fns[name]()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - start)
    for name in names:
        t = times[name]
        log.info("%s, %s: median %.4f s (min %.4f, max %.4f, %d runs)", label, name, statistics.median(t), min(t), max(t), runs)
    return {name: Timing.of(t) for name, t in times.items()}


def set_threads(threads: int) -> None:
    """One intra-op thread count for torch; ONNX Runtime gets the same through OrtOptions.

    PyTorch's pool spins and collapses when another process holds a core, so the count is
    always explicit and printed, and both sides of every ratio run with it.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _busy_ticks() -> tuple[int, int]:
    """(CPU ticks all processes spent busy, ticks this process and its children spent), from /proc.

    The children are the bench's own nodes: their work is the measurement, not other load.
    """
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    me, own = str(os.getpid()), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if stat.parent.name == me:  # utime, stime, and the ticks of children that have exited
            own += sum(int(v) for v in fields[11:15])
        elif fields[1] == me:
            own += int(fields[11]) + int(fields[12])
    return user + nice + system + irq + softirq + steal, own


class OtherLoad:
    """Cores that other processes kept busy while a block ran: says whether its figures were skewed.

    Load average cannot tell, since it counts this benchmark's own threads and nodes.
    """

    def __init__(self) -> None:
        self.cores: float | None = None

    def __enter__(self) -> OtherLoad:
        self._start, self._t0 = _busy_ticks(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        (busy1, own1), (busy0, own0) = _busy_ticks(), self._start
        elapsed = time.monotonic() - self._t0
        self.cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / max(elapsed, 1e-9)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError as exc:
        log.warning("cannot read /proc/cpuinfo: %s", exc)
    return platform.processor() or "unknown"


def machine_info(threads: int, device: str) -> dict:
    """Where the figures come from; load average says whether something else was running."""
    import diffusers
    import onnxruntime

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "bf16_instructions": cpu_bf16_native(),
        "torch_threads": torch.get_num_threads(),
        "ort_intra_op_threads": threads,
        "device": device,
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "onnxruntime": onnxruntime.__version__},
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def random_frames(k: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, height, width, 3), dtype=np.uint8)


ORDERS = {0: "~flat (fixed costs dominate)", 1: "~linear", 2: "~quadratic", 3: "~cubic"}


@dataclass(frozen=True)
class Growth:
    """Latency t = a * x**exponent fitted on log-log axes, plus t = intercept + slope * x."""

    exponent: float
    per_doubling: float
    intercept_s: float
    slope_s: float
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def fit_growth(xs: Sequence[float], seconds: Sequence[float]) -> Growth:
    """Power-law and linear fits of latency against one size; the verdict names the nearest order."""
    if len(xs) < 2:
        raise ValueError(f"a growth fit needs at least two sizes, got {list(xs)}")
    exponent = float(np.polyfit(np.log(xs), np.log(seconds), 1)[0])
    slope, intercept = (float(v) for v in np.polyfit(xs, seconds, 1))
    nearest = round(exponent)
    verdict = ORDERS[nearest] if nearest in ORDERS and abs(exponent - nearest) < 0.3 else f"~x^{exponent:.1f}"
    return Growth(exponent, 2**exponent, intercept, slope, verdict)
