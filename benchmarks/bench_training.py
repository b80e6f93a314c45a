"""Training throughput (images/s) and peak GPU memory: training/train.py vs a loop doing the per-step work of
diffusers' train_unconditional.py vs the bare forward + backward + optimizer step (the limit). Same model, batch,
precision and synthetic data (random uint8 images at the model's size); optionally channels-last memory,
torch.compile and gradient checkpointing, and a search for the largest batch that fits.

train.py runs as a subprocess (as users run it, on an IDX file of the same images) and its own logged
`train/images_per_sec` is read back, with its peak GPU memory reported at exit; the other two run in this process.
Run them on an otherwise idle machine: the numbers are throughput, not ratios measured in lock step.

    python benchmarks/bench_training.py                     # small28, CPU, batch 32
    python benchmarks/bench_training.py --preset cifar10 --batch-size 128 --mixed-precision bf16 --channels-last \
        --compile default                                   # on a GPU
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState

import hf_ddpm
from diffusers_example_loop import DiffusersExampleLoop
from hf_ddpm.data import ArrayImages, ImageDataset
from hf_ddpm.options import (SWITCH, DocstringHelpFormatter, OptionParser, option, output_file,
                             run_config)
from timing import PeakMemory

PROG = "bench_training.py"
ROOT = Path(__file__).resolve().parents[1]
# diffusers' Upsample2D asks is_torch_version (an lru_cache) in bf16; torch.compile warns that it traces through the
# cache, which is harmless for a version check and nothing a reader of the benchmark can act on
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`-wrapped function")
TRAIN = ROOT / "training" / "train.py"
# Runs train.py (argv[2:]) through runpy and writes its peak GPU memory in bytes (JSON null off CUDA) to argv[1]
# at exit.
PEAK_MEMORY_RUNNER = """
import atexit, json, runpy, sys
import torch
report, script = sys.argv[1], sys.argv[2]

def write_peak():
    with open(report, "w") as file:
        json.dump(torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None, file)

atexit.register(write_peak)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


@dataclass(frozen=True)
class TrainingCase:
    """One measured configuration: the UNet config, batch, precision and performance switches."""

    model_config: dict
    batch_size: int
    mixed_precision: str = "no"  # Accelerate's: no (fp32), fp16, bf16
    channels_last: bool = False
    compile_mode: str | None = None  # a torch.compile mode, or None for eager
    gradient_checkpointing: bool = False
    steps: int = 30
    warmup: int = 5


@dataclass(frozen=True)
class Throughput:
    images_per_second: float
    step_ms: float
    peak_mib: float | None  # torch.cuda.max_memory_allocated; None off CUDA


def synthetic_images(count: int, config: dict, seed: int = 0) -> np.ndarray:
    """`count` random uint8 images [N, H, W, C] (or [N, H, W] for one channel) at the model's size."""
    size, channels = config["sample_size"], config["in_channels"]
    shape = (count, size, size) if channels == 1 else (count, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_idx(path: Path, images: np.ndarray) -> None:
    """An uncompressed IDX file of uint8 images (magic 00 00 08 ndim, big-endian dims, pixels), for --idx_images."""
    header = bytes([0, 0, 0x08, images.ndim]) + np.asarray(images.shape, dtype=">u4").tobytes()
    path.write_bytes(header + images.tobytes())


def fresh_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator for one case. Accelerate allows one mixed precision per process; the suite measures several
    in one process, so the shared state is reset first (as Accelerate's own tests do)."""
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision)


def build_model(case: TrainingCase, device: torch.device) -> hf_ddpm.DDPMUNet2DModel:
    model = hf_ddpm.DDPMUNet2DModel(**case.model_config).to(device).train()
    if case.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if case.channels_last:
        model.to(memory_format=torch.channels_last)
    if case.compile_mode is not None:
        torch._dynamo.reset()  # a fresh model: no guards or recompilation counts left from the previous case
        model.compile(mode=case.compile_mode)
    return model


def release(accelerator: Accelerator) -> None:
    """Drop what a case kept (prepared model and optimizer, cached blocks) so the next case starts empty."""
    accelerator.free_memory()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed_steps(step, batch_size: int, steps: int, warmup: int, device: torch.device) -> Throughput:
    """Throughput of `steps` calls of step() after `warmup` (compilation, allocator), with the peak memory of all."""
    with PeakMemory(device) as peak:
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return Throughput(batch_size * steps / seconds, 1e3 * seconds / steps, peak.mib)


class BareStep:
    """The bare forward + backward + AdamW step on a fixed batch of one case's model: the limit for any loop."""

    def __init__(self, case: TrainingCase):
        self.case = case
        self.accelerator = fresh_accelerator(case.mixed_precision)
        model = build_model(case, self.accelerator.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def step_for(self, batch_size: int):
        config, device = self.case.model_config, self.accelerator.device
        x = torch.rand(batch_size, config["in_channels"], config["sample_size"], config["sample_size"], device=device)
        x = x * 2 - 1
        if self.case.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, 1000, (batch_size,), device=device)

        def step():
            loss = F.mse_loss(self.model(x, t).sample.float(), x.float())
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        return step

    def throughput(self, batch_size: int | None = None) -> Throughput:
        batch_size = batch_size or self.case.batch_size
        return timed_steps(self.step_for(batch_size), batch_size, self.case.steps, self.case.warmup,
                           self.accelerator.device)

    def fits(self, batch_size: int) -> bool:
        """Whether one step at `batch_size` runs without running out of GPU memory."""
        try:
            self.step_for(batch_size)()
            return True
        except torch.OutOfMemoryError:
            pass
        # out here the failed step's frames (and the activations they held) are gone with the exception
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        return False

    def largest_batch(self, start: int, cap: int) -> int:
        """The largest power-of-two multiple of `start`, up to `cap`, whose step fits (0 if `start` does not)."""
        best, batch_size = 0, start
        while batch_size <= cap and self.fits(batch_size):
            best, batch_size = batch_size, 2 * batch_size
        return best

    def close(self) -> None:
        del self.model, self.optimizer
        release(self.accelerator)


def bare_step_throughput(case: TrainingCase) -> Throughput:
    bare = BareStep(case)
    try:
        return bare.throughput()
    finally:
        bare.close()


def diffusers_example_throughput(case: TrainingCase, images: np.ndarray) -> Throughput:
    """The per-step work of diffusers' train_unconditional.py (benchmarks/diffusers_example_loop.py)."""
    accelerator = fresh_accelerator(case.mixed_precision)
    dataset = ImageDataset(ArrayImages(images, "synthetic"), resolution=case.model_config["sample_size"],
                           num_channels=case.model_config["in_channels"])
    loop = DiffusersExampleLoop(build_model(case, accelerator.device), dataset, case.batch_size, accelerator)
    try:
        return timed_steps(loop.step, case.batch_size, case.steps, case.warmup, accelerator.device)
    finally:
        del loop
        release(accelerator)


def train_script_throughput(case: TrainingCase, images: np.ndarray) -> Throughput:
    """train.py on an IDX file of `images`: the median of its logged img/s after the first (warm-up) interval."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_idx(folder / "images.idx", images)
        (folder / "unet.json").write_text(json.dumps({**case.model_config, "_class_name": "UNet2DModel"}))
        total = case.warmup + case.steps
        command = [sys.executable, "-c", PEAK_MEMORY_RUNNER, str(folder / "peak"), str(TRAIN),
                   "--idx_images", str(folder / "images.idx"), "--model_config_name_or_path", str(folder / "unet.json"),
                   "--train_batch_size", str(case.batch_size), "--max_train_steps", str(total),
                   "--logging_steps", str(case.warmup), "--checkpointing_steps", str(10 * total),
                   "--save_images_steps", str(10 * total), "--eval_batch_size", "1", "--ddpm_num_inference_steps", "1",
                   "--mixed_precision", case.mixed_precision, "--output_dir", str(folder / "run")]
        command += ["--channels_last"] * case.channels_last + ["--gradient_checkpointing"] * case.gradient_checkpointing
        if case.compile_mode is not None:
            command += ["--compile", "--compile_mode", case.compile_mode]
        finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if finished.returncode != 0:
            last_line = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"train.py exited with {finished.returncode}: {last_line}")
        events = next((folder / "run" / "logs").rglob("events.out.tfevents*"))
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        logged = [e.value for e in accumulator.Scalars("train/images_per_sec")]
        peak = json.loads((folder / "peak").read_text())
    images_per_second = statistics.median(logged[1:])  # the first interval holds the warm-up
    return Throughput(images_per_second, 1e3 * case.batch_size / images_per_second,
                      None if peak is None else peak / 2**20)




@dataclass
class TrainingBenchConfig:
    """What bench_training.py measures: its flags; the defaults of a case's settings are TrainingCase's."""

    preset: str = option("small28", "the UNet to train (hf_ddpm.UNET_PRESETS), randomly initialized",
                         choices=tuple(hf_ddpm.UNET_PRESETS))
    batch_size: int = option(32, "images per optimizer step, in all three loops", range="[1, inf)")
    steps: int = option(TrainingCase.steps, "timed optimizer steps of each loop, after --warmup", range="[1, inf)")
    warmup: int = option(
        TrainingCase.warmup, "untimed optimizer steps first (compilation, allocator); also train.py's "
        "--logging_steps, whose first interval is left out", range="[1, inf)")
    mixed_precision: str = option(TrainingCase.mixed_precision, "Accelerate's mixed precision: no (fp32), fp16 or bf16",
                                  choices=("no", "fp16", "bf16"))
    channels_last: bool = option(
        TrainingCase.channels_last, "channels-last memory format for the UNet and its inputs (all three loops)",
        free=SWITCH)
    compile: str | None = option(
        TrainingCase.compile_mode, "torch.compile the UNet in this mode (all three loops; default: eager)",
        choices=("default", "reduce-overhead", "max-autotune"))
    gradient_checkpointing: bool = option(
        TrainingCase.gradient_checkpointing, "recompute the UNet's activations in the backward pass instead of "
        "keeping them (all three loops)", free=SWITCH)
    json: str | None = option(None, "also write the results to this JSON file", check=output_file)


def build_parser() -> OptionParser:
    return OptionParser(TrainingBenchConfig, prog=PROG, description=__doc__, formatter_class=DocstringHelpFormatter)


def run(args: TrainingBenchConfig) -> None:
    case = TrainingCase(hf_ddpm.DDPMUNet2DModel.preset_config(args.preset), args.batch_size, args.mixed_precision,
                        args.channels_last, args.compile, args.gradient_checkpointing, args.steps, args.warmup)
    images = synthetic_images(4 * args.batch_size, case.model_config)

    results = {"preset": args.preset, **{k: v for k, v in dataclasses.asdict(case).items() if k != "model_config"},
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__}
    loops = {"bare step": lambda: bare_step_throughput(case),
             "diffusers example loop": lambda: diffusers_example_throughput(case, images),
             "train.py": lambda: train_script_throughput(case, images)}
    for name, measure in loops.items():
        result = measure()
        results[name] = dataclasses.asdict(result)
        peak = "n/a" if result.peak_mib is None else f"{result.peak_mib:.0f} MiB"
        print(f"{name}: {result.images_per_second:.1f} img/s, {result.step_ms:.1f} ms/step, peak {peak}")
    train, example = results["train.py"]["images_per_second"], results["diffusers example loop"]["images_per_second"]
    print(f"train.py / diffusers example: {train / example:.3f}; "
          f"train.py / bare step: {train / results['bare step']['images_per_second']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    """Parse and check every option, then benchmark; bad input is one line on stderr and exit status 2."""
    return run_config(build_parser, lambda config: run(config), PROG, argv)  # `run` looked up when called


if __name__ == "__main__":
    sys.exit(main())
