"""One command, one table: training and sampling throughput and peak memory on one GPU in at most 8 minutes
(`bash benchmarks/gpu_suite.sh`), or the same suite small on the CPU (`--cpu`: a tiny network, batches and steps, a
few seconds a row), which tests/test_gpu_suite.py runs so the suite cannot rot.

Sections (GPU sizes, with --cpu's in brackets):

- training: the paper's CIFAR-10 network (preset cifar10 [small32 at 16-32 channels]), batch 128 [4], fp32 and
  bf16: training/train.py, a loop doing the per-step work of diffusers' train_unconditional.py, and the bare
  forward + backward + AdamW step (benchmarks/bench_training.py); train.py and the bare step also with
  channels-last memory and torch.compile (diffusers' example has neither).
- 256x256: the celebahq256 network [a 64x64 one at 16-32 channels], the bare bf16 step at the largest batch that
  fits, found by doubling from 8 until out of memory, at most 512 [from 1, at most 4]: without and with gradient
  checkpointing.
- sampling: the cifar10 network [the tiny one], fp32, 100 steps [5] at batch 1, 16 and 256 [1, 2, 4]: the bare UNet
  x steps, stock diffusers.DDPMPipeline, the plain per-step loop, hf_ddpm's DDPMPipeline with a generator on the
  device and with a CPU generator, and with `unet.compile(mode="reduce-overhead")` (benchmarks/bench_sampling.py).

Rows run cheapest first and print as they finish (stderr); the table (stdout) lists them by section. On a GPU a
group of rows starts only if its estimated time still fits --budget-seconds; a group that does not is listed as
skipped, never silently dropped. A group that fails is listed with its error and the exit status is 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

import diffusers
import torch

import bench_sampling
import bench_training
import hf_ddpm
from bench_training import BareStep, TrainingCase

SECTIONS = ("training", "256x256", "sampling")


@dataclass(frozen=True)
class Sizes:
    """What the suite measures: the GPU sizes, or the CPU's tiny ones."""

    training_model: dict
    training_batch: int
    training_steps: int
    training_warmup: int
    large_model: dict
    large_batch_start: int
    large_batch_cap: int
    large_steps: int
    sampling_model: dict
    sampling_batches: tuple[int, ...]
    sampling_steps: int
    sampling_repeats: int
    budget_seconds: float | None


def gpu_sizes(budget_seconds: float) -> Sizes:
    cifar10 = hf_ddpm.DDPMUNet2DModel.preset_config("cifar10")
    return Sizes(cifar10, 128, 20, 3, hf_ddpm.DDPMUNet2DModel.preset_config("celebahq256"), 8, 512, 5,
                 cifar10, (1, 16, 256), 100, 2, budget_seconds)


def cpu_sizes() -> Sizes:
    tiny = hf_ddpm.DDPMUNet2DModel.preset_config("small32", block_out_channels=(16, 32, 32), norm_num_groups=8)
    tiny_large = hf_ddpm.DDPMUNet2DModel.preset_config(
        "celebahq256", sample_size=64, block_out_channels=(16, 16, 32, 32, 32, 32), norm_num_groups=8)
    return Sizes(tiny, 4, 4, 2, tiny_large, 1, 4, 2, tiny, (1, 2, 4), 5, 1, None)


@dataclass
class Row:
    section: str
    case: str
    precision: str
    batch: str
    images_per_second: float | None = None
    step_ms: float | None = None
    peak_mib: float | None = None
    note: str = ""


@dataclass
class Group:
    """Rows measured together: `run` fills them in and returns checks to print under the table; `estimate_s` is
    the group's rough time on a GPU, for the budget."""

    rows: list[Row]
    estimate_s: float
    run: Callable[[list[Row]], list[str]]
    notes: tuple[str, ...] = ()


def fill(row: Row, result: bench_training.Throughput, note: str = "") -> list[str]:
    row.images_per_second, row.step_ms, row.peak_mib, row.note = (result.images_per_second, result.step_ms,
                                                                   result.peak_mib, note)
    return []


# ------------------------------------------------------------------------------------------------ training
PRECISIONS = {"fp32": "no", "bf16": "bf16"}
LOOPS = ("train.py", "diffusers example loop", "bare step")
COMPILED = "channels_last + compile"


def training_group(sizes: Sizes, loop: str, precision: str, compiled: bool, estimate_s: float) -> Group:
    case = TrainingCase(sizes.training_model, sizes.training_batch, PRECISIONS[precision], channels_last=compiled,
                        compile_mode="default" if compiled else None, steps=sizes.training_steps,
                        warmup=sizes.training_warmup)
    name = f"{loop}, {COMPILED}" if compiled else loop
    images = bench_training.synthetic_images(4 * sizes.training_batch, sizes.training_model)
    measure = {"train.py": lambda: bench_training.train_script_throughput(case, images),
               "diffusers example loop": lambda: bench_training.diffusers_example_throughput(case, images),
               "bare step": lambda: bench_training.bare_step_throughput(case)}[loop]
    row = Row("training", name, precision, str(sizes.training_batch))
    return Group([row], estimate_s, lambda rows: fill(rows[0], measure()))


# ------------------------------------------------------------------------------------------------- 256x256
def large_group(sizes: Sizes, checkpointing: bool) -> Group:
    case = TrainingCase(sizes.large_model, sizes.large_batch_start, "bf16", gradient_checkpointing=checkpointing,
                        steps=sizes.large_steps, warmup=1)
    name = "bare step, gradient checkpointing" if checkpointing else "bare step"
    row = Row("256x256", name, "bf16", "largest")

    def run(rows: list[Row]) -> list[str]:
        bare = BareStep(case)
        try:
            batch = bare.largest_batch(sizes.large_batch_start, sizes.large_batch_cap)
            if batch == 0:
                raise RuntimeError(f"batch {sizes.large_batch_start} does not fit")
            rows[0].batch = str(batch)
            limit = ("the cap: larger batches were not tried" if 2 * batch > sizes.large_batch_cap
                     else f"batch {2 * batch} ran out of memory")
            return fill(rows[0], bare.throughput(batch), limit)
        finally:
            bare.close()

    return Group([row], 60.0, run)


# ------------------------------------------------------------------------------------------------ sampling
SAMPLING_CASES = (bench_sampling.BARE, bench_sampling.STOCK, bench_sampling.PLAIN, bench_sampling.FAST,
                  bench_sampling.FAST_CPU_GENERATOR)
SAMPLING_COMPILE_MODE = "reduce-overhead"


def sampling_group(sizes: Sizes, device: torch.device, batch: int, compiled: bool) -> Group:
    names = (bench_sampling.compiled_name(SAMPLING_COMPILE_MODE),) if compiled else SAMPLING_CASES
    rows = [Row("sampling", name, "fp32", str(batch)) for name in names]

    def run(rows: list[Row]) -> list[str]:
        steps = sizes.sampling_steps
        torch.manual_seed(0)  # the same weights in every group
        unet = hf_ddpm.DDPMUNet2DModel(**sizes.sampling_model).to(device).eval()
        compiled_unet = bench_sampling.compile_copy(unet, SAMPLING_COMPILE_MODE) if compiled else None
        result = bench_sampling.measure(unet, batch, steps, sizes.sampling_repeats, compiled_unet,
                                        SAMPLING_COMPILE_MODE if compiled else None, only=names)
        for row in rows:
            seconds = result["seconds"][row.case]
            row.images_per_second, row.step_ms = batch / seconds, 1e3 * seconds / steps
            row.peak_mib = result["peak_mib"][row.case]
        return [f"batch {batch}: {check}: {value}" for check, value in result["checks"].items()]

    return Group(rows, (60.0 if compiled else 15.0) + (30.0 if batch >= 256 else 0.0), run)


# -------------------------------------------------------------------------------------------------- the run
def plan(sizes: Sizes, device: torch.device, sections: tuple[str, ...]) -> list[Group]:
    """Every group, in the order they run: cheap eager rows first, compiled rows (long compilations) last."""
    def sampling(compiled: bool) -> list[Group]:
        return [sampling_group(sizes, device, batch, compiled) for batch in sizes.sampling_batches]

    def compiled_training(precision: str) -> list[Group]:
        return [training_group(sizes, loop, precision, True, 90.0) for loop in ("bare step", "train.py")]

    eager_training = [training_group(sizes, loop, precision, False, 30.0 if loop == "train.py" else 10.0)
                      for precision in PRECISIONS for loop in LOOPS]
    large = [large_group(sizes, checkpointing) for checkpointing in (False, True)]
    order = [*sampling(False), *eager_training, *large, *compiled_training("bf16"), *sampling(True),
             *compiled_training("fp32")]
    return [group for group in order if group.rows[0].section in sections]


def run_groups(groups: list[Group], budget_seconds: float | None) -> bool:
    """Run the groups in order within the budget; returns whether every group that ran succeeded."""
    start, ok = time.monotonic(), True
    for group in groups:
        elapsed = time.monotonic() - start
        if budget_seconds is not None and elapsed + group.estimate_s > budget_seconds:
            for row in group.rows:
                row.note = f"skipped: {elapsed:.0f} s + about {group.estimate_s:.0f} s exceeds --budget-seconds"
            continue
        try:
            group.notes = tuple(group.run(group.rows))
        except Exception as error:  # noqa: BLE001 - one failing group must not lose the others' numbers
            ok = False
            message = " ".join(str(error).split())[:200]
            for row in group.rows:
                row.note = f"failed: {type(error).__name__}: {message}"
        gc.collect()  # each group starts with nothing left from the last: its peak memory is its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        for row in group.rows:
            print(f"[{time.monotonic() - start:5.0f} s] {format_row(row)}", file=sys.stderr, flush=True)
    return ok


def number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_row(row: Row) -> str:
    return (f"| {row.section} | {row.case} | {row.precision} | {row.batch} | {number(row.images_per_second, 1)} | "
            f"{number(row.step_ms, 2)} | {number(row.peak_mib, 0)} | {row.note} |")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"GPU: {properties.name} ({properties.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def print_table(groups: list[Group], sizes: Sizes, device: torch.device, seconds: float) -> None:
    print(f"hf-ddpm benchmark suite on {machine(device)}; torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}, hf_ddpm {hf_ddpm.__version__}; {seconds:.0f} s")
    if device.type == "cpu":
        print("CPU mode, a smoke test of the suite rather than a benchmark: tiny networks (32x32 at 16-32 channels; "
              "the 256x256 section's at 64x64), batches and steps")
    if os.environ.get("TORCH_COMPILE_DISABLE") == "1":
        print("TORCH_COMPILE_DISABLE=1: torch.compile was switched off, the compile rows ran eager")
    print(f"training: {sizes.training_steps} timed steps after {sizes.training_warmup}; sampling: "
          f"{sizes.sampling_steps} steps, medians of {sizes.sampling_repeats} interleaved runs; ms/step is per "
          "optimizer step (training) or per denoising step (sampling); peak MiB: torch.cuda.max_memory_allocated")
    print()
    print("| section | case | precision | batch | images/s | ms/step | peak MiB | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for section in SECTIONS:
        for group in groups:
            for row in group.rows:
                if row.section == section:
                    print(format_row(row))
    notes = [note for group in groups for note in group.notes]
    if notes:
        print()
        print("checks: " + "; ".join(notes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run small on the CPU: a tiny network, batches and steps")
    parser.add_argument("--budget-seconds", type=float, default=420.0,
                        help="on a GPU, start a group of rows only if its estimated time still fits (default 420: "
                             "with a minute of margin for estimates that run over, the suite ends within 8 minutes)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--json", help="also write the rows and checks here")
    args = parser.parse_args()
    sections = tuple(args.sections.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown --sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --cpu for the small CPU version")
    device = torch.device("cpu" if args.cpu else "cuda")
    sizes = cpu_sizes() if args.cpu else gpu_sizes(args.budget_seconds)

    start = time.monotonic()
    groups = plan(sizes, device, sections)
    ok = run_groups(groups, sizes.budget_seconds)
    print_table(groups, sizes, device, time.monotonic() - start)
    if args.json:
        rows = [row.__dict__ for group in groups for row in group.rows]
        with open(args.json, "w") as f:
            json.dump({"machine": machine(device), "rows": rows, "checks": [n for g in groups for n in g.notes]}, f,
                      indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
