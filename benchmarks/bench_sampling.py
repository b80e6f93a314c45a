"""Sampling speed: hf_ddpm.DDPMPipeline (its device-resident loop) vs the plain per-step loop vs stock
diffusers.DDPMPipeline vs the bare UNet (the limit), optionally with the UNet compiled.

Same weights, inputs, generator seed and number of steps for all, measured interleaved in one run and reported as
medians with each case's peak GPU memory. The cases:

- bare UNet x steps: one forward per step on a fixed input, no scheduler: the limit for any sampler.
- stock DDPMPipeline: diffusers' own pipeline and scheduler.
- hf_ddpm plain loop: `scheduler.step(unet(x, t).sample, t, x)` over `scheduler.timesteps`, as diffusers' pipelines
  run it and as hf_ddpm's did before its fast path: step reads each 0-d timestep tensor on the host (one GPU
  synchronization per step).
- hf_ddpm DDPMPipeline: the pipeline itself, which reads nothing from the device during the chain (host-int table
  lookups, noise from a generator on the device); with a CPU generator, the CPU's noise copied without blocking.
- with `--compile MODE`: the pipeline with `unet.compile(mode=MODE)` (reduce-overhead: CUDA graphs on a GPU).
- scheduler loops (fake model outputs, no UNet): what each scheduler's step costs by itself.

    python benchmarks/bench_sampling.py                      # small28 preset, CPU
    python benchmarks/bench_sampling.py --preset cifar10 --steps 100 --batch-size 1 16 256 --compile reduce-overhead
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
from dataclasses import dataclass

import diffusers
import torch
from diffusers.utils.torch_utils import randn_tensor

import hf_ddpm
from hf_ddpm.artifacts import default_device
from hf_ddpm.options import (DocstringHelpFormatter, OptionParser, check_device, option, output_file,
                             run_config)
from timing import interleaved

PROG = "bench_sampling.py"

BARE, STOCK, PLAIN, FAST, FAST_CPU_GENERATOR = (
    "bare UNet x steps", "stock DDPMPipeline", "hf_ddpm plain loop", "hf_ddpm DDPMPipeline",
    "hf_ddpm DDPMPipeline, CPU generator")


def compiled_name(mode: str) -> str:
    return f"hf_ddpm DDPMPipeline + compile {mode}"


def plain_loop(pipe: hf_ddpm.DDPMPipeline, batch_size: int, generator: torch.Generator, steps: int) -> torch.Tensor:
    """Images [B, C, H, W] in [0, 1] from the loop as diffusers' pipelines write it: `step` given the 0-d timestep
    tensors of `scheduler.timesteps` (hf_ddpm's step reads each on the host: a GPU synchronization per step)."""
    unet, scheduler, device = pipe.unet, pipe.scheduler, pipe.device
    size = unet.config.sample_size
    scheduler.set_timesteps(steps, device=device)
    x = randn_tensor((batch_size, unet.config.in_channels, size, size), generator=generator, device=device,
                     dtype=unet.dtype)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def sampling_cases(unet, batch_size: int, steps: int, compiled_unet=None, compile_mode: str | None = None) -> dict:
    """The timed cases (name -> callable returning images in [0, 1]) for one batch size, on the UNet's device."""
    device = unet.device
    ours = hf_ddpm.DDPMPipeline(unet=unet, scheduler=hf_ddpm.DDPMScheduler())
    stock = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipelines = [ours, stock]
    size = unet.config.sample_size
    x = torch.randn(batch_size, unet.config.in_channels, size, size, device=device, dtype=unet.dtype)
    ours.scheduler.set_timesteps(steps, device=device)
    unet_timesteps = ours.scheduler.timesteps.clone()

    def bare_unet():
        with torch.no_grad():
            for t in unet_timesteps:
                unet(x, t)
        return None

    def run(pipeline, generator_device=device):
        return lambda: pipeline(batch_size, torch.Generator(generator_device).manual_seed(0), steps,
                                output_type="pt").images

    cases = {BARE: bare_unet, STOCK: run(stock),
             PLAIN: lambda: plain_loop(ours, batch_size, torch.Generator(device).manual_seed(0), steps),
             FAST: run(ours), FAST_CPU_GENERATOR: run(ours, "cpu")}
    if compiled_unet is not None:
        compiled = hf_ddpm.DDPMPipeline(unet=compiled_unet, scheduler=hf_ddpm.DDPMScheduler())
        pipelines.append(compiled)
        cases[compiled_name(compile_mode)] = run(compiled)
    for pipeline in pipelines:
        pipeline.set_progress_bar_config(disable=True)
    return cases


def compile_copy(unet, mode: str):
    """A copy of `unet` compiled in place with `mode` for fixed shapes, as `pipe.unet.compile(mode=...)` does."""
    compiled = copy.deepcopy(unet)
    torch._dynamo.reset()  # a fresh compilation: no recompilation counts left from other models
    compiled.compile(mode=mode, dynamic=False)
    return compiled


def measure(unet, batch_size: int, steps: int, repeats: int, compiled_unet=None, compile_mode: str | None = None,
            only: tuple[str, ...] | None = None) -> dict:
    """{"seconds": {case: median}, "peak_mib": {case: MiB or None}, "checks": {...}} for one batch size; `only`
    restricts the cases (by name). The checks: the fast path gives the plain loop's images (bitwise) and, compiled,
    differs from them by at most `max |compiled - fast|` (in [0, 1] pixel units)."""
    every_case = sampling_cases(unet, batch_size, steps, compiled_unet, compile_mode)
    cases = {name: fn for name, fn in every_case.items() if only is None or name in only}
    seconds, peaks = interleaved(cases, repeats, unet.device)
    checks = {}
    if FAST in cases:
        checks["fast path == plain loop (bitwise)"] = bool(torch.equal(every_case[FAST](), every_case[PLAIN]()))
    if compile_mode is not None and compiled_name(compile_mode) in cases:
        difference = (every_case[compiled_name(compile_mode)]() - every_case[FAST]()).abs()
        checks[f"max |compiled - fast| ({compile_mode})"] = difference.max().item()
    return {"seconds": seconds, "peak_mib": peaks, "checks": checks}


def scheduler_loops(x: torch.Tensor, steps: int) -> dict:
    """Scheduler-only loops (4 fake model outputs in turn, no UNet): what each scheduler's step costs by itself."""
    fake_outputs = [torch.randn_like(x) for _ in range(4)]

    def loop(scheduler):
        def run():
            scheduler.set_timesteps(steps, device=x.device)
            sample, generator = x, torch.Generator(x.device).manual_seed(0)
            for i, t in enumerate(scheduler.timesteps):
                sample = scheduler.step(fake_outputs[i % 4], t, sample, generator=generator).prev_sample
        return run

    return {"stock scheduler loop": loop(diffusers.DDPMScheduler()),
            "hf_ddpm scheduler loop": loop(hf_ddpm.DDPMScheduler())}


def default_timesteps(scheduler_class) -> int:
    """T of a scheduler made with its defaults, as every case here makes them."""
    return inspect.signature(scheduler_class.__init__).parameters["num_train_timesteps"].default


# --steps respaces the T of both schedulers' defaults, so it can be at most the smaller T
MAX_STEPS = min(default_timesteps(hf_ddpm.DDPMScheduler), default_timesteps(diffusers.DDPMScheduler))




@dataclass
class SamplingBenchConfig:
    """What bench_sampling.py measures: its flags, their defaults and checks."""

    preset: str = option("small28", "the UNet to sample with (hf_ddpm.UNET_PRESETS), randomly initialized",
                         choices=tuple(hf_ddpm.UNET_PRESETS))
    steps: int = option(50, f"sampling steps (UNet calls per image), respaced from the schedulers' T = {MAX_STEPS}",
                        range=f"[1, {MAX_STEPS}]")
    batch_size: list[int] = option(
        default_factory=lambda: [8], help="images per pipeline call; several values (e.g. 1 16 256) are measured in "
        "turn", range="[1, inf)")
    repeats: int = option(5, "timed rounds of every case, run interleaved after one warm-up round; medians are "
                             "reported", range="[1, inf)")
    device: str | None = option(None, "cpu, cuda, cuda:N, mps ... (default: cuda when available, else cpu)",
                                check=check_device)
    dtype: str = option("float32", "dtype of the UNet's weights and inputs", choices=("float32", "float16", "bfloat16"))
    compile: str | None = option(
        None, "also time the pipeline with the UNet compiled in this torch.compile mode (default: not compiled)",
        choices=("default", "reduce-overhead", "max-autotune"))
    json: str | None = option(None, "also write the results to this JSON file", check=output_file)


def build_parser() -> OptionParser:
    return OptionParser(SamplingBenchConfig, prog=PROG, description=__doc__, formatter_class=DocstringHelpFormatter)


def run(args: SamplingBenchConfig) -> None:
    device, dtype = torch.device(args.device or default_device()), getattr(torch, args.dtype)

    torch.manual_seed(0)
    unet = hf_ddpm.DDPMUNet2DModel.from_preset(args.preset).to(device=device, dtype=dtype).eval()
    compiled = compile_copy(unet, args.compile) if args.compile else None
    results = {"device": str(device), "dtype": args.dtype, "preset": args.preset, "steps": args.steps,
               "repeats": args.repeats, "torch": torch.__version__, "diffusers": diffusers.__version__, "batches": {}}
    for batch_size in args.batch_size:
        result = measure(unet, batch_size, args.steps, args.repeats, compiled, args.compile)
        size = unet.config.sample_size
        x = torch.randn(batch_size, unet.config.in_channels, size, size, device=device, dtype=dtype)
        loop_seconds, _ = interleaved(scheduler_loops(x, args.steps), args.repeats, device)
        result["scheduler-only step us"] = {name: 1e6 * s / args.steps for name, s in loop_seconds.items()}
        results["batches"][batch_size] = result
        print(f"| case ({args.preset}, batch {batch_size}, {args.steps} steps, {device}, {args.dtype}) "
              "| median s | ms/step | peak MiB |")
        print("| --- | --- | --- | --- |")
        for name, seconds in result["seconds"].items():
            peak = result["peak_mib"][name]
            print(f"| {name} | {seconds:.4f} | {1e3 * seconds / args.steps:.2f} | "
                  f"{'n/a' if peak is None else f'{peak:.0f}'} |")
        for name, value in {**result["checks"], **result["scheduler-only step us"]}.items():
            print(f"{name}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Parse and check every option, then benchmark; bad input is one line on stderr and exit status 2."""
    return run_config(build_parser, lambda config: run(config), PROG, argv)  # `run` looked up when called


if __name__ == "__main__":
    sys.exit(main())
